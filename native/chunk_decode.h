#pragma once
#include <napi.h>

void InitChunkDecode(Napi::Env env, Napi::Object exports);
