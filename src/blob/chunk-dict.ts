import type { ChunkLocation } from '../tree/node';

/** SHA-256 of a chunk's uncompressed bytes -> where it is stored first. Shared by all blobs of an image. */
export class ChunkDictionary {
  private readonly byDigest = new Map<string, ChunkLocation>();

  get(digest: Buffer): ChunkLocation | undefined {
    return this.byDigest.get(digest.toString('hex'));
  }

  set(digest: Buffer, location: ChunkLocation): void {
    this.byDigest.set(digest.toString('hex'), location);
  }

  /** Each stored location once: callers may renumber devices in place. */
  locations(): IterableIterator<ChunkLocation> {
    return this.byDigest.values();
  }
}
