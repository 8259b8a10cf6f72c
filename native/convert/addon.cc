// The convert addon: compression work of `convert`, kept out of the daemon's addon so that nodes
// serving images need neither ISA-L nor this code.
#include <malloc.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

#include <napi.h>
#include "chunk_compress.h"
#include "gzip_inflate.h"
#include "zstd_inflate.h"

namespace {

// A conversion streams a few hundred MB through buffers of 64 KiB to 1 MiB (socket reads, gunzip
// output, zstd frames) that are freed when the garbage collector gets to them. glibc would return
// each to the kernel (mmap above 128 KiB, trim above 128 KiB free), and every new one then costs a
// page fault per 4 KiB: about 7-10 us each on these VMs. Freed memory is kept in the process, and
// the heap is grown ahead once, into memory advised for transparent huge pages (THP "madvise" mode,
// the common default): one fault per 2 MiB instead of 512. Measured on minbase (medians of 9):
// glibc's own equivalent, GLIBC_TUNABLES=glibc.malloc.hugetlb=1, saved 0.26 CPU-s of 2.39.
constexpr size_t kHugePage = 2 << 20;
constexpr size_t kHeapAhead = 48 << 20;  // below M_MMAP_THRESHOLD, so it comes from the heap

void GrowHeapOntoHugePages() {
  // The block itself is advised, not what sbrk reports as grown: the heap may already hold free
  // memory that malloc hands out first, and where brk cannot grow glibc maps the arena's memory
  // elsewhere. Either way, freed, the block stays with the main arena for later buffers.
  void* block = malloc(kHeapAhead);
  if (block != nullptr) {
    auto from = (reinterpret_cast<uintptr_t>(block) + kHugePage - 1) & ~(kHugePage - 1);
    auto to = (reinterpret_cast<uintptr_t>(block) + kHeapAhead) & ~(kHugePage - 1);
    // Best effort: without THP the memory is simply used in 4 KiB pages.
    if (to > from) madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  }
  free(block);  // stays in the arena: below the trim threshold
}

Napi::Value PrepareHeap(const Napi::CallbackInfo& info) {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  GrowHeapOntoHugePages();
  return info.Env().Undefined();
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitChunkCompress(env, exports);
  InitGzipInflate(env, exports);
  InitZstdInflate(env, exports);
  exports.Set("prepareHeap", Napi::Function::New(env, PrepareHeap));
  return exports;
}

NODE_API_MODULE(erofs_ondemand_convert, Init)
