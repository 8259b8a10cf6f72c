// fanotify pre-content events (Linux 6.14+): a reader thread delivers FAN_PRE_ACCESS events with
// their byte range to JS; JS fills the range through the event's own fd and answers allow or deny.
#include "fanotify.h"
#include "errors.h"
#include "reader_thread.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <sys/fanotify.h>
#include <unistd.h>

#ifndef FAN_PRE_ACCESS
#define FAN_PRE_ACCESS 0x00100000
#endif
#ifndef FAN_EVENT_INFO_TYPE_RANGE
#define FAN_EVENT_INFO_TYPE_RANGE 6
#endif
#define EO_FAN_ERRNO_SHIFT 24
#define EO_FAN_ERRNO_MASK 0xff

namespace {

struct RangeInfo {
  struct fanotify_event_info_header hdr;
  uint32_t pad;
  uint64_t offset;
  uint64_t count;
};

struct Event {
  int fd;
  int pid;
  uint64_t mask;
  bool hasRange;
  uint64_t offset;
  uint64_t count;
};

class Group : public Napi::ObjectWrap<Group> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FanotifyGroup",
                       {InstanceMethod("mark", &Group::Mark), InstanceMethod("start", &Group::Start),
                        InstanceMethod("respond", &Group::Respond), InstanceMethod("close", &Group::Close)});
  }

  explicit Group(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Group>(info) {
    fd_ = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, O_RDWR | O_LARGEFILE);
    if (fd_ < 0) ThrowErrno(info.Env(), errno, "fanotify_init(FAN_CLASS_PRE_CONTENT)");
  }

  ~Group() override { Shutdown(); }

 private:
  // mark(path, remove?): FAN_PRE_ACCESS on one file.
  Napi::Value Mark(const Napi::CallbackInfo& info) {
    std::string path = PathArg(info[0], "path");
    bool remove = info.Length() > 1 && info[1].ToBoolean();
    unsigned int flags = remove ? FAN_MARK_REMOVE : FAN_MARK_ADD;
    if (fanotify_mark(fd_, flags, FAN_PRE_ACCESS, AT_FDCWD, path.c_str()) != 0) {
      ThrowErrno(info.Env(), errno, "fanotify_mark(FAN_PRE_ACCESS)", path);
    }
    return info.Env().Undefined();
  }

  // start(callback): callback({fd, pid, offset, count}) for each event, on the JS thread.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    reader_.Start(info.Env(), info[0].As<Napi::Function>(), "fanotify", [this] { ReadLoop(); });
    return info.Env().Undefined();
  }

  // respond(eventFd, errno): 0 allows, anything else denies with that errno; closes the event fd.
  Napi::Value Respond(const Napi::CallbackInfo& info) {
    int eventFd = info[0].As<Napi::Number>().Int32Value();
    int err = info[1].As<Napi::Number>().Int32Value();
    struct fanotify_response r;
    r.fd = eventFd;
    r.response = err == 0 ? FAN_ALLOW : (FAN_DENY | ((static_cast<uint32_t>(err) & EO_FAN_ERRNO_MASK) << EO_FAN_ERRNO_SHIFT));
    ssize_t n = write(fd_, &r, sizeof r);
    int saved = errno;
    close(eventFd);
    if (n != static_cast<ssize_t>(sizeof r)) ThrowErrno(info.Env(), saved, "write(fanotify_response)");
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  void Shutdown() {
    reader_.Stop();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  void ReadLoop() {
    alignas(struct fanotify_event_metadata) char buf[8192];
    for (;;) {
      short revents;
      if (reader_.Wait(fd_, &revents) != ReaderThread::kEvents) return;
      ssize_t len = read(fd_, buf, sizeof buf);
      if (len <= 0) {
        if (len < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        return;
      }
      auto* meta = reinterpret_cast<struct fanotify_event_metadata*>(buf);
      while (FAN_EVENT_OK(meta, len)) {
        auto* ev = new Event{meta->fd, meta->pid, meta->mask, false, 0, 0};
        size_t off = meta->metadata_len;
        while (off + sizeof(struct fanotify_event_info_header) <= meta->event_len) {
          auto* hdr = reinterpret_cast<struct fanotify_event_info_header*>(reinterpret_cast<char*>(meta) + off);
          if (hdr->len == 0) break;
          if (hdr->info_type == FAN_EVENT_INFO_TYPE_RANGE && hdr->len >= sizeof(RangeInfo)) {
            auto* range = reinterpret_cast<RangeInfo*>(hdr);
            ev->hasRange = true;
            ev->offset = range->offset;
            ev->count = range->count;
          }
          off += hdr->len;
        }
        napi_status st = reader_.tsfn().BlockingCall(ev, [](Napi::Env env, Napi::Function cb, Event* e) {
          Napi::Object o = Napi::Object::New(env);
          o.Set("fd", e->fd);
          o.Set("pid", e->pid);
          o.Set("mask", static_cast<double>(e->mask));
          o.Set("offset", e->hasRange ? static_cast<double>(e->offset) : -1);
          o.Set("count", e->hasRange ? static_cast<double>(e->count) : -1);
          delete e;
          cb.Call({o});
        });
        if (st != napi_ok) {
          // JS is going away: never leave a reader blocked on an unanswered event.
          struct fanotify_response r = {meta->fd, FAN_DENY | (EIO << EO_FAN_ERRNO_SHIFT)};
          if (write(fd_, &r, sizeof r) < 0) { /* nothing more to do */ }
          close(meta->fd);
          delete ev;
        }
        meta = FAN_EVENT_NEXT(meta, len);
      }
    }
  }

  int fd_ = -1;
  ReaderThread reader_;
};

}  // namespace

void InitFanotify(Napi::Env env, Napi::Object exports) {
  exports.Set("FanotifyGroup", Group::Define(env));
}
