// Syscalls Node.js does not expose: EROFS mounts through the new mount API (a regular file as source:
// file-backed EROFS), mount(2), umount2(2), openat2(2) without symlinks, the l*xattr family, lseek(2)
// with SEEK_DATA/SEEK_HOLE, fallocate(2) hole punching, flock(2).
#include "fs_calls.h"
#include "errors.h"
#include "scm_rights.h"

#include <cerrno>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

// fallocate(PUNCH_HOLE) runs on the thread pool: on a file with a fanotify pre-content mark it raises
// an event that the event loop itself must answer.
class PunchHoleWorker : public Napi::AsyncWorker {
 public:
  PunchHoleWorker(Napi::Env env, int fd, off_t offset, off_t length)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), offset_(offset), length_(length) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    if (::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_, length_) != 0) err_ = errno;
  }
  void OnOK() override {
    if (err_ == 0) {
      deferred_.Resolve(Env().Undefined());
      return;
    }
    try {
      ThrowErrno(Env(), err_, "fallocate");
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  off_t offset_;
  off_t length_;
  int err_ = 0;
};

Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  off_t offset = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t length = static_cast<off_t>(info[2].As<Napi::Number>().Int64Value());
  auto* worker = new PunchHoleWorker(info.Env(), fd, offset, length);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source = PathArg(info[0], "source");
  std::string target = PathArg(info[1], "target");
  std::string fstype = info[2].As<Napi::String>().Utf8Value();
  unsigned long flags = static_cast<unsigned long>(info[3].As<Napi::Number>().Int64Value());
  std::string data = info[4].IsUndefined() ? "" : info[4].As<Napi::String>().Utf8Value();
  if (::mount(source.c_str(), target.c_str(), fstype.c_str(), flags, data.empty() ? nullptr : data.c_str()) != 0) {
    ThrowErrno(env, errno, "mount", target);
  }
  return env.Undefined();
}

Napi::Value Umount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string target = PathArg(info[0], "target");
  int flags = info[1].IsUndefined() ? 0 : info[1].As<Napi::Number>().Int32Value();
  if (::umount2(target.c_str(), flags) != 0) ThrowErrno(env, errno, "umount2", target);
  return env.Undefined();
}

// An O_PATH fd of the directory `path`, resolved without following any symbolic link in it (ELOOP if
// one is met): a mount made on this fd lands on what was checked, whatever is renamed meanwhile.
int OpenDirNoSymlinks(const std::string& path) {
  struct open_how how = {};
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS;
  return static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// A read-only EROFS: `source` the bootstrap (file or block device), one `device` per blob; or, in
// fscache mode, `source` "none" and the `fsid` and `domain_id` string options.
struct ErofsMount {
  std::string source;
  std::vector<std::string> devices;
  std::vector<std::pair<std::string, std::string>> options;
  std::string target;
};

struct MountFailure {
  int err = 0;
  std::string step;
  // What the kernel logged on the filesystem context ("e erofs: ..."), if anything.
  std::string log;
};

std::string ContextLog(int fsfd) {
  std::string out;
  char buf[1024];
  for (;;) {
    ssize_t n = ::read(fsfd, buf, sizeof buf);
    if (n <= 0) break;
    if (!out.empty()) out += "; ";
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// The new mount API: options go one by one (fsconfig), so the number of devices is not bounded by
// mount(2)'s one-page option string, and the mount is attached to the target's fd (move_mount).
MountFailure MountErofsAt(const ErofsMount& m) {
  MountFailure f;
  auto fail = [&f](std::string step, int fsfd) {
    f.err = errno;
    f.step = std::move(step);
    if (fsfd >= 0) f.log = ContextLog(fsfd);
    return f;
  };
  Fd target(OpenDirNoSymlinks(m.target));
  if (target.get() < 0) return fail("openat2(RESOLVE_NO_SYMLINKS)", -1);
  Fd fs(::fsopen("erofs", FSOPEN_CLOEXEC));
  if (fs.get() < 0) return fail("fsopen(erofs)", -1);
  for (const auto& device : m.devices) {
    if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, "device", device.c_str(), 0) != 0)
      return fail("fsconfig(device=" + device + ")", fs.get());
  }
  for (const auto& [key, value] : m.options) {
    if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, key.c_str(), value.c_str(), 0) != 0)
      return fail("fsconfig(" + key + "=" + value + ")", fs.get());
  }
  if (::fsconfig(fs.get(), FSCONFIG_SET_STRING, "source", m.source.c_str(), 0) != 0)
    return fail("fsconfig(source)", fs.get());
  if (::fsconfig(fs.get(), FSCONFIG_SET_FLAG, "ro", nullptr, 0) != 0) return fail("fsconfig(ro)", fs.get());
  if (::fsconfig(fs.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0) return fail("fsconfig(create)", fs.get());
  Fd mnt(::fsmount(fs.get(), FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY));
  if (mnt.get() < 0) return fail("fsmount", fs.get());
  if (::move_mount(mnt.get(), "", target.get(), "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) != 0)
    return fail("move_mount", -1);
  return f;
}

[[noreturn]] void ThrowMountFailure(const Napi::Env& env, const MountFailure& f, const std::string& target) {
  try {
    ThrowErrno(env, f.err, f.step.c_str(), target);
  } catch (Napi::Error& e) {
    if (!f.log.empty()) e.Set("message", Napi::String::New(env, e.Message() + " (kernel: " + f.log + ")"));
    throw;
  }
}

ErofsMount ErofsMountArgs(const Napi::CallbackInfo& info) {
  ErofsMount m;
  m.source = PathArg(info[0], "source");
  if (!info[1].IsArray()) throw Napi::TypeError::New(info.Env(), "devices must be an array");
  Napi::Array devices = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < devices.Length(); i++) m.devices.push_back(PathArg(devices.Get(i), "device"));
  m.target = PathArg(info[2], "target");
  if (!info[3].IsUndefined()) {
    if (!info[3].IsObject()) throw Napi::TypeError::New(info.Env(), "options must be an object of strings");
    Napi::Object options = info[3].As<Napi::Object>();
    Napi::Array keys = options.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); i++) {
      std::string key = PathArg(keys.Get(i), "option name");
      m.options.emplace_back(key, PathArg(options.Get(key), "option value"));
    }
  }
  return m;
}

Napi::Value MountErofs(const Napi::CallbackInfo& info) {
  ErofsMount m = ErofsMountArgs(info);
  MountFailure f = MountErofsAt(m);
  if (f.err != 0) ThrowMountFailure(info.Env(), f, m.target);
  return info.Env().Undefined();
}

// The same on the thread pool, resolving a promise: a mount whose devices are files on a FUSE
// filesystem served by this very process must not block the JS thread that answers its requests.
class ErofsMountWorker : public Napi::AsyncWorker {
 public:
  ErofsMountWorker(Napi::Env env, ErofsMount m)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), m_(std::move(m)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override { f_ = MountErofsAt(m_); }
  void OnOK() override {
    if (f_.err == 0) {
      deferred_.Resolve(Env().Undefined());
      return;
    }
    try {
      ThrowMountFailure(Env(), f_, m_.target);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  ErofsMount m_;
  MountFailure f_;
};

Napi::Value MountErofsAsync(const Napi::CallbackInfo& info) {
  auto* w = new ErofsMountWorker(info.Env(), ErofsMountArgs(info));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value OpenDir(const Napi::CallbackInfo& info) {
  std::string path = PathArg(info[0], "path");
  int fd = OpenDirNoSymlinks(path);
  if (fd < 0) ThrowErrno(info.Env(), errno, "openat2(RESOLVE_NO_SYMLINKS)", path);
  return Napi::Number::New(info.Env(), fd);
}

// umount2(2) on the thread pool, for the same reason as ErofsMountWorker.
class UmountWorker : public Napi::AsyncWorker {
 public:
  UmountWorker(Napi::Env env, std::string target, int flags)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), target_(std::move(target)), flags_(flags) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override { err_ = ::umount2(target_.c_str(), flags_) == 0 ? 0 : errno; }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ == 0) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    try {
      ThrowErrno(env, err_, "umount2", target_);
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string target_;
  int flags_;
  int err_ = 0;
};

Napi::Value UmountAsync(const Napi::CallbackInfo& info) {
  std::string target = PathArg(info[0], "target");
  int flags = info[1].IsUndefined() ? 0 : info[1].As<Napi::Number>().Int32Value();
  auto* w = new UmountWorker(info.Env(), target, flags);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// replaceFile(file, data): `data` written beside `file`, synced, renamed over it, and the directory
// synced: a crash leaves the old file or the new one, whole. It runs on a thread of its own, not the
// pool: the pool is shared with chunk decodes, and a snapshot's metadata must not wait behind a
// prefetch while containerd waits for the snapshot.
struct ReplaceJob {
  std::string file;
  std::vector<uint8_t> data;
  Napi::Promise::Deferred deferred;
  int err = 0;
  const char* syscall = "";
  std::string path;
};

int FailReplace(ReplaceJob* job, const char* syscall, const std::string& path) {
  job->syscall = syscall;
  job->path = path;
  return errno;
}

int RunReplace(ReplaceJob* job) {
  const std::string tmp = job->file + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return FailReplace(job, "open", tmp);
  size_t done = 0;
  while (done < job->data.size()) {
    ssize_t n = ::write(fd, job->data.data() + done, job->data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = FailReplace(job, "write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return err;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int err = FailReplace(job, "fsync", tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), job->file.c_str()) != 0) {
    int err = FailReplace(job, "rename", job->file);
    ::unlink(tmp.c_str());
    return err;
  }
  const size_t slash = job->file.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : job->file.substr(0, slash);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return FailReplace(job, "open", dir);
  int err = ::fsync(dfd) == 0 ? 0 : FailReplace(job, "fsync", dir);
  ::close(dfd);
  return err;
}

Napi::Value ReplaceFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string file = PathArg(info[0], "file");
  if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "replaceFile(file, data): data must be a Buffer");
  auto data = info[1].As<Napi::Buffer<uint8_t>>();
  auto* job = new ReplaceJob{file, std::vector<uint8_t>(data.Data(), data.Data() + data.Length()),
                             Napi::Promise::Deferred::New(env), 0, "", ""};
  Napi::Promise promise = job->deferred.Promise();
  // Holds the event loop open until the job has answered: a process never exits mid-write.
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                            "replaceFile", 0, 1);
  std::thread([job, tsfn]() mutable {
    job->err = RunReplace(job);
    tsfn.BlockingCall(job, [](Napi::Env env, Napi::Function, ReplaceJob* j) {
      if (j->err == 0) {
        j->deferred.Resolve(env.Undefined());
      } else {
        try {
          ThrowErrno(env, j->err, j->syscall, j->path);
        } catch (const Napi::Error& e) {
          j->deferred.Reject(e.Value());
        }
      }
      delete j;
    });
    tsfn.Release();
  }).detach();
  return promise;
}

Napi::Value ListXattrs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  std::vector<char> buf;
  for (;;) {
    ssize_t size = ::llistxattr(path.c_str(), nullptr, 0);
    if (size < 0) ThrowErrno(env, errno, "llistxattr", path);
    buf.resize(static_cast<size_t>(size));
    if (size == 0) break;
    ssize_t got = ::llistxattr(path.c_str(), buf.data(), buf.size());
    if (got >= 0) {
      buf.resize(static_cast<size_t>(got));
      break;
    }
    if (errno != ERANGE) ThrowErrno(env, errno, "llistxattr", path);
  }
  Napi::Array names = Napi::Array::New(env);
  uint32_t n = 0;
  size_t start = 0;
  for (size_t i = 0; i < buf.size(); i++) {
    if (buf[i] == '\0') {
      names.Set(n++, Napi::Buffer<char>::Copy(env, buf.data() + start, i - start));
      start = i + 1;
    }
  }
  return names;
}

Napi::Value GetXattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  std::string name = PathArg(info[1], "name");
  std::vector<char> buf;
  for (;;) {
    ssize_t size = ::lgetxattr(path.c_str(), name.c_str(), nullptr, 0);
    if (size < 0) ThrowErrno(env, errno, "lgetxattr", path);
    buf.resize(static_cast<size_t>(size));
    ssize_t got = ::lgetxattr(path.c_str(), name.c_str(), buf.data(), buf.size());
    if (got >= 0) {
      buf.resize(static_cast<size_t>(got));
      break;
    }
    if (errno != ERANGE) ThrowErrno(env, errno, "lgetxattr", path);
  }
  return Napi::Buffer<char>::Copy(env, buf.data(), buf.size());
}

Napi::Value SetXattr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  std::string name = PathArg(info[1], "name");
  auto value = info[2].As<Napi::Buffer<char>>();
  if (::lsetxattr(path.c_str(), name.c_str(), value.Data(), value.Length(), 0) != 0) {
    ThrowErrno(env, errno, "lsetxattr", path);
  }
  return env.Undefined();
}

// Returns the offset, or -1 when there is no data/hole at or after `offset` (ENXIO).
Napi::Value Seek(const Napi::CallbackInfo& info, int whence, const char* name) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  off_t offset = static_cast<off_t>(info[1].As<Napi::Number>().Int64Value());
  off_t r = ::lseek(fd, offset, whence);
  if (r < 0) {
    if (errno == ENXIO) return Napi::Number::New(env, -1);
    ThrowErrno(env, errno, name);
  }
  return Napi::Number::New(env, static_cast<double>(r));
}

Napi::Value Mknod(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  mode_t mode = static_cast<mode_t>(info[1].As<Napi::Number>().Uint32Value());
  unsigned major = info[2].As<Napi::Number>().Uint32Value();
  unsigned minor = info[3].As<Napi::Number>().Uint32Value();
  if (::mknod(path.c_str(), mode, makedev(major, minor)) != 0) ThrowErrno(env, errno, "mknod", path);
  return env.Undefined();
}

// Sets atime and mtime with nanosecond precision without following a final symlink.
Napi::Value SetTimes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = PathArg(info[0], "path");
  bool lossless = false;
  int64_t sec = info[1].As<Napi::BigInt>().Int64Value(&lossless);
  long nsec = static_cast<long>(info[2].As<Napi::Number>().Int64Value());
  struct timespec times[2] = {{sec, nsec}, {sec, nsec}};
  if (::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) ThrowErrno(env, errno, "utimensat", path);
  return env.Undefined();
}

// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET ('@' = abstract namespace).
// Returns false when not started by systemd with a notify socket.
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string message = info[0].As<Napi::String>().Utf8Value();
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || !*path) return Napi::Boolean::New(env, false);
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  size_t len = strlen(path);
  if (len >= sizeof addr.sun_path) throw Napi::Error::New(env, "NOTIFY_SOCKET path too long");
  memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, errno, "socket(AF_UNIX)");
  // Optional fds ride along as SCM_RIGHTS (FDSTORE=1: systemd keeps them across restarts).
  std::vector<int> fds;
  if (info.Length() > 1 && info[1].IsArray()) {
    Napi::Array arr = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) fds.push_back(arr.Get(i).As<Napi::Number>().Int32Value());
  }
  ssize_t n = scm::Send(fd, message, fds, &addr, static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + len));
  int saved = errno;
  close(fd);
  if (n < 0) ThrowErrno(env, saved, "sendto(NOTIFY_SOCKET)", path);
  return Napi::Boolean::New(env, true);
}

// flock(LOCK_EX | LOCK_NB): true when taken, false when another open file holds the lock.
Napi::Value TryLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = info[0].As<Napi::Number>().Int32Value();
  if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  ThrowErrno(env, errno, "flock");
  return env.Undefined();
}

Napi::Value SeekData(const Napi::CallbackInfo& info) { return Seek(info, SEEK_DATA, "lseek(SEEK_DATA)"); }
Napi::Value SeekHole(const Napi::CallbackInfo& info) { return Seek(info, SEEK_HOLE, "lseek(SEEK_HOLE)"); }

}  // namespace

void InitFsCalls(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount", Napi::Function::New(env, Umount));
  exports.Set("mountErofs", Napi::Function::New(env, MountErofs));
  exports.Set("mountErofsAsync", Napi::Function::New(env, MountErofsAsync));
  exports.Set("openDirNoSymlinks", Napi::Function::New(env, OpenDir));
  exports.Set("umountAsync", Napi::Function::New(env, UmountAsync));
  exports.Set("replaceFile", Napi::Function::New(env, ReplaceFile));
  exports.Set("listXattrs", Napi::Function::New(env, ListXattrs));
  exports.Set("getXattr", Napi::Function::New(env, GetXattr));
  exports.Set("setXattr", Napi::Function::New(env, SetXattr));
  exports.Set("mknod", Napi::Function::New(env, Mknod));
  exports.Set("setTimes", Napi::Function::New(env, SetTimes));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("seekData", Napi::Function::New(env, SeekData));
  exports.Set("seekHole", Napi::Function::New(env, SeekHole));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
}
