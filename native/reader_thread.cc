#include "reader_thread.h"
#include "errors.h"

#include <cerrno>
#include <cstdint>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

void ReaderThread::Start(Napi::Env env, Napi::Function callback, const char* name, std::function<void()> loop) {
  if (running_) throw Napi::Error::New(env, std::string(name) + " reader already started");
  int stop = eventfd(0, EFD_CLOEXEC);
  if (stop < 0) ThrowErrno(env, errno, "eventfd");
  try {
    tsfn_ = Napi::ThreadSafeFunction::New(env, callback, name, 0, 1);
  } catch (...) {
    close(stop);
    throw;
  }
  stop_ = stop;
  running_ = true;
  thread_ = std::thread(std::move(loop));
}

void ReaderThread::Stop() {
  if (!running_) return;
  uint64_t one = 1;
  if (write(stop_, &one, sizeof one) < 0) { /* an eventfd write fails only on overflow: it is woken anyway */ }
  thread_.join();
  running_ = false;
  tsfn_.Release();
  close(stop_);
  stop_ = -1;
}

ReaderThread::Woken ReaderThread::Wait(int fd, short* revents) {
  for (;;) {
    struct pollfd fds[2] = {{fd, POLLIN, 0}, {stop_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return kFailed;
    }
    if (fds[1].revents) return kStop;
    *revents = fds[0].revents;
    return kEvents;
  }
}
