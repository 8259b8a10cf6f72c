// The convert addon: compression work of `convert`, kept out of the daemon's addon so that nodes
// serving images need neither ISA-L nor this code.
#include <malloc.h>
#include <napi.h>
#include "chunk_compress.h"
#include "gzip_inflate.h"

namespace {

// A conversion streams a few hundred MB through buffers of about 1 MiB that are freed when the
// garbage collector gets to them. glibc would return each to the kernel (mmap above 128 KiB, trim
// above 128 KiB free), and every new one then costs a page fault per 4 KiB: about 10 us each on
// these VMs, 0.4 s of a conversion. Keeping freed memory in the process removes most of them.
Napi::Value KeepFreedMemory(const Napi::CallbackInfo& info) {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitChunkCompress(env, exports);
  InitGzipInflate(env, exports);
  exports.Set("keepFreedMemory", Napi::Function::New(env, KeepFreedMemory));
  return exports;
}

NODE_API_MODULE(erofs_ondemand_convert, Init)
