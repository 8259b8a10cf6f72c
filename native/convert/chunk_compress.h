#pragma once
#include <napi.h>

// compressChunks(level, chunks, output, known): on the thread pool, each chunk's SHA-256 and, unless
// `known` has it, its own zstd frame, back to back in output. DigestSet: the digests already stored.
void InitChunkCompress(Napi::Env env, Napi::Object exports);
