#include <malloc.h>
#include <napi.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include "cachefiles.h"
#include "chunk_decode.h"
#include "fanotify.h"
#include "fd_passing.h"
#include "fs_calls.h"
#include "fuse.h"

namespace {

// mallopt(M_MMAP_THRESHOLD): allocations from `bytes` on are mapped on their own and unmapped when freed.
// Setting it also ends glibc's sliding threshold, which after the first large free serves later large
// blocks from the heap, where they fragment it and the process never gives the memory back.
Napi::Value MapLargeAllocations(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "mapLargeAllocations(bytes)");
  return Napi::Boolean::New(info.Env(), mallopt(M_MMAP_THRESHOLD, info[0].As<Napi::Number>().Int32Value()) == 1);
}

// madvise(MADV_DONTNEED) on the whole pages inside the buffer: their memory goes back to the kernel now,
// not when the garbage collector frees the buffer. The mapping stays, so a later read of those pages
// sees zeros, never another's bytes. Only for a buffer that owns its memory and is read no more.
Napi::Value ReleasePages(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(info.Env(), "releasePages(buffer)");
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t at = reinterpret_cast<uintptr_t>(buf.Data());
  const uintptr_t start = (at + page - 1) / page * page;
  const uintptr_t end = (at + buf.Length()) / page * page;
  if (end <= start || madvise(reinterpret_cast<void*>(start), end - start, MADV_DONTNEED) != 0) {
    return Napi::Number::New(info.Env(), 0);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(end - start));
}

// Memory for a response body the daemon reads into and gives back as soon as it is done (releasePages):
// its own mapping, aligned to the huge page size and advised for huge pages. A body written into 4 KiB
// pages faults once per page, each fault and each page's later release a kernel entry; with huge pages
// it is one per 2 MiB. Only the whole huge pages inside the body are advised: its tail stays on small
// pages, so no page beyond the body's bytes is ever made resident. Where transparent huge pages are off,
// the advice is refused and the memory is ordinary pages.
constexpr size_t kHugePage = size_t{2} << 20;

Napi::Value AllocBody(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "allocBody(bytes)");
  const double asked = info[0].As<Napi::Number>().DoubleValue();
  if (!(asked >= 1) || asked > double{size_t{1} << 40}) throw Napi::RangeError::New(env, "allocBody: bytes out of range");
  const size_t size = static_cast<size_t>(asked);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t length = (size + page - 1) / page * page;
  // Mapped with a huge page's worth to spare, then trimmed to an aligned start.
  void* raw = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw Napi::Error::New(env, std::string("allocBody: mmap: ") + std::strerror(errno));
  const uintptr_t at = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (at + kHugePage - 1) / kHugePage * kHugePage;
  if (start > at) munmap(raw, start - at);
  const uintptr_t end = at + length + kHugePage;
  if (end > start + length) munmap(reinterpret_cast<void*>(start + length), end - (start + length));
  const size_t whole = size / kHugePage * kHugePage;
  if (whole > 0) madvise(reinterpret_cast<void*>(start), whole, MADV_HUGEPAGE);
  return Napi::ArrayBuffer::New(env, reinterpret_cast<void*>(start), size, [length](Napi::Env, void* data) {
    munmap(data, length);
  });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFsCalls(env, exports);
  InitFanotify(env, exports);
  InitCachefiles(env, exports);
  InitChunkDecode(env, exports);
  InitFuse(env, exports);
  InitFdPassing(env, exports);
  exports.Set("mapLargeAllocations", Napi::Function::New(env, MapLargeAllocations));
  exports.Set("releasePages", Napi::Function::New(env, ReleasePages));
  exports.Set("allocBody", Napi::Function::New(env, AllocBody));
  return exports;
}

NODE_API_MODULE(erofs_ondemand_native, Init)
