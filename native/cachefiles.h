#pragma once
#include <napi.h>

// CachefilesDevice: the user-space end of cachefiles on-demand mode (/dev/cachefiles).
void InitCachefiles(Napi::Env env, Napi::Object exports);
