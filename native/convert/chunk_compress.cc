// Chunks go to the thread pool in batches: each chunk's SHA-256 and its own zstd frame. One trip per
// chunk cost more than compressing a small file, and most chunks of a root file system are small
// files; hashing here rather than on the event loop takes a sixth of its work off it.
#include "chunk_compress.h"

#include <openssl/evp.h>
#include <zstd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace {

constexpr size_t kDigestSize = 32;
using Digest = std::array<uint8_t, kDigestSize>;

struct DigestHash {
  size_t operator()(const Digest& d) const {
    size_t h;
    std::memcpy(&h, d.data(), sizeof h);  // a SHA-256 is uniform already
    return h;
  }
};

// Digests of chunks already stored (in any blob of the image): the pool skips compressing them. Only
// chunks whose batch has been placed are added, so a digest found here was stored by an earlier
// batch, and the event loop, placing batches in order, finds it in its dictionary too.
class DigestSet : public Napi::ObjectWrap<DigestSet> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DigestSet", {InstanceMethod("add", &DigestSet::Add), InstanceMethod("has", &DigestSet::Has)});
  }
  explicit DigestSet(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DigestSet>(info) {}

  bool Contains(const Digest& d) {
    std::lock_guard<std::mutex> lock(mutex_);
    return set_.count(d) > 0;
  }

 private:
  static Digest DigestAt(const uint8_t* p) {
    Digest d;
    std::memcpy(d.data(), p, kDigestSize);
    return d;
  }
  // add(digests: Buffer): 32 bytes each.
  Napi::Value Add(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(info.Env(), "DigestSet.add(digests: Buffer)");
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    if (b.Length() % kDigestSize != 0) throw Napi::RangeError::New(info.Env(), "DigestSet.add: not a whole number of SHA-256 digests");
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t off = 0; off < b.Length(); off += kDigestSize) set_.insert(DigestAt(b.Data() + off));
    return info.Env().Undefined();
  }
  Napi::Value Has(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsBuffer() || info[0].As<Napi::Buffer<uint8_t>>().Length() != kDigestSize) {
      throw Napi::TypeError::New(info.Env(), "DigestSet.has(digest: 32-byte Buffer)");
    }
    return Napi::Boolean::New(info.Env(), Contains(DigestAt(info[0].As<Napi::Buffer<uint8_t>>().Data())));
  }

  std::mutex mutex_;
  std::unordered_set<Digest, DigestHash> set_;
};

struct Part {
  const uint8_t* data;
  size_t length;
};

struct Chunk {
  std::vector<Part> parts;
  size_t length = 0;
};

// Per pool thread, kept: a compression context (one per chunk measured 15% slower) and room to join
// a chunk that arrived in pieces.
struct ThreadState {
  ZSTD_CCtx* ctx = ZSTD_createCCtx();
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  std::vector<uint8_t> joined;
};

ThreadState& State() {
  thread_local ThreadState state;
  return state;
}

class CompressChunksWorker : public Napi::AsyncWorker {
 public:
  CompressChunksWorker(Napi::Env env, int level, Napi::Array chunks, Napi::Buffer<uint8_t> output, DigestSet* known, Napi::Object knownObject)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), level_(level), known_(known) {
    keepChunks_ = Napi::Persistent(chunks.As<Napi::Object>());
    keepOutput_ = Napi::Persistent(output.As<Napi::Object>());
    keepKnown_ = Napi::Persistent(knownObject);
    output_ = output.Data();
    capacity_ = output.Length();
    size_t bound = 0;
    chunks_.resize(chunks.Length());
    for (uint32_t i = 0; i < chunks.Length(); i++) {
      Napi::Value v = chunks.Get(i);
      if (!v.IsArray()) throw Napi::TypeError::New(env, "compressChunks: chunk " + std::to_string(i) + " is not an array of Buffers");
      auto parts = v.As<Napi::Array>();
      for (uint32_t j = 0; j < parts.Length(); j++) {
        Napi::Value p = parts.Get(j);
        if (!p.IsBuffer()) throw Napi::TypeError::New(env, "compressChunks: chunk " + std::to_string(i) + " has a part that is not a Buffer");
        auto b = p.As<Napi::Buffer<uint8_t>>();
        chunks_[i].parts.push_back({b.Data(), b.Length()});
        chunks_[i].length += b.Length();
      }
      bound += ZSTD_compressBound(chunks_[i].length);
    }
    if (bound > capacity_) {
      throw Napi::RangeError::New(env, "compressChunks: output of " + std::to_string(capacity_) + " bytes is below the bound " + std::to_string(bound));
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    ThreadState& state = State();
    if (state.ctx == nullptr || state.md == nullptr) return SetError("compressChunks: out of memory");
    digests_.resize(chunks_.size() * kDigestSize);
    sizes_.assign(chunks_.size(), 0);
    for (size_t i = 0; i < chunks_.size(); i++) {
      const Chunk& chunk = chunks_[i];
      Digest digest;
      unsigned int digestLength = 0;
      if (EVP_DigestInit_ex(state.md, EVP_sha256(), nullptr) != 1) return SetError("compressChunks: sha256 init failed");
      for (const Part& p : chunk.parts) EVP_DigestUpdate(state.md, p.data, p.length);
      if (EVP_DigestFinal_ex(state.md, digest.data(), &digestLength) != 1) return SetError("compressChunks: sha256 failed");
      std::memcpy(&digests_[i * kDigestSize], digest.data(), kDigestSize);
      if (known_->Contains(digest)) continue;  // size 0: stored already, no frame
      const uint8_t* data;
      if (chunk.parts.size() == 1) {
        data = chunk.parts[0].data;
      } else {
        state.joined.resize(chunk.length);
        size_t at = 0;
        for (const Part& p : chunk.parts) {
          if (p.length > 0) std::memcpy(state.joined.data() + at, p.data, p.length);
          at += p.length;
        }
        data = state.joined.data();
      }
      size_t n = ZSTD_compressCCtx(state.ctx, output_ + used_, capacity_ - used_, data, chunk.length, level_);
      if (ZSTD_isError(n)) return SetError(std::string("compressChunks: zstd: ") + ZSTD_getErrorName(n));
      sizes_[i] = static_cast<uint32_t>(n);
      used_ += n;
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    auto sizes = Napi::Uint32Array::New(env, sizes_.size());
    for (size_t i = 0; i < sizes_.size(); i++) sizes[i] = sizes_[i];
    Napi::Object result = Napi::Object::New(env);
    result.Set("sizes", sizes);
    result.Set("digests", Napi::Buffer<uint8_t>::Copy(env, digests_.data(), digests_.size()));
    deferred_.Resolve(result);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  // The chunks, the output and the set stay alive (and unmoved) while the pool uses them.
  Napi::ObjectReference keepChunks_;
  Napi::ObjectReference keepOutput_;
  Napi::ObjectReference keepKnown_;
  int level_;
  DigestSet* known_;
  std::vector<Chunk> chunks_;
  uint8_t* output_ = nullptr;
  size_t capacity_ = 0;
  size_t used_ = 0;
  std::vector<uint8_t> digests_;
  std::vector<uint32_t> sizes_;
};

Napi::FunctionReference* digestSetClass = nullptr;

Napi::Value CompressChunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsArray() || !info[2].IsBuffer() || !info[3].IsObject() ||
      !info[3].As<Napi::Object>().InstanceOf(digestSetClass->Value())) {
    throw Napi::TypeError::New(env, "compressChunks(level, chunks: Buffer[][], output: Buffer, known: DigestSet)");
  }
  int level = info[0].As<Napi::Number>().Int32Value();
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
    throw Napi::RangeError::New(env, "compressChunks: zstd level " + std::to_string(level) + " is out of range");
  }
  auto knownObject = info[3].As<Napi::Object>();
  auto* worker = new CompressChunksWorker(env, level, info[1].As<Napi::Array>(), info[2].As<Napi::Buffer<uint8_t>>(),
                                          DigestSet::Unwrap(knownObject), knownObject);
  worker->Queue();
  return worker->Promise();
}

}  // namespace

void InitChunkCompress(Napi::Env env, Napi::Object exports) {
  Napi::Function cls = DigestSet::Define(env);
  digestSetClass = new Napi::FunctionReference(Napi::Persistent(cls));
  exports.Set("DigestSet", cls);
  exports.Set("compressChunks", Napi::Function::New(env, CompressChunks));
  exports.Set("zstdVersion", Napi::String::New(env, ZSTD_versionString()));
}
