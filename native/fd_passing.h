#pragma once
#include <napi.h>

void InitFdPassing(Napi::Env env, Napi::Object exports);
