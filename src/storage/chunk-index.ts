// The node-wide chunk index: which cache files hold a chunk of a given SHA-256, and where. A miss in
// one blob for a chunk another blob holds is copied from there instead of fetched. The index is a
// hint, never trusted: every copy is checked against the destination's own chunk table.
import type { ChunkEntry } from '../blob/chunk-table';

/** A present chunk in a blob's cache file. */
export interface ChunkPlace {
  /** The blob's digest (sha256:...). */
  blob: string;
  /** The chunk's offset in the blob's uncompressed space, which is its offset in the cache file. */
  offset: number;
}

export interface LocalCopyStats {
  /** Chunks written from another cache file of the node instead of fetched. */
  chunks: number;
  /** Their uncompressed bytes. */
  bytes: number;
  /** Compressed bytes they would have taken from the registry. */
  savedBytes: number;
  /** Copies whose source no longer held the chunk (then tried elsewhere, or fetched). */
  staleSources: number;
}

export class ChunkIndex {
  /** Digest (hex) -> blob digest -> offset of that chunk in the blob. */
  private readonly byDigest = new Map<string, Map<string, number>>();
  /** Blob digest -> offset -> digest (hex): what to drop when a blob or a chunk goes. */
  private readonly byBlob = new Map<string, Map<number, string>>();
  readonly stats: LocalCopyStats = { chunks: 0, bytes: 0, savedBytes: 0, staleSources: 0 };

  /** Chunks known present, over every blob. */
  get size(): number {
    let n = 0;
    for (const chunks of this.byBlob.values()) n += chunks.size;
    return n;
  }

  add(blob: string, chunk: ChunkEntry): void {
    const key = chunk.digest.toString('hex');
    let places = this.byDigest.get(key);
    if (!places) this.byDigest.set(key, (places = new Map()));
    // A blob holds a digest once (conversion dedups within an image): the first place is kept.
    if (!places.has(blob)) places.set(blob, chunk.uncompressedOffset);
    let chunks = this.byBlob.get(blob);
    if (!chunks) this.byBlob.set(blob, (chunks = new Map()));
    chunks.set(chunk.uncompressedOffset, key);
  }

  /** The chunk at `offset` of `blob` is gone (evicted, or found not to hold its bytes). */
  drop(blob: string, offset: number): void {
    const chunks = this.byBlob.get(blob);
    const key = chunks?.get(offset);
    if (key === undefined) return;
    chunks?.delete(offset);
    if (chunks?.size === 0) this.byBlob.delete(blob);
    const places = this.byDigest.get(key);
    if (places?.get(blob) !== offset) return;
    places.delete(blob);
    if (places.size === 0) this.byDigest.delete(key);
  }

  /** Every chunk of `blob` is gone (its cache file removed, emptied, or opened afresh). */
  dropBlob(blob: string): void {
    for (const offset of [...(this.byBlob.get(blob)?.keys() ?? [])]) this.drop(blob, offset);
  }

  /** Where chunks of `digest` are present, other than in `except`. */
  places(digest: Buffer, except: string): ChunkPlace[] {
    const places = this.byDigest.get(digest.toString('hex'));
    if (!places) return [];
    return [...places].filter(([blob]) => blob !== except).map(([blob, offset]) => ({ blob, offset }));
  }

  /** `chunk` was written from another cache file instead of fetched. */
  countCopy(chunk: ChunkEntry): void {
    this.stats.chunks++;
    this.stats.bytes += chunk.uncompressedSize;
    this.stats.savedBytes += chunk.compressedSize;
  }
}
