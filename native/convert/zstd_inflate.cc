// Layer un-zstd, streaming: the same zlib-like API as GzipInflater (gzip_inflate.cc), so that a zstd
// layer is held a piece at a time, never whole. Concatenated frames (and skippable frames) are one
// stream, as in zstd(1). A frame asking for a window over libzstd's default limit
// (ZSTD_WINDOWLOG_LIMIT_DEFAULT) is refused: the decoder's memory is bounded whatever the header says.
#include "zstd_inflate.h"

#include <zstd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "inflate_worker.h"

namespace {

class Inflater : public Napi::ObjectWrap<Inflater> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ZstdInflater", {InstanceMethod("feed", &Inflater::Feed), InstanceMethod("inflate", &Inflater::InflateInto)});
  }

  explicit Inflater(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Inflater>(info), stream_(ZSTD_createDStream()) {
    if (stream_ == nullptr) throw Napi::Error::New(info.Env(), "ZstdInflater: out of memory");
  }
  ~Inflater() override { ZSTD_freeDStream(stream_); }

  // Runs on a pool thread, one call at a time: fills `out` until it is full or the input is used up.
  std::string Run(uint8_t* out, size_t capacity, size_t& produced, bool& needsInput) {
    ZSTD_outBuffer output{out, capacity, 0};
    needsInput = false;
    while (output.pos < output.size) {
      if (input_.pos == input_.size) {
        if (next_ < parts_.size()) {
          input_ = {parts_[next_].data, parts_[next_].length, 0};
          next_++;
          continue;
        }
        // All input taken; with room left in the output, libzstd has flushed all it holds.
        if (!last_) needsInput = true;
        else if (frameLeft_ != 0) return "unexpected end of zstd data (truncated)";
        break;
      }
      size_t rc = ZSTD_decompressStream(stream_, &output, &input_);
      if (ZSTD_isError(rc)) return ZSTD_getErrorName(rc);
      frameLeft_ = rc;  // 0 exactly when a frame ended here
    }
    produced = output.pos;
    return "";
  }

  bool busy_ = false;

 private:
  Napi::Value Feed(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsBoolean()) throw Napi::TypeError::New(env, "feed(input: Buffer[], last: boolean)");
    if (busy_) throw Napi::Error::New(env, "ZstdInflater: feed while an inflate is running");
    if (input_.pos < input_.size || next_ < parts_.size()) throw Napi::Error::New(env, "ZstdInflater: feed before the previous input is used up");
    if (last_) throw Napi::Error::New(env, "ZstdInflater: feed after the last input");
    auto parts = info[0].As<Napi::Array>();
    parts_ = InputPartsOf(env, parts, "ZstdInflater");
    next_ = 0;
    input_ = {nullptr, 0, 0};
    last_ = info[1].As<Napi::Boolean>().Value();
    input_ref_ = Napi::Persistent(parts.As<Napi::Object>());
    return env.Undefined();
  }

  Napi::Value InflateInto(const Napi::CallbackInfo& info) { return QueueInflate(info, this, "ZstdInflater", "unzstd: "); }

  ZSTD_DStream* stream_;
  Napi::ObjectReference input_ref_;  // the parts being inflated stay alive until the next feed
  std::vector<InputPart> parts_;
  size_t next_ = 0;
  ZSTD_inBuffer input_{nullptr, 0, 0};
  bool last_ = false;
  size_t frameLeft_ = 1;  // an empty stream holds no frame: it is cut short too
};

}  // namespace

void InitZstdInflate(Napi::Env env, Napi::Object exports) {
  exports.Set("ZstdInflater", Inflater::Define(env));
}
