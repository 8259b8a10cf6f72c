#pragma once
#include <napi.h>

void InitFuse(Napi::Env env, Napi::Object exports);
