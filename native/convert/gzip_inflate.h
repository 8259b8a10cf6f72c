#pragma once
#include <napi.h>

// GzipInflater: streaming gunzip (ISA-L igzip) whose work runs on the thread pool.
void InitGzipInflate(Napi::Env env, Napi::Object exports);
