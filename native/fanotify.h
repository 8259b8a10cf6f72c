#pragma once
#include <napi.h>

void InitFanotify(Napi::Env env, Napi::Object exports);
