// fanotify pre-content events (Linux 6.14+): a reader thread delivers FAN_PRE_ACCESS events with
// their byte range to JS; JS fills the range through the event's own fd and answers allow or deny.
// A watched file's events whose chunks are all present are allowed by the reader thread itself: JS
// shares the chunks' extents and its present flags, and learns later which chunks were first read so.
// A group outlives a daemon that dies while another process (the fd keeper) holds a copy of its fd:
// the next daemon adopts that fd, sweeps the events the dead one had read but not answered, then reads.
#include "fanotify.h"
#include "errors.h"
#include "reader_thread.h"

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sys/stat.h>
#include <utility>
#include <vector>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <string>
#include <sys/fanotify.h>
#include <sys/resource.h>
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

// A cache file whose hits the reader thread answers: its chunks' [start, end) extents, sorted, and
// the byte per chunk JS sets to 1 once the chunk is verified and written (and to 0 before punching it).
struct WatchedFile {
  double ino;  // names the file in drain(): what JS knows it by (fstat's st_ino, as a number)
  Napi::ObjectReference extentsRef;
  Napi::ObjectReference presentRef;
  const double* extents;
  const uint8_t* present;
  size_t count;
  std::vector<uint8_t> touched;
  double hits = 0;
};

class Group : public Napi::ObjectWrap<Group> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FanotifyGroup",
                       {InstanceMethod("mark", &Group::Mark), InstanceMethod("start", &Group::Start),
                        InstanceMethod("respond", &Group::Respond), InstanceMethod("sweep", &Group::Sweep),
                        InstanceMethod("watch", &Group::Watch), InstanceMethod("drain", &Group::Drain),
                        InstanceMethod("close", &Group::Close), InstanceAccessor("fd", &Group::GetFd, nullptr)});
  }

  // new FanotifyGroup(): a new FAN_CLASS_PRE_CONTENT group. new FanotifyGroup(fd): adopts the group fd
  // an earlier daemon left with the fd keeper (its marks and queued events come with it).
  explicit Group(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Group>(info) {
    Napi::Env env = info.Env();
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "FanotifyGroup(fd?): fd must be a number");
      int fd = info[0].As<Napi::Number>().Int32Value();
      std::string link = "/proc/self/fd/" + std::to_string(fd);
      char target[64] = {0};
      ssize_t n = readlink(link.c_str(), target, sizeof target - 1);
      if (n < 0) ThrowErrno(env, errno, "readlink", link);
      if (std::string(target, static_cast<size_t>(n)) != "anon_inode:[fanotify]") {
        throw Napi::Error::New(env, "inherited fd " + std::to_string(fd) + " is " + std::string(target, static_cast<size_t>(n)) +
                                        ", not a fanotify group");
      }
      // Inherited without close-on-exec: a child holding it would keep the group alive behind our back.
      if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) ThrowErrno(env, errno, "fcntl(FD_CLOEXEC)", link);
      fd_ = fd;
      return;
    }
    fd_ = fanotify_init(FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC, O_RDWR | O_LARGEFILE);
    if (fd_ < 0) ThrowErrno(env, errno, "fanotify_init(FAN_CLASS_PRE_CONTENT)");
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

  // watch(path, extents, present): events on the file at `path` for a range whose chunks are all
  // present are allowed here. `extents` holds each chunk's start and end (Float64Array, 2 per chunk,
  // sorted), `present` a byte per chunk that JS owns. Watching a file again replaces its watch.
  Napi::Value Watch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::string path = PathArg(info[0], "path");
    if (!info[1].IsTypedArray() || !info[2].IsTypedArray())
      throw Napi::TypeError::New(env, "watch(path, extents: Float64Array, present: Uint8Array)");
    auto extents = info[1].As<Napi::TypedArray>();
    auto present = info[2].As<Napi::TypedArray>();
    if (extents.TypedArrayType() != napi_float64_array || present.TypedArrayType() != napi_uint8_array ||
        extents.ElementLength() != 2 * present.ElementLength())
      throw Napi::TypeError::New(env, "watch: extents must be a Float64Array of two entries per byte of present");
    struct stat st;
    if (stat(path.c_str(), &st) != 0) ThrowErrno(env, errno, "stat", path);
    auto w = std::make_shared<WatchedFile>();
    w->ino = static_cast<double>(st.st_ino);
    w->extentsRef = Napi::Persistent(extents.As<Napi::Object>());
    w->presentRef = Napi::Persistent(present.As<Napi::Object>());
    w->extents = extents.As<Napi::Float64Array>().Data();
    w->present = present.As<Napi::Uint8Array>().Data();
    w->count = present.ElementLength();
    w->touched.assign(w->count, 0);
    std::shared_ptr<WatchedFile> old;
    {
      std::lock_guard<std::mutex> lock(watchMu_);
      auto& slot = watches_[{st.st_dev, st.st_ino}];
      old = std::move(slot);  // its references are released here, on the JS thread, outside the lock
      slot = std::move(w);
    }
    return env.Undefined();
  }

  // drain(): what the reader thread allowed since the last call: `touches` (inode, chunk) pairs for
  // chunks read for the first time, in that order, and `hits` (inode, count) pairs.
  Napi::Value Drain(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::vector<double> touches, hits;
    {
      std::lock_guard<std::mutex> lock(watchMu_);
      touches.swap(touches_);
      for (auto& [key, w] : watches_) {
        if (w->hits == 0) continue;
        hits.push_back(w->ino);
        hits.push_back(w->hits);
        w->hits = 0;
      }
    }
    auto toArray = [&](const std::vector<double>& v) {
      auto a = Napi::Float64Array::New(env, v.size());
      std::copy(v.begin(), v.end(), a.Data());
      return a;
    };
    Napi::Object out = Napi::Object::New(env);
    out.Set("touches", toArray(touches));
    out.Set("hits", toArray(hits));
    return out;
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

  // sweep(maxFd?): denies with EIO every event an earlier reader of this group took and left unanswered,
  // by trying each fd number in [0, maxFd] (default: this process's hard RLIMIT_NOFILE, which the
  // daemon's service shares). The kernel matches a response by fd number only, and a new event may be
  // given the number of a stale one: so this runs before the first read. Returns how many were answered.
  Napi::Value Sweep(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (fd_ < 0) throw Napi::Error::New(env, "fanotify group is closed");
    if (reader_.running()) throw Napi::Error::New(env, "fanotify sweep after the reader started: stale and new events would mix");
    int64_t maxFd;
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      maxFd = info[0].As<Napi::Number>().Int64Value();
    } else {
      struct rlimit rl;
      if (getrlimit(RLIMIT_NOFILE, &rl) != 0) ThrowErrno(env, errno, "getrlimit(RLIMIT_NOFILE)");
      maxFd = rl.rlim_max == RLIM_INFINITY ? INT32_MAX : static_cast<int64_t>(rl.rlim_max);
    }
    if (maxFd > INT32_MAX) maxFd = INT32_MAX;
    uint32_t answered = 0;
    for (int64_t n = 0; n <= maxFd; n++) {
      struct fanotify_response r = {static_cast<int32_t>(n), FAN_DENY | (EIO << EO_FAN_ERRNO_SHIFT)};
      if (write(fd_, &r, sizeof r) == static_cast<ssize_t>(sizeof r)) {
        answered++;
        continue;
      }
      if (errno == ENOENT) continue;  // no pending event with this number
      if (errno == EINTR) {
        n--;
        continue;
      }
      ThrowErrno(env, errno, "write(fanotify_response) sweeping fd", std::to_string(n));
    }
    return Napi::Number::New(env, answered);
  }

  Napi::Value GetFd(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Shutdown();
    return info.Env().Undefined();
  }

  // On the reader thread: whether every chunk the event's range [offset, offset + count) overlaps is
  // present in a watched file; if so its first reads are noted for `drain`.
  bool AllPresent(int eventFd, uint64_t offset, uint64_t count) {
    struct stat st;
    if (count == 0 || fstat(eventFd, &st) != 0) return false;
    std::lock_guard<std::mutex> lock(watchMu_);
    auto it = watches_.find({st.st_dev, st.st_ino});
    if (it == watches_.end()) return false;
    WatchedFile& w = *it->second;
    const double start = static_cast<double>(offset), end = static_cast<double>(offset + count);
    size_t lo = 0, hi = w.count;  // the first chunk ending after start
    while (lo < hi) {
      size_t mid = (lo + hi) / 2;
      if (w.extents[2 * mid + 1] <= start) lo = mid + 1;
      else hi = mid;
    }
    size_t last = lo;
    for (; last < w.count && w.extents[2 * last] < end; last++) {
      if (__atomic_load_n(&w.present[last], __ATOMIC_ACQUIRE) != 1) return false;
    }
    if (lo == last && lo == w.count) return false;  // beyond the blob: JS refuses or serves it
    for (size_t i = lo; i < last; i++) {
      if (w.touched[i]) continue;
      w.touched[i] = 1;
      touches_.push_back(w.ino);
      touches_.push_back(static_cast<double>(i));
    }
    w.hits++;
    return true;
  }

  void Shutdown() {
    reader_.Stop();
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  void ReadLoop() {
    const pid_t self = getpid();
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
        if (meta->pid == self) {
          // The daemon's own writes (chunks verified before they are written) raise events too: they
          // are allowed here, so that a writing thread never waits for a busy JS thread. Only this
          // process's pid is trusted: a daemon that died took its waiting writes with it (the kernel
          // drops a killed writer's queued events; those read already are swept).
          struct fanotify_response r = {meta->fd, FAN_ALLOW};
          if (write(fd_, &r, sizeof r) < 0) { /* only when the group is closing, which answers it */ }
          close(meta->fd);
          meta = FAN_EVENT_NEXT(meta, len);
          continue;
        }
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
        if (ev->hasRange && AllPresent(meta->fd, ev->offset, ev->count)) {
          struct fanotify_response r = {meta->fd, FAN_ALLOW};
          if (write(fd_, &r, sizeof r) < 0) { /* only when the group is closing, which answers it */ }
          close(meta->fd);
          delete ev;
          meta = FAN_EVENT_NEXT(meta, len);
          continue;
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
  std::mutex watchMu_;
  std::map<std::pair<dev_t, ino_t>, std::shared_ptr<WatchedFile>> watches_;
  std::vector<double> touches_;
};

}  // namespace

void InitFanotify(Napi::Env env, Napi::Object exports) {
  exports.Set("FanotifyGroup", Group::Define(env));
}
