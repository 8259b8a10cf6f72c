// A minimal FUSE session: /dev/fuse opened, the filesystem mounted with mount(2), a reader thread
// handing each request's bytes to JS, and replies written back. The protocol itself (parsing
// requests, building replies) lives in TypeScript (src/transport/fuse-protocol.ts).
#include "fuse.h"
#include "errors.h"

#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

// Requests are small: the filesystem is read-only and announces max_write 4096, so a buffer of
// this size holds any request the kernel may send (it wants at least 8 KiB, FUSE_MIN_READ_BUFFER).
constexpr size_t kReadBuffer = 256 * 1024;

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession",
                       {InstanceMethod("mount", &Session::Mount), InstanceMethod("start", &Session::Start),
                        InstanceMethod("reply", &Session::Reply), InstanceMethod("close", &Session::Close)});
  }

  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
    // Non-blocking, so that the reader can also wait on the stop eventfd.
    fd_ = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) ThrowErrno(info.Env(), errno, "open", "/dev/fuse");
    stop_ = eventfd(0, EFD_CLOEXEC);
    if (stop_ < 0) {
      int saved = errno;
      close(fd_);
      fd_ = -1;
      ThrowErrno(info.Env(), saved, "eventfd");
    }
  }

  ~Session() override { Shutdown(); }

 private:
  // mount(target, fstype, flags, extraOptions?): mounts this session's filesystem on target.
  Napi::Value Mount(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) throw Napi::Error::New(env, "FUSE session is closed");
    if (!target_.empty()) throw Napi::Error::New(env, "FUSE session already mounted");
    std::string target = PathArg(info[0], "target");
    std::string fstype = info[1].As<Napi::String>().Utf8Value();
    unsigned long flags = static_cast<unsigned long>(info[2].As<Napi::Number>().Int64Value());
    std::string options = "fd=" + std::to_string(fd_) + ",rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions";
    if (info.Length() > 3 && info[3].IsString()) {
      std::string extra = info[3].As<Napi::String>().Utf8Value();
      if (!extra.empty()) options += "," + extra;
    }
    if (::mount("erofs-ondemand", target.c_str(), fstype.c_str(), flags, options.c_str()) != 0) {
      ThrowErrno(env, errno, "mount", target);
    }
    target_ = target;
    return env.Undefined();
  }

  // start(callback): callback(Buffer) for each request, on the JS thread; callback(null) once the
  // connection ends (unmounted or aborted).
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (running_) throw Napi::Error::New(info.Env(), "FUSE session already started");
    if (fd_ < 0) throw Napi::Error::New(info.Env(), "FUSE session is closed");
    tsfn_ = Napi::ThreadSafeFunction::New(info.Env(), info[0].As<Napi::Function>(), "fuse", 0, 1);
    running_ = true;
    reader_ = std::thread([this] { ReadLoop(); });
    return info.Env().Undefined();
  }

  // reply(buffer): writes one reply (fuse_out_header + body). Returns 0 or the errno of the write:
  // ENOENT means the request is gone (interrupted or the connection aborted), not a failure of ours.
  Napi::Value Reply(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto buf = info[0].As<Napi::Buffer<uint8_t>>();
    if (fd_ < 0) return Napi::Number::New(env, ENODEV);
    ssize_t n = write(fd_, buf.Data(), buf.Length());
    if (n < 0) return Napi::Number::New(env, errno);
    if (static_cast<size_t>(n) != buf.Length()) return Napi::Number::New(env, EIO);
    return Napi::Number::New(env, 0);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    if (running_) {
      uint64_t one = 1;
      if (write(stop_, &one, sizeof one) < 0) { /* the reader also stops when the connection ends */ }
      reader_.join();
      running_ = false;
      tsfn_.Release();
    }
    // Detached, not unmounted: EROFS mounts on top may still hold its files open. Closing the fd
    // then aborts the connection, so anything still reading through it gets an error, never hangs.
    if (!target_.empty()) {
      if (umount2(target_.c_str(), MNT_DETACH) != 0) { /* already gone */ }
      target_.clear();
    }
    if (fd_ >= 0) close(fd_);
    if (stop_ >= 0) close(stop_);
    fd_ = stop_ = -1;
  }

  void ReadLoop() {
    std::vector<uint8_t> buf(kReadBuffer);
    for (;;) {
      struct pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[1].revents) return;  // close(): JS knows already
      ssize_t len = read(fd_, buf.data(), buf.size());
      if (len < 0) {
        // ENOENT: the request was interrupted before we read it; EAGAIN: another wake-up took it.
        if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
        break;  // ENODEV: unmounted or aborted
      }
      if (len == 0) break;
      auto* copy = new std::vector<uint8_t>(buf.begin(), buf.begin() + len);
      napi_status st = tsfn_.BlockingCall(copy, [](Napi::Env env, Napi::Function cb, std::vector<uint8_t>* req) {
        Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, req->data(), req->size());
        delete req;
        cb.Call({b});
      });
      if (st != napi_ok) {
        delete copy;
        return;  // JS is going away; closing the fd aborts whatever is pending
      }
    }
    tsfn_.BlockingCall([](Napi::Env env, Napi::Function cb) { cb.Call({env.Null()}); });
  }

  int fd_ = -1;
  int stop_ = -1;
  bool running_ = false;
  std::string target_;
  std::thread reader_;
  Napi::ThreadSafeFunction tsfn_;
};

}  // namespace

void InitFuse(Napi::Env env, Napi::Object exports) {
  exports.Set("FuseSession", Session::Define(env));
}
