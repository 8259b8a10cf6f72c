// Turning fetched compressed bytes back into a chunk, verified: nothing unverified reaches a cache.
import { createHash } from 'node:crypto';
import { decompress } from '@mongodb-js/zstd';
import type { ChunkEntry } from './chunk-table';

export class ChunkVerificationError extends Error {}

export async function decodeChunk(entry: ChunkEntry, compressed: Buffer, what: string): Promise<Buffer> {
  if (compressed.length !== entry.compressedSize) {
    throw new ChunkVerificationError(
      `${what}: chunk at ${entry.uncompressedOffset}: got ${compressed.length} compressed bytes, expected ${entry.compressedSize}`,
    );
  }
  let data: Buffer;
  try {
    data = await decompress(compressed);
  } catch (err) {
    throw new ChunkVerificationError(`${what}: chunk at ${entry.uncompressedOffset}: zstd: ${(err as Error).message}`);
  }
  if (data.length !== entry.uncompressedSize) {
    throw new ChunkVerificationError(
      `${what}: chunk at ${entry.uncompressedOffset}: ${data.length} bytes after decompression, expected ${entry.uncompressedSize}`,
    );
  }
  const digest = createHash('sha256').update(data).digest();
  if (!digest.equals(entry.digest)) {
    throw new ChunkVerificationError(
      `${what}: chunk at ${entry.uncompressedOffset}: sha256 ${digest.toString('hex')} does not match ${entry.digest.toString('hex')}`,
    );
  }
  return data;
}
