// What the streaming inflaters (gzip_inflate.cc, zstd_inflate.cc) share: their input as a list of
// pieces held alive from JS, and the pool job that fills one output buffer.
#pragma once
#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

struct InputPart {
  uint8_t* data;
  size_t length;
};

// The pieces of feed(input: Buffer[], last): each checked to be a Buffer the inflater can take at once.
inline std::vector<InputPart> InputPartsOf(Napi::Env env, Napi::Array parts, const char* name) {
  std::vector<InputPart> list;
  for (uint32_t i = 0; i < parts.Length(); i++) {
    Napi::Value v = parts.Get(i);
    if (!v.IsBuffer()) throw Napi::TypeError::New(env, std::string(name) + ".feed: input " + std::to_string(i) + " is not a Buffer");
    auto b = v.As<Napi::Buffer<uint8_t>>();
    if (b.Length() > UINT32_MAX) throw Napi::RangeError::New(env, std::string(name) + ".feed: input over 4 GiB");
    list.push_back({b.Data(), b.Length()});
  }
  return list;
}

// One inflate call on the thread pool. `Inflater` has `std::string Run(out, capacity, produced&,
// needsInput&)` (an error message, or empty) and a `busy_` flag that is set while a call runs.
template <class Inflater>
class InflateWorker : public Napi::AsyncWorker {
 public:
  InflateWorker(Napi::Env env, Inflater* inflater, Napi::Object self, Napi::Buffer<uint8_t> output, std::string errorPrefix)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), inflater_(inflater), errorPrefix_(std::move(errorPrefix)) {
    self_ = Napi::Persistent(self);
    output_ = Napi::Persistent(output.As<Napi::Object>());
    out_ = output.Data();
    capacity_ = output.Length();
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::string err = inflater_->Run(out_, capacity_, produced_, needsInput_);
    if (!err.empty()) SetError(errorPrefix_ + err);
  }
  void OnOK() override {
    inflater_->busy_ = false;
    Napi::Object result = Napi::Object::New(Env());
    result.Set("produced", Napi::Number::New(Env(), static_cast<double>(produced_)));
    result.Set("needsInput", Napi::Boolean::New(Env(), needsInput_));
    deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) override {
    inflater_->busy_ = false;
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Inflater* inflater_;
  std::string errorPrefix_;
  Napi::ObjectReference self_;  // the inflater and the output outlive the call
  Napi::ObjectReference output_;
  uint8_t* out_;
  size_t capacity_;
  size_t produced_ = 0;
  bool needsInput_ = false;
};

// inflate(output: Buffer): Promise<{ produced, needsInput }>, on the thread pool.
template <class Inflater>
Napi::Value QueueInflate(const Napi::CallbackInfo& info, Inflater* inflater, const char* name, const char* errorPrefix) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "inflate(output: Buffer)");
  if (inflater->busy_) throw Napi::Error::New(env, std::string(name) + ": inflate while another is running");
  auto output = info[0].As<Napi::Buffer<uint8_t>>();
  if (output.Length() == 0 || output.Length() > UINT32_MAX) throw Napi::RangeError::New(env, std::string(name) + ".inflate: output must be 1 byte to 4 GiB");
  auto* worker = new InflateWorker<Inflater>(env, inflater, info.This().As<Napi::Object>(), output, errorPrefix);
  inflater->busy_ = true;
  worker->Queue();
  return worker->Promise();
}
