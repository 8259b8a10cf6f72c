#pragma once
#include <napi.h>
#include <string>

// Throws a JS Error shaped like Node's own system errors (code, errno, syscall, path).
[[noreturn]] void ThrowErrno(const Napi::Env& env, int err, const char* syscall, const std::string& path = "");

// Accepts a string or a Buffer (file names need not be UTF-8) and rejects embedded NUL bytes.
std::string PathArg(const Napi::Value& value, const char* what);
