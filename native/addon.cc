#include <malloc.h>
#include <napi.h>
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

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFsCalls(env, exports);
  InitFanotify(env, exports);
  InitCachefiles(env, exports);
  InitChunkDecode(env, exports);
  InitFuse(env, exports);
  InitFdPassing(env, exports);
  exports.Set("mapLargeAllocations", Napi::Function::New(env, MapLargeAllocations));
  return exports;
}

NODE_API_MODULE(erofs_ondemand_native, Init)
