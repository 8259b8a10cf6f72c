#include <napi.h>
#include "cachefiles.h"
#include "chunk_decode.h"
#include "fanotify.h"
#include "fs_calls.h"
#include "fuse.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFsCalls(env, exports);
  InitFanotify(env, exports);
  InitCachefiles(env, exports);
  InitChunkDecode(env, exports);
  InitFuse(env, exports);
  return exports;
}

NODE_API_MODULE(erofs_ondemand_native, Init)
