// One source layer -> entries applied to the merged tree + its data blob (new chunks only).
import type { CompressedBlobWriter } from '../blob/compressed-blob-writer';
import { InputError, type ErrorContext } from '../errors';
import { TarReader } from '../tar/reader';
import { displayPath, type ChunkLocation } from '../tree/node';
import { gunzip, unzstd, type ReleasingStream } from './inflate-stream';
import type { MergedTree } from './layer-merge';

/** Bytes of a layer's stream that a run of hole chunks may leave held behind it. */
const HELD_BEHIND_HOLES = 64 << 20;

export type LayerCompression = 'gzip' | 'zstd' | 'none';

export interface LayerStats {
  entries: number;
  /** Bytes of the uncompressed tar read (headers, padding and file data). */
  tarBytes: number;
  fileBytes: number;
  dataChunks: number;
  storedChunks: number;
  holeChunks: number;
}

export function compressionOf(mediaType: string): LayerCompression | null {
  if (/\.tar\+gzip$|\.tar\.gzip$|rootfs\.diff\.tar\.gzip$/.test(mediaType)) return 'gzip';
  if (/\.tar\+zstd$/.test(mediaType)) return 'zstd';
  if (/\.tar$/.test(mediaType)) return 'none';
  return null;
}

/** A layer's tar bytes; where `release` is there, pieces the reader is done with are reused. */
export type LayerTar = AsyncIterable<Buffer> & Partial<Pick<ReleasingStream, 'release'>>;

export function decompressLayer(source: AsyncIterable<Buffer>, compression: LayerCompression): LayerTar {
  if (compression === 'gzip') return gunzip(source);
  if (compression === 'zstd') return unzstd(source);
  return source;
}

/**
 * Reads a (decompressed) layer tar to the end and applies it. The raw stream must be consumed to its
 * end so that the caller's digest check sees every byte, so trailing data after the archive is drained.
 */
export async function convertLayer(
  tar: LayerTar,
  tree: MergedTree,
  layer: number,
  blob: CompressedBlobWriter,
  chunkSize: number,
  ctx: ErrorContext,
  signal?: AbortSignal,
): Promise<LayerStats> {
  const stats: LayerStats = { entries: 0, tarBytes: 0, fileBytes: 0, dataChunks: 0, storedChunks: 0, holeChunks: 0 };
  const iterator = tar[Symbol.asyncIterator]();
  // The tar reader copies what it keeps; chunk bodies are held until their batch is settled.
  const release = tar.release ? () => tar.release!(Math.min(reader.bodyOffset, blob.unsettledFrom)) : () => undefined;
  const drainable: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => iterator };
  const reader = new TarReader(drainable);
  const zeros = Buffer.alloc(chunkSize);
  let current: Buffer | null = null; // the entry being applied: named in errors
  const isZero = (parts: Buffer[]) => parts.every((p) => p.equals(zeros.subarray(0, p.length)));
  const content = async (size: number): Promise<Array<ChunkLocation | null>> => {
    const chunks: Array<ChunkLocation | null> = [];
    for (let left = size; left > 0;) {
      // Checked here, not only per read: a few bytes of a bomb layer inflate to a long run of chunks.
      signal?.throwIfAborted();
      const at = reader.bodyOffset;
      const parts = await reader.readBody(Math.min(chunkSize, left));
      for (const p of parts) left -= p.length;
      if (isZero(parts)) {
        chunks.push(null);
        stats.holeChunks++;
        // Holes keep no bytes, but a batch of data chunks before them pins the stream from its start
        // until the batch is sent: sent on once holes have run far past it, so memory stays bounded.
        if (reader.bodyOffset - blob.unsettledFrom > HELD_BEHIND_HOLES) await blob.settle();
        release();
        continue;
      }
      chunks.push(null);
      await blob.add(parts, { chunks, index: chunks.length - 1 }, at);
      stats.dataChunks++;
      release();
    }
    stats.fileBytes += size;
    return chunks;
  };
  try {
    for (;;) {
      const entry = await reader.next();
      if (!entry) break;
      current = entry.name;
      stats.entries++;
      await tree.apply(entry, layer, (e) => content(e.size));
      release();
    }
    stats.tarBytes = reader.bodyOffset;
    // Drain: tar writers pad archives to a record size, and the digest covers those bytes too.
    for (;;) {
      const r = await iterator.next();
      if (r.done) break;
    }
  } catch (err) {
    throw InputError.wrap(err, {
      ...ctx,
      ...(current && !(err instanceof InputError && err.context.path) ? { entry: displayPath(current) } : {}),
    });
  }
  return stats;
}
