#include "errors.h"
#include <cstring>

void ThrowErrno(const Napi::Env& env, int err, const char* syscall, const std::string& path) {
  const char* name = strerrorname_np(err);
  std::string message = std::string(name ? name : "E?") + ": " + std::strerror(err) + ", " + syscall;
  if (!path.empty()) message += " '" + path + "'";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name ? name : "UNKNOWN"));
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) error.Set("path", Napi::Buffer<char>::Copy(env, path.data(), path.size()).ToString());
  throw error;
}

std::string PathArg(const Napi::Value& value, const char* what) {
  std::string out;
  if (value.IsBuffer()) {
    auto buf = value.As<Napi::Buffer<char>>();
    out.assign(buf.Data(), buf.Length());
  } else if (value.IsString()) {
    out = value.As<Napi::String>().Utf8Value();
  } else {
    throw Napi::TypeError::New(value.Env(), std::string(what) + " must be a string or Buffer");
  }
  if (out.find('\0') != std::string::npos) {
    throw Napi::TypeError::New(value.Env(), std::string(what) + " must not contain NUL bytes");
  }
  return out;
}
