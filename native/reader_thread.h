#pragma once
#include <napi.h>

#include <functional>
#include <thread>

// The thread that reads a kernel device (/dev/cachefiles, /dev/fuse, a fanotify group) and hands
// what it reads to JS. It waits on the device and on an eventfd at once, so that stopping it never
// races a read() that would block forever; each device keeps its own loop, reads and messages.
class ReaderThread {
 public:
  ReaderThread() = default;
  ReaderThread(const ReaderThread&) = delete;
  ReaderThread& operator=(const ReaderThread&) = delete;
  ~ReaderThread() { Stop(); }

  bool running() const { return running_; }

  // Runs `loop` on a new thread; `callback` is what the loop calls on the JS thread through
  // tsfn(). `name` names the ThreadSafeFunction and the errors.
  void Start(Napi::Env env, Napi::Function callback, const char* name, std::function<void()> loop);

  // Wakes the loop (its Wait returns kStop), joins it and releases the callback. Safe to call
  // more than once and before Start.
  void Stop();

  // What Wait saw: the device has events (their poll bits in `revents`), Stop was called, or poll
  // itself failed (errno set).
  enum Woken { kEvents, kStop, kFailed };
  // Called by the loop only: blocks until one of the above; EINTR is waited through.
  Woken Wait(int fd, short* revents);

  Napi::ThreadSafeFunction& tsfn() { return tsfn_; }

 private:
  int stop_ = -1;
  bool running_ = false;
  std::thread thread_;
  Napi::ThreadSafeFunction tsfn_;
};
