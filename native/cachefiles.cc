// cachefiles on-demand mode (CONFIG_CACHEFILES_ONDEMAND, Linux 5.19+): the daemon side of
// /dev/cachefiles. Setup commands and copen replies are single write()s of text; requests are read
// one per read() by a reader thread and handed to JS through a ThreadSafeFunction; data is written
// into the per-object anonymous fd with pwrite and acknowledged with an ioctl.
//
// Wire format, from include/uapi/linux/cachefiles.h of Linux 6.12 (Debian linux-source-6.12
// 6.12.117), all fields little-endian host order, no padding:
//
//   #define CACHEFILES_MSG_MAX_SIZE 1024         // read() buffer must be at least this big
//   enum cachefiles_opcode { CACHEFILES_OP_OPEN = 0, CACHEFILES_OP_CLOSE = 1, CACHEFILES_OP_READ = 2 };
//   struct cachefiles_msg {          // 16-byte header of every message
//     __u32 msg_id;                  // +0  echo in copen / READ_COMPLETE
//     __u32 opcode;                  // +4
//     __u32 len;                     // +8  whole message, header included (== what read() returned)
//     __u32 object_id;               // +12 one per cache object (cookie)
//     __u8  data[];                  // +16
//   };
//   struct cachefiles_open {         // payload of OPEN, at +16
//     __u32 volume_key_size;         // +16 includes the volume key's trailing NUL
//     __u32 cookie_key_size;         // +20 no NUL
//     __u32 fd;                      // +24 anonymous fd, already installed in the reading process
//     __u32 flags;                   // +28
//     __u8  data[];                  // +32 volume key ("erofs,<domain_id|fsid>\0"), then cookie key
//   };                               // so len == 32 + volume_key_size + cookie_key_size
//   struct cachefiles_read {         // payload of READ, at +16; len == 32
//     __u64 off;                     // +16
//     __u64 len;                     // +24
//   };
//   // CLOSE has no payload: len == 16, and it takes no reply.
//   #define CACHEFILES_IOC_READ_COMPLETE _IOW(0x98, 1, int)   // = 0x40049801 on x86_64/arm64;
//                                    // the argument is the READ's msg_id, passed by value
//
// Replies: OPEN is answered by writing "copen <msg_id>,<size>" to the device (size < 0 is -errno:
// refuse the object). READ is answered by filling [off, off+len) of the object through its anon fd
// and then READ_COMPLETE; completing without filling makes the reader get EIO.
#include "cachefiles.h"
#include "errors.h"
#include "reader_thread.h"

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <linux/ioctl.h>
#include <memory>
#include <poll.h>
#include <string>
#include <sys/ioctl.h>
#include <unistd.h>
#include <vector>

namespace {

constexpr size_t kMsgMaxSize = 1024;  // CACHEFILES_MSG_MAX_SIZE
constexpr size_t kHeaderSize = 16;    // sizeof(struct cachefiles_msg)
constexpr size_t kOpenSize = 16;      // sizeof(struct cachefiles_open)
constexpr size_t kReadSize = 16;      // sizeof(struct cachefiles_read)
constexpr uint32_t kOpOpen = 0, kOpClose = 1, kOpRead = 2;
// _IOW(0x98, 1, int): dir=write(1)<<30 | size(4)<<16 | type(0x98)<<8 | nr(1).
constexpr unsigned long kIocReadComplete = _IOW(0x98, 1, int);
static_assert(_IOW(0x98, 1, int) == 0x40049801UL, "CACHEFILES_IOC_READ_COMPLETE on asm-generic ioctl arches");
constexpr uint64_t kMaxSafeInteger = (1ULL << 53) - 1;  // Number.MAX_SAFE_INTEGER

uint32_t U32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
uint64_t U64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A parsed message, built on the reader thread and turned into a JS object on the JS thread.
struct Message {
  enum Kind { kOpen, kRead, kClose, kInvalid, kError } kind = kInvalid;
  bool hasHeader = false;
  uint32_t msgId = 0, opcode = 0, objectId = 0;
  int fd = -1;  // OPEN (or a malformed message that still carried one)
  uint32_t flags = 0;
  uint64_t off = 0, len = 0;
  std::vector<unsigned char> volumeKey, cookieKey, raw;
  std::string reason;
  int err = 0;  // kError
};

// Never trusts the kernel's lengths: anything that does not add up becomes kInvalid with a reason.
Message* Parse(const unsigned char* buf, size_t n) {
  auto* m = new Message();
  m->raw.assign(buf, buf + n);
  if (n < kHeaderSize) {
    m->reason = "short message: " + std::to_string(n) + " bytes, header needs 16";
    return m;
  }
  m->hasHeader = true;
  m->msgId = U32(buf);
  m->opcode = U32(buf + 4);
  uint32_t len = U32(buf + 8);
  m->objectId = U32(buf + 12);
  if (m->opcode == kOpOpen && n >= kHeaderSize + kOpenSize) {
    // Whatever else is wrong, the kernel has installed this fd in our process: hand it to JS so it
    // can refuse the object (copen with a negative size) and close it.
    m->fd = static_cast<int>(U32(buf + 24));
  }
  if (len != n) {
    m->reason = "header len " + std::to_string(len) + " but read returned " + std::to_string(n) + " bytes";
    return m;
  }
  switch (m->opcode) {
    case kOpOpen: {
      if (n < kHeaderSize + kOpenSize) {
        m->reason = "OPEN of " + std::to_string(n) + " bytes, needs at least 32";
        return m;
      }
      uint64_t vsz = U32(buf + 16), csz = U32(buf + 20);
      m->flags = U32(buf + 28);
      if (kHeaderSize + kOpenSize + vsz + csz != n) {
        m->reason = "OPEN key sizes " + std::to_string(vsz) + "+" + std::to_string(csz) + " do not match length " + std::to_string(n);
        return m;
      }
      const unsigned char* keys = buf + kHeaderSize + kOpenSize;
      if (vsz == 0 || keys[vsz - 1] != 0) {
        m->reason = "OPEN volume key is not NUL-terminated";
        return m;
      }
      m->volumeKey.assign(keys, keys + vsz - 1);  // without the NUL
      m->cookieKey.assign(keys + vsz, keys + vsz + csz);
      m->kind = Message::kOpen;
      return m;
    }
    case kOpRead:
      if (n != kHeaderSize + kReadSize) {
        m->reason = "READ of " + std::to_string(n) + " bytes, must be 32";
        return m;
      }
      m->off = U64(buf + 16);
      m->len = U64(buf + 24);
      if (m->off > kMaxSafeInteger || m->len > kMaxSafeInteger || m->off + m->len > kMaxSafeInteger) {
        m->reason = "READ range beyond 2^53";
        return m;
      }
      m->kind = Message::kRead;
      return m;
    case kOpClose:
      if (n != kHeaderSize) {
        m->reason = "CLOSE of " + std::to_string(n) + " bytes, must be 16";
        return m;
      }
      m->kind = Message::kClose;
      return m;
    default:
      m->reason = "unknown opcode " + std::to_string(m->opcode);
      return m;
  }
}

Napi::Object ToJs(Napi::Env env, const Message& m) {
  Napi::Object o = Napi::Object::New(env);
  auto buffer = [&](const std::vector<unsigned char>& v) {
    return Napi::Buffer<unsigned char>::Copy(env, v.data(), v.size());
  };
  switch (m.kind) {
    case Message::kOpen:
      o.Set("opcode", "open");
      break;
    case Message::kRead:
      o.Set("opcode", "read");
      break;
    case Message::kClose:
      o.Set("opcode", "close");
      break;
    case Message::kInvalid:
      o.Set("opcode", "invalid");
      o.Set("reason", m.reason);
      o.Set("raw", buffer(m.raw));
      break;
    case Message::kError: {
      const char* name = strerrorname_np(m.err);
      o.Set("opcode", "error");
      o.Set("reason", m.reason);
      o.Set("code", name ? name : "UNKNOWN");
      o.Set("errno", -m.err);
      return o;
    }
  }
  if (m.hasHeader) {
    o.Set("msgId", static_cast<double>(m.msgId));
    o.Set("objectId", static_cast<double>(m.objectId));
  }
  if (m.kind == Message::kInvalid && m.hasHeader) o.Set("rawOpcode", static_cast<double>(m.opcode));
  if (m.fd >= 0) o.Set("fd", m.fd);
  if (m.kind == Message::kOpen) {
    o.Set("flags", static_cast<double>(m.flags));
    o.Set("volumeKey", buffer(m.volumeKey));
    o.Set("cookieKey", buffer(m.cookieKey));
  }
  if (m.kind == Message::kRead) {
    o.Set("offset", static_cast<double>(m.off));
    o.Set("length", static_cast<double>(m.len));
  }
  return o;
}

int IntArg(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d)) || d < INT32_MIN || d > INT32_MAX) {
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a 32-bit integer");
  }
  return static_cast<int>(d);
}

int64_t SafeIntArg(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d)) || d < -static_cast<double>(kMaxSafeInteger) ||
      d > static_cast<double>(kMaxSafeInteger)) {
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be a safe integer");
  }
  return static_cast<int64_t>(d);
}

uint32_t MsgIdArg(const Napi::Value& v) {
  int64_t id = SafeIntArg(v, "msgId");
  if (id < 0 || id > UINT32_MAX) throw Napi::RangeError::New(v.Env(), "msgId must be a u32");
  return static_cast<uint32_t>(id);
}

class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "CachefilesDevice",
                       {InstanceMethod("open", &Device::Open), InstanceMethod("adopt", &Device::Adopt), InstanceMethod("command", &Device::Command),
                        InstanceMethod("start", &Device::Start), InstanceMethod("copen", &Device::Copen),
                        InstanceMethod("writeAligned", &Device::WriteAligned),
                        InstanceMethod("readComplete", &Device::ReadComplete),
                        InstanceMethod("closeFd", &Device::CloseFd), InstanceMethod("close", &Device::Close),
                        InstanceAccessor("fd", &Device::GetFd, nullptr)});
  }

  explicit Device(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Device>(info) {}

  ~Device() override { Shutdown(); }

 private:
  // open(path = '/dev/cachefiles'): needs CAP_SYS_ADMIN; EBUSY when another daemon holds it.
  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ >= 0) throw Napi::Error::New(env, "cachefiles device already open");
    std::string path = info.Length() > 0 && !info[0].IsUndefined() ? PathArg(info[0], "path") : "/dev/cachefiles";
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) ThrowErrno(env, errno, "open", path);
    Take(fd);
    return env.Undefined();
  }

  // adopt(fd): a device fd inherited from an earlier daemon (systemd's fd store), still bound; the
  // caller then writes `restore` so the kernel sends the pending and reopened requests again.
  Napi::Value Adopt(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ >= 0) throw Napi::Error::New(env, "cachefiles device already open");
    int fd = info[0].As<Napi::Number>().Int32Value();
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) ThrowErrno(env, errno, "fcntl(inherited cachefiles fd)");
    Take(fd);
    return env.Undefined();
  }

  void Take(int fd) { fd_ = fd; }

  void RequireOpen(Napi::Env env) {
    if (fd_ < 0) throw Napi::Error::New(env, "cachefiles device is not open");
  }

  // One command per write(); the kernel takes at most PAGE_SIZE-1 bytes, no NUL, and strips one
  // trailing newline. Errors carry the command text as `command`.
  void WriteCommand(Napi::Env env, const std::string& text) {
    RequireOpen(env);
    if (text.empty() || text.find('\0') != std::string::npos) {
      throw Napi::TypeError::New(env, "a cachefiles command is non-empty text without NUL bytes");
    }
    if (text.size() >= static_cast<size_t>(sysconf(_SC_PAGESIZE))) {
      throw Napi::RangeError::New(env, "a cachefiles command must be shorter than a page");
    }
    ssize_t n;
    do n = ::write(fd_, text.data(), text.size());
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      int err = errno;
      try {
        ThrowErrno(env, err, "write(/dev/cachefiles)");
      } catch (Napi::Error& e) {
        e.Set("command", Napi::String::New(env, text));
        e.Set("message", Napi::String::New(env, e.Message() + " '" + text + "'"));
        throw;
      }
    }
  }

  // command(text): a setup command: dir, tag, brun/bcull/bstop/frun/fcull/fstop, bind ondemand,
  // restore, inuse, cull. `bind ondemand` fails with EINVAL when the kernel lacks
  // CONFIG_CACHEFILES_ONDEMAND, and with EOPNOTSUPP when the cache directory's file system cannot
  // hold a cache (tmpfs).
  Napi::Value Command(const Napi::CallbackInfo& info) {
    if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "command must be a string");
    WriteCommand(info.Env(), info[0].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  }

  // copen(msgId, size): answers an OPEN. size >= 0 is the object's size in bytes (it must be the
  // same every time the object is opened, or the kernel discards the cached file); size < 0 is
  // -errno and refuses the object.
  Napi::Value Copen(const Napi::CallbackInfo& info) {
    uint32_t id = MsgIdArg(info[0]);
    int64_t size = SafeIntArg(info[1], "size");
    char text[64];
    std::snprintf(text, sizeof text, "copen %" PRIu32 ",%" PRId64, id, size);
    WriteCommand(info.Env(), text);
    return info.Env().Undefined();
  }

  // start(onMessage): onMessage(msg) on the JS thread for every request, in order:
  //   {opcode:'open', msgId, objectId, fd, flags, volumeKey: Buffer (no NUL), cookieKey: Buffer}
  //   {opcode:'read', msgId, objectId, offset, length}
  //   {opcode:'close', msgId, objectId}
  //   {opcode:'invalid', reason, raw: Buffer, msgId?, objectId?, rawOpcode?, fd?}  (a malformed
  //       message; when it carries an OPEN fd, refuse it with copen(msgId, -errno) and closeFd it)
  //   {opcode:'error', reason, code, errno}  (read() failed, e.g. EIO once the cache is dead; the
  //       reader thread stops after delivering it)
  // The object stays alive while started; close() stops the thread.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    RequireOpen(env);
    if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "onMessage must be a function");
    closing_ = false;
    reader_.Start(env, info[0].As<Napi::Function>(), "cachefiles", [this] { ReadLoop(); });
    Ref();  // no garbage collection (and no destructor joining from the GC) while the thread runs
    return env.Undefined();
  }

  // writeAligned(fd, offset, data, objectSize?): pwrite into an anon fd. Writes there are O_DIRECT
  // underneath, and cachefiles refuses offsets that are not page-aligned (ENOBUFS), so:
  //   - offset must be a multiple of the page size (4096);
  //   - data is copied into page-aligned memory; when its length is not a multiple of 4096 it is
  //     zero-padded up to the next multiple, which is allowed only for the final block of the
  //     object: objectSize must be given and offset + data.length must equal it (padding zeros past
  //     the end of the object is harmless: the backing file is sized round_up(size, 4096)).
  // Returns the number of bytes written (the padded length).
  Napi::Value WriteAligned(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int fd = IntArg(info[0], "fd");
    int64_t offset = SafeIntArg(info[1], "offset");
    if (!info[2].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
    auto data = info[2].As<Napi::Buffer<unsigned char>>();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    if (offset < 0 || static_cast<uint64_t>(offset) % page != 0) {
      throw Napi::RangeError::New(env, "offset " + std::to_string(offset) + " is not a multiple of " + std::to_string(page));
    }
    size_t length = data.Length();
    size_t padded = (length + page - 1) / page * page;
    if (padded != length) {
      if (info.Length() < 4 || info[3].IsUndefined()) {
        throw Napi::RangeError::New(env, "length " + std::to_string(length) + " is not a multiple of " + std::to_string(page) +
                                             " and no objectSize says this is the object's final block");
      }
      int64_t objectSize = SafeIntArg(info[3], "objectSize");
      if (static_cast<int64_t>(offset + length) != objectSize) {
        throw Napi::RangeError::New(env, "length " + std::to_string(length) + " is not a multiple of " + std::to_string(page) +
                                             " and the data does not end at the object's end (" + std::to_string(objectSize) + ")");
      }
    }
    if (padded == 0) return Napi::Number::New(env, 0);
    void* mem = nullptr;
    int rc = posix_memalign(&mem, page, padded);
    if (rc != 0) ThrowErrno(env, rc, "posix_memalign");
    std::memcpy(mem, data.Data(), length);
    std::memset(static_cast<char*>(mem) + length, 0, padded - length);
    size_t done = 0;
    while (done < padded) {
      ssize_t n = ::pwrite(fd, static_cast<char*>(mem) + done, padded - done, offset + static_cast<int64_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        int err = n < 0 ? errno : EIO;
        std::free(mem);
        ThrowErrno(env, err, "pwrite(cachefiles anon fd)");
      }
      done += static_cast<size_t>(n);
      if (done < padded && done % page != 0) {
        std::free(mem);
        ThrowErrno(env, EIO, "pwrite(cachefiles anon fd): short write off a page boundary");
      }
    }
    std::free(mem);
    return Napi::Number::New(env, static_cast<double>(padded));
  }

  // readComplete(fd, msgId): ioctl(CACHEFILES_IOC_READ_COMPLETE) with the READ's msg_id by value.
  // Any anon fd of the object works; EINVAL when msgId is not a pending READ of that object.
  Napi::Value ReadComplete(const Napi::CallbackInfo& info) {
    int fd = IntArg(info[0], "fd");
    uint32_t id = MsgIdArg(info[1]);
    if (::ioctl(fd, kIocReadComplete, static_cast<unsigned long>(id)) != 0) {
      ThrowErrno(info.Env(), errno, "ioctl(CACHEFILES_IOC_READ_COMPLETE)");
    }
    return info.Env().Undefined();
  }

  Napi::Value CloseFd(const Napi::CallbackInfo& info) {
    int fd = IntArg(info[0], "fd");
    if (::close(fd) != 0 && errno != EINTR) ThrowErrno(info.Env(), errno, "close");
    return info.Env().Undefined();
  }

  // close(): stops and joins the reader thread, then closes /dev/cachefiles. Closing the device
  // marks the cache dead: pending and future requests of its mounts fail with EIO.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    bool wasRunning = reader_.running();
    Shutdown();
    if (wasRunning) Unref();
    return info.Env().Undefined();
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  void Shutdown() {
    if (reader_.running()) {
      closing_ = true;
      reader_.Stop();
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  void Deliver(Message* m) {
    napi_status st = reader_.tsfn().BlockingCall(m, [this](Napi::Env env, Napi::Function cb, Message* msg) {
      if (closing_) {
        // close() came first: nobody will answer; do not leak the OPEN's fd.
        if (msg->fd >= 0) ::close(msg->fd);
        delete msg;
        return;
      }
      Napi::Object o = ToJs(env, *msg);
      delete msg;
      cb.Call({o});
    });
    if (st != napi_ok) {
      if (m->fd >= 0) ::close(m->fd);
      delete m;
    }
  }

  void ReadLoop() {
    alignas(8) unsigned char buf[kMsgMaxSize];
    for (;;) {
      short revents;
      ReaderThread::Woken woken = reader_.Wait(fd_, &revents);
      if (woken == ReaderThread::kStop) return;
      if (woken == ReaderThread::kFailed) {
        auto* m = new Message();
        m->kind = Message::kError;
        m->err = errno;
        m->reason = "poll(/dev/cachefiles) failed";
        Deliver(m);
        return;
      }
      if (revents & (POLLERR | POLLNVAL)) {
        auto* m = new Message();
        m->kind = Message::kError;
        m->err = EIO;
        m->reason = "poll(/dev/cachefiles) reported an error";
        Deliver(m);
        return;
      }
      if (!(revents & POLLIN)) continue;
      ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n == 0) continue;  // nothing queued after all (0, not EAGAIN, in on-demand mode)
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        auto* m = new Message();
        m->kind = Message::kError;
        m->err = errno;
        m->reason = "read(/dev/cachefiles) failed";
        Deliver(m);
        return;
      }
      Deliver(Parse(buf, static_cast<size_t>(n)));
    }
  }

  int fd_ = -1;
  std::atomic<bool> closing_{false};
  ReaderThread reader_;
};

// parseCachefilesMessage(buffer): the object start() would deliver for these bytes, for tests of the
// parser (no fd is installed by this, so an OPEN's fd number means nothing here).
Napi::Value ParseMessage(const Napi::CallbackInfo& info) {
  if (!info[0].IsBuffer()) throw Napi::TypeError::New(info.Env(), "message must be a Buffer");
  auto buf = info[0].As<Napi::Buffer<unsigned char>>();
  std::unique_ptr<Message> m(Parse(buf.Data(), buf.Length()));
  return ToJs(info.Env(), *m);
}

}  // namespace

void InitCachefiles(Napi::Env env, Napi::Object exports) {
  exports.Set("CachefilesDevice", Device::Define(env));
  exports.Set("parseCachefilesMessage", Napi::Function::New(env, ParseMessage, "parseCachefilesMessage"));
}
