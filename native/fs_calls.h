#pragma once
#include <napi.h>

void InitFsCalls(Napi::Env env, Napi::Object exports);
