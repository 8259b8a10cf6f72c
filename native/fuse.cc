// A minimal FUSE session: /dev/fuse opened, the filesystem mounted with mount(2), a reader thread
// handing each request's bytes to JS, and replies written back. The protocol itself (parsing
// requests, building replies) lives in TypeScript (src/transport/fuse-protocol.ts). A session can also
// take over the /dev/fuse fd of a connection an earlier daemon mounted (kept by an fd keeper): the
// connection, its mount and the files open on it stay as they are.
#include "fuse.h"
#include "errors.h"
#include "reader_thread.h"

#include <cerrno>
#include <cstdint>
#include <fcntl.h>
#include <string>
#include <sys/mount.h>
#include <unistd.h>
#include <vector>

namespace {

// Requests are small: the filesystem is read-only and announces max_write 4096, so a buffer of
// this size holds any request the kernel may send (it wants at least 8 KiB, FUSE_MIN_READ_BUFFER).
constexpr size_t kReadBuffer = 256 * 1024;

// FUSE_NOTIFY_RESEND (include/uapi/linux/fuse.h, Linux 6.9+; not in older headers): the kernel puts
// every request read from the connection and not answered back in its input queue, with the top bit
// of `unique` set.
constexpr int32_t kNotifyResend = 7;

// struct fuse_out_header: a notification has unique 0 and its code in `error`.
struct OutHeader {
  uint32_t len;
  int32_t error;
  uint64_t unique;
};
static_assert(sizeof(OutHeader) == 16, "fuse_out_header is 16 bytes");

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FuseSession",
                       {InstanceMethod("mount", &Session::Mount), InstanceMethod("adopt", &Session::Adopt),
                        InstanceMethod("start", &Session::Start), InstanceMethod("reply", &Session::Reply),
                        InstanceMethod("resend", &Session::Resend), InstanceMethod("close", &Session::Close),
                        InstanceAccessor("fd", &Session::GetFd, nullptr)});
  }

  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
    // Non-blocking: a wake-up that another reader took leaves read() with EAGAIN, not blocked.
    fd_ = open("/dev/fuse", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) ThrowErrno(info.Env(), errno, "open", "/dev/fuse");
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

  // adopt(fd, target): takes over the /dev/fuse fd of a connection mounted (and initialised) by an
  // earlier daemon on `target`, instead of the one this session opened. Nothing is mounted and no INIT
  // is exchanged; close() detaches `target` as for a session that mounted it.
  Napi::Value Adopt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) throw Napi::Error::New(env, "FUSE session is closed");
    if (!target_.empty() || reader_.running()) throw Napi::Error::New(env, "FUSE session already in use");
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "adopt(fd, target): fd must be a number");
    int fd = info[0].As<Napi::Number>().Int32Value();
    std::string target = PathArg(info[1], "target");
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0 || ::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) {
      ThrowErrno(env, errno, "fcntl(inherited /dev/fuse fd)");
    }
    close(fd_);
    fd_ = fd;
    target_ = target;
    return env.Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  // resend(): sends FUSE_NOTIFY_RESEND. Returns 0 or the write's errno (EINVAL: a kernel before 6.9).
  Napi::Value Resend(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) return Napi::Number::New(env, ENODEV);
    OutHeader h{sizeof(OutHeader), kNotifyResend, 0};
    ssize_t n = write(fd_, &h, sizeof h);
    if (n < 0) return Napi::Number::New(env, errno);
    return Napi::Number::New(env, static_cast<size_t>(n) == sizeof h ? 0 : EIO);
  }

  // start(callback): callback(Buffer) for each request, on the JS thread; callback(null) once the
  // connection ends (unmounted or aborted).
  Napi::Value Start(const Napi::CallbackInfo& info) {
    if (fd_ < 0) throw Napi::Error::New(info.Env(), "FUSE session is closed");
    reader_.Start(info.Env(), info[0].As<Napi::Function>(), "fuse", [this] { ReadLoop(); });
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
    reader_.Stop();
    // Detached, not unmounted: EROFS mounts on top may still hold its files open. Closing the fd
    // then aborts the connection, so anything still reading through it gets an error, never hangs.
    if (!target_.empty()) {
      if (umount2(target_.c_str(), MNT_DETACH) != 0) { /* already gone */ }
      target_.clear();
    }
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  void ReadLoop() {
    std::vector<uint8_t> buf(kReadBuffer);
    for (;;) {
      short revents;
      ReaderThread::Woken woken = reader_.Wait(fd_, &revents);
      if (woken == ReaderThread::kStop) return;  // close(): JS knows already
      if (woken == ReaderThread::kFailed) break;
      ssize_t len = read(fd_, buf.data(), buf.size());
      if (len < 0) {
        // ENOENT: the request was interrupted before we read it; EAGAIN: another wake-up took it.
        if (errno == EINTR || errno == EAGAIN || errno == ENOENT) continue;
        break;  // ENODEV: unmounted or aborted
      }
      if (len == 0) break;
      auto* copy = new std::vector<uint8_t>(buf.begin(), buf.begin() + len);
      napi_status st = reader_.tsfn().BlockingCall(copy, [](Napi::Env env, Napi::Function cb, std::vector<uint8_t>* req) {
        Napi::Buffer<uint8_t> b = Napi::Buffer<uint8_t>::Copy(env, req->data(), req->size());
        delete req;
        cb.Call({b});
      });
      if (st != napi_ok) {
        delete copy;
        return;  // JS is going away; closing the fd aborts whatever is pending
      }
    }
    reader_.tsfn().BlockingCall([](Napi::Env env, Napi::Function cb) { cb.Call({env.Null()}); });
  }

  int fd_ = -1;
  std::string target_;
  ReaderThread reader_;
};

}  // namespace

void InitFuse(Napi::Env env, Napi::Object exports) {
  exports.Set("FuseSession", Session::Define(env));
}
