// Turning fetched compressed bytes back into chunks, verified: nothing unverified reaches a cache.
import { native } from '../native';
import type { ChunkEntry } from './chunk-table';

export class ChunkVerificationError extends Error {}

/** How the addon begins a fault of the cache file's write (native/chunk_decode.cc): not the chunk's. */
const WRITE_FAULT = 'writing the cache file: ';

/** Background decodes run one at a time: each holds a thread of the pool, which demand reads need too. */
let backgroundQueue: Promise<unknown> = Promise.resolve();

/**
 * Decompresses each chunk of `chunks` from `bytes` (compressed bytes from offset `start` of the blob),
 * checks its size and SHA-256 against the chunk table, and writes the chunks that pass to `fd` at their
 * uncompressed offsets; a chunk that fails is not written. One result per chunk: null when written,
 * a ChunkVerificationError for bytes that are not the chunk, another Error when the write failed.
 * `background`: at the lowest CPU priority, one at a time, so that a node's workload never waits for
 * a fetch nobody asked for. `direct`: `fd` takes only direct I/O (a cachefiles object's anonymous fd):
 * chunks, which start on block boundaries, are written zero-padded to whole pages.
 */
export function decodeChunksInto(
  fd: number,
  bytes: Buffer,
  start: number,
  chunks: readonly ChunkEntry[],
  what: string,
  opts: { background?: boolean; direct?: boolean } = {},
): Promise<Array<Error | null>> {
  const direct = opts.direct ?? false;
  if (!opts.background) return decode(fd, bytes, start, chunks, what, false, direct);
  const run = backgroundQueue.then(() => decode(fd, bytes, start, chunks, what, true, direct));
  backgroundQueue = run.catch(() => undefined);
  return run;
}

/**
 * The same for one chunk decoded already in another file (`source`, at `sourceOffset`: a cache file of
 * another blob holding a chunk of the same digest): read there, checked against `chunk`'s size and
 * SHA-256, and only then written to `fd`. A ChunkVerificationError when the source's bytes are not the
 * chunk (evicted, corrupt), another Error when the write failed.
 */
export async function copyChunkInto(
  source: number,
  sourceOffset: number,
  fd: number,
  chunk: ChunkEntry,
  what: string,
  opts: { background?: boolean; direct?: boolean } = {},
): Promise<Error | null> {
  const layout = new Float64Array([sourceOffset, 0, chunk.uncompressedSize, chunk.uncompressedOffset]);
  const copy = () =>
    native.copyChunks(source, fd, layout, chunk.digest, opts.background ?? false, opts.direct ?? false);
  const run = opts.background ? backgroundQueue.then(copy) : copy();
  if (opts.background) backgroundQueue = run.catch(() => undefined);
  return faultsOf(await run, [chunk], what)[0];
}

async function decode(
  fd: number,
  bytes: Buffer,
  start: number,
  chunks: readonly ChunkEntry[],
  what: string,
  background: boolean,
  direct: boolean,
): Promise<Array<Error | null>> {
  const layout = new Float64Array(chunks.length * 4);
  const digests = Buffer.alloc(chunks.length * 32);
  chunks.forEach((c, i) => {
    layout.set([c.compressedOffset - start, c.compressedSize, c.uncompressedSize, c.uncompressedOffset], i * 4);
    c.digest.copy(digests, i * 32);
  });
  return faultsOf(await native.decodeChunks(fd, bytes, layout, digests, background, direct), chunks, what);
}

function faultsOf(faults: Array<string | null>, chunks: readonly ChunkEntry[], what: string): Array<Error | null> {
  return faults.map((fault, i) => {
    if (fault === null) return null;
    const message = `${what}: chunk at ${chunks[i].uncompressedOffset}: ${fault}`;
    return fault.startsWith(WRITE_FAULT) ? new Error(message) : new ChunkVerificationError(message);
  });
}
