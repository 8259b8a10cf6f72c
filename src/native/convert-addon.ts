// Typed face of the convert addon (native/convert/): batch chunk compression, gunzip and un-zstd on the
// thread pool. A separate addon so that the daemon's nodes need neither ISA-L nor this code.
import { addonPath, loadAddon } from './addon-path';

/**
 * Streaming gunzip or un-zstd, zlib-like: the caller feeds input and hands in each output buffer (so
 * it can reuse them).
 */
export interface StreamInflater {
  /** The next input, once `inflate` said it needs input; `last` marks the end (a stream cut short then fails). */
  feed(input: Buffer[], last: boolean): void;
  /**
   * On the thread pool, one call at a time: fills `output` until it is full or the input is used up.
   * The stream is over when the last input was fed and `produced` is below the output's size with no
   * input needed.
   */
  inflate(output: Buffer): Promise<{ produced: number; needsInput: boolean }>;
}

/** Digests of chunks already stored; the pool skips compressing them. Safe to share between threads. */
export interface DigestSet {
  /** Adds digests, 32 bytes each. */
  add(digests: Buffer): void;
  has(digest: Buffer): boolean;
}

export interface CompressedChunks {
  /** Each chunk's frame size in the output, in order; 0 for a chunk `known` has (no frame). */
  sizes: Uint32Array;
  /** Each chunk's SHA-256, 32 bytes each, in order. */
  digests: Buffer;
}

interface ConvertAddon {
  /**
   * On the thread pool: each chunk (given as its pieces) hashed and, unless `known` has it, compressed
   * to its own zstd frame, the frames back to back in `output` (at least `compressBound` of the batch).
   */
  compressChunks(level: number, chunks: Buffer[][], output: Buffer, known: DigestSet): Promise<CompressedChunks>;
  DigestSet: new () => DigestSet;
  /** For a batch job that streams through buffers: freed memory stays in the process, and the heap grows ahead onto huge pages. */
  prepareHeap(): void;
  zstdVersion: string;
  GzipInflater: new () => StreamInflater;
  ZstdInflater: new () => StreamInflater;
}

let loaded: ConvertAddon | undefined;

export function convertAddon(): ConvertAddon {
  if (!loaded) {
    const file = addonPath('erofs_ondemand_convert');
    try {
      loaded = loadAddon<ConvertAddon>('erofs_ondemand_convert');
    } catch (err) {
      throw new Error(
        `cannot load ${file} (it links libzstd1 and libisal2: apt-get install libzstd1 libisal2): ${(err as Error).message}`,
      );
    }
  }
  return loaded;
}

/** An upper bound of the zstd frames of `count` chunks of `bytes` in all (from ZSTD_COMPRESSBOUND). */
export function compressBound(bytes: number, count: number): number {
  return bytes + Math.ceil(bytes / 256) + 64 * count;
}
