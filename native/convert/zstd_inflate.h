#pragma once
#include <napi.h>

// ZstdInflater: streaming zstd decompression (libzstd) whose work runs on the thread pool.
void InitZstdInflate(Napi::Env env, Napi::Object exports);
