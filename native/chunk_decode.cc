// Fetched chunks into a cache file, on the thread pool: each chunk's zstd frame decompressed into a
// buffer kept per thread, its size and SHA-256 checked, and only then written at its offset. The
// uncompressed bytes never become JavaScript buffers: each would be fresh memory (a page fault per
// 4 KiB) for the garbage collector to find, and its hash would run on the event loop that answers
// the kernel's requests. A direct destination (a cachefiles object's anonymous fd, O_DIRECT underneath)
// is written from page-aligned memory at page-aligned offsets, each chunk padded with zeros to whole
// pages: chunks start on block boundaries, so the padding lies in the chunk's own last block (or past
// the object's end, inside the backing file's last page).
// `copyChunks` does the same with chunks already decoded in another cache file of the node: each read
// into the same per-thread room, checked, and only then written. The bytes written are the ones
// checked: a source punched, truncated or corrupt meanwhile fails the check, never reaches the file.
#include "chunk_decode.h"

#include <openssl/evp.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr size_t kDigestSize = 32;
// Per chunk in the layout array: offset of its frame in the bytes, frame size, uncompressed size,
// offset in the file.
// For a copy: offset of the chunk in the source file, 0, size, offset in the file.
constexpr uint32_t kLayoutFields = 4;

struct Chunk {
  size_t at;
  size_t compressedSize;
  size_t uncompressedSize;
  off_t fileOffset;
  const uint8_t* digest;
};

constexpr size_t kPage = 4096;

size_t RoundUp(size_t n) { return (n + kPage - 1) / kPage * kPage; }

// Per pool thread, kept: a decompression context and the room chunks are decompressed into, page-aligned
// and a whole number of pages (what a direct write needs).
struct ThreadState {
  ZSTD_DCtx* ctx = ZSTD_createDCtx();
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  uint8_t* room = nullptr;
  size_t roomSize = 0;

  bool Reserve(size_t n) {
    if (roomSize >= n && roomSize > 0) return true;
    size_t size = RoundUp(n == 0 ? 1 : n);
    void* mem = nullptr;
    if (posix_memalign(&mem, kPage, size) != 0) return false;
    std::free(room);
    room = static_cast<uint8_t*>(mem);
    roomSize = size;
    return true;
  }
};

ThreadState& State() {
  thread_local ThreadState state;
  return state;
}

std::string Hex(const uint8_t* d) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < kDigestSize; i++) {
    s += kDigits[d[i] >> 4];
    s += kDigits[d[i] & 15];
  }
  return s;
}

class DecodeChunksWorker : public Napi::AsyncWorker {
 public:
  // `source` >= 0: chunks are copied from that file (decoded already) rather than decompressed from `bytes`.
  DecodeChunksWorker(Napi::Env env, int fd, Napi::Buffer<uint8_t> bytes, Napi::Float64Array layout, Napi::Buffer<uint8_t> digests,
                     bool idle, bool direct, int source = -1)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), source_(source), idle_(idle), direct_(direct) {
    keepBytes_ = Napi::Persistent(bytes.As<Napi::Object>());
    keepDigests_ = Napi::Persistent(digests.As<Napi::Object>());
    bytes_ = bytes.Data();
    length_ = bytes.Length();
    size_t n = layout.ElementLength() / kLayoutFields;
    if (layout.ElementLength() % kLayoutFields != 0 || digests.Length() != n * kDigestSize) {
      throw Napi::RangeError::New(env, "decodeChunks: layout and digests disagree on the number of chunks");
    }
    chunks_.reserve(n);
    for (size_t i = 0; i < n; i++) {
      const double* f = layout.Data() + i * kLayoutFields;
      for (uint32_t k = 0; k < kLayoutFields; k++) {
        if (!(f[k] >= 0) || f[k] > 9007199254740991.0) throw Napi::RangeError::New(env, "decodeChunks: a layout field is not a byte offset");
      }
      chunks_.push_back({static_cast<size_t>(f[0]), static_cast<size_t>(f[1]), static_cast<size_t>(f[2]), static_cast<off_t>(f[3]),
                         digests.Data() + i * kDigestSize});
    }
    errors_.resize(n);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    ThreadState& state = State();
    if (state.ctx == nullptr || state.md == nullptr) return SetError("decodeChunks: out of memory");
    // Linux gives each thread its own nice value. Lowering it back needs CAP_SYS_NICE (the daemon runs
    // as root); without it the pool thread stays at 19, slower but as correct.
    pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
    int before = 0;
    if (idle_) {
      errno = 0;
      before = ::getpriority(PRIO_PROCESS, tid);
      if (errno == 0) ::setpriority(PRIO_PROCESS, tid, 19);
    }
    for (size_t i = 0; i < chunks_.size(); i++) errors_[i] = source_ >= 0 ? Copy(state, chunks_[i]) : Decode(state, chunks_[i]);
    if (idle_) ::setpriority(PRIO_PROCESS, tid, before);
  }

  void OnOK() override {
    Napi::Env env = Env();
    auto out = Napi::Array::New(env, errors_.size());
    for (size_t i = 0; i < errors_.size(); i++) {
      out.Set(i, errors_[i].empty() ? env.Null() : Napi::String::New(env, errors_[i]));
    }
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  // Empty when the chunk was verified and written; else what was wrong with it.
  std::string Decode(ThreadState& state, const Chunk& c) {
    if (c.at > length_ || c.compressedSize > length_ - c.at) return "compressed bytes out of the fetched range";
    if (!state.Reserve(c.uncompressedSize)) return "out of memory for " + std::to_string(c.uncompressedSize) + " bytes";
    // Room for exactly the expected size: a frame holding more fails instead of writing past it.
    size_t n = ZSTD_decompressDCtx(state.ctx, state.room, c.uncompressedSize, bytes_ + c.at, c.compressedSize);
    if (ZSTD_isError(n)) return std::string("zstd: ") + ZSTD_getErrorName(n);
    if (n != c.uncompressedSize) {
      return std::to_string(n) + " bytes after decompression, expected " + std::to_string(c.uncompressedSize);
    }
    return CheckAndWrite(state, c);
  }

  // Empty when the chunk was read from the source file, verified and written; else what was wrong.
  std::string Copy(ThreadState& state, const Chunk& c) {
    if (!state.Reserve(c.uncompressedSize)) return "out of memory for " + std::to_string(c.uncompressedSize) + " bytes";
    for (size_t got = 0; got < c.uncompressedSize;) {
      ssize_t r = ::pread(source_, state.room + got, c.uncompressedSize - got, static_cast<off_t>(c.at + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return std::string("reading the source: ") + std::strerror(errno);
      if (r == 0) return "the source ends at " + std::to_string(c.at + got);
      got += static_cast<size_t>(r);
    }
    return CheckAndWrite(state, c);
  }

  // The chunk's `uncompressedSize` bytes in the room: checked against its SHA-256, then written.
  std::string CheckAndWrite(ThreadState& state, const Chunk& c) {
    size_t n = c.uncompressedSize;
    uint8_t digest[kDigestSize];
    unsigned int digestLength = 0;
    if (EVP_DigestInit_ex(state.md, EVP_sha256(), nullptr) != 1 || EVP_DigestUpdate(state.md, state.room, n) != 1 ||
        EVP_DigestFinal_ex(state.md, digest, &digestLength) != 1 || digestLength != kDigestSize) {
      return "sha256 failed";
    }
    if (std::memcmp(digest, c.digest, kDigestSize) != 0) return "sha256 " + Hex(digest) + " does not match " + Hex(c.digest);
    // The prefix tells src/blob/chunk-codec.ts this is no fault of the chunk's bytes.
    const std::string writeFault = "writing the cache file: ";
    size_t length = n;
    if (direct_) {
      if (c.fileOffset % kPage != 0) return writeFault + "offset " + std::to_string(c.fileOffset) + " is not page-aligned";
      length = RoundUp(n);
      std::memset(state.room + n, 0, length - n);
    }
    // Only verified bytes, from the chunk's start forwards: a write cut short (the daemon killed) leaves
    // a hole at the chunk's end, so the chunk is never taken as present (src/storage/blob-cache.ts).
    for (size_t done = 0; done < length;) {
      ssize_t w = ::pwrite(fd_, state.room + done, length - done, c.fileOffset + static_cast<off_t>(done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return writeFault + std::strerror(w < 0 ? errno : EIO);
      done += static_cast<size_t>(w);
      if (direct_ && done < length && done % kPage != 0) return writeFault + "short direct write off a page boundary";
    }
    return "";
  }

  Napi::Promise::Deferred deferred_;
  // The fetched bytes and the digests stay alive (and unmoved) while the pool uses them.
  Napi::ObjectReference keepBytes_;
  Napi::ObjectReference keepDigests_;
  int fd_;
  int source_;
  bool idle_;
  bool direct_;
  const uint8_t* bytes_ = nullptr;
  size_t length_ = 0;
  std::vector<Chunk> chunks_;
  std::vector<std::string> errors_;
};

Napi::Value DecodeChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsBuffer() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array || !info[3].IsBuffer()) {
    throw Napi::TypeError::New(env, "decodeChunks(fd, bytes: Buffer, layout: Float64Array, digests: Buffer, idle?: boolean, direct?: boolean)");
  }
  bool idle = info.Length() > 4 && info[4].ToBoolean().Value();
  bool direct = info.Length() > 5 && info[5].ToBoolean().Value();
  auto* worker = new DecodeChunksWorker(env, info[0].As<Napi::Number>().Int32Value(), info[1].As<Napi::Buffer<uint8_t>>(),
                                        info[2].As<Napi::Float64Array>(), info[3].As<Napi::Buffer<uint8_t>>(), idle, direct);
  worker->Queue();
  return worker->Promise();
}

Napi::Value CopyChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array || !info[3].IsBuffer()) {
    throw Napi::TypeError::New(env, "copyChunks(source, fd, layout: Float64Array, digests: Buffer, idle?: boolean, direct?: boolean)");
  }
  int source = info[0].As<Napi::Number>().Int32Value();
  if (source < 0) throw Napi::RangeError::New(env, "copyChunks: the source is not an fd");
  bool idle = info.Length() > 4 && info[4].ToBoolean().Value();
  bool direct = info.Length() > 5 && info[5].ToBoolean().Value();
  auto* worker = new DecodeChunksWorker(env, info[1].As<Napi::Number>().Int32Value(), Napi::Buffer<uint8_t>::New(env, 0),
                                        info[2].As<Napi::Float64Array>(), info[3].As<Napi::Buffer<uint8_t>>(), idle, direct, source);
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitChunkDecode(Napi::Env env, Napi::Object exports) {
  exports.Set("decodeChunks", Napi::Function::New(env, DecodeChunks));
  exports.Set("copyChunks", Napi::Function::New(env, CopyChunks));
}
