#include <malloc.h>
#include <napi.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdint>
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
  return exports;
}

NODE_API_MODULE(erofs_ondemand_native, Init)
