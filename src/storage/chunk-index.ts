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

/** A place packed in one number: blob number times this, plus the offset (below 2^40: 1 TiB). */
const BLOB_STRIDE = 2 ** 40;

/**
 * Kept compact: a node may hold hundreds of thousands of chunks, and the daemon's memory is bounded.
 * A digest is its 32 bytes as a one-byte string; a place is one number; a digest held by one blob
 * only (almost all) has no array.
 */
export class ChunkIndex {
  /** Digest (32 bytes, latin1) -> the places holding it, packed. */
  private readonly byDigest = new Map<string, number | number[]>();
  /** Blob number -> offset -> digest key: what to drop when a blob or a chunk goes. */
  private readonly byBlob = new Map<number, Map<number, string>>();
  private readonly blobNumbers = new Map<string, number>();
  private readonly blobDigests: string[] = [];
  readonly stats: LocalCopyStats = { chunks: 0, bytes: 0, savedBytes: 0, staleSources: 0 };

  /** Chunks known present, over every blob. */
  get size(): number {
    let n = 0;
    for (const chunks of this.byBlob.values()) n += chunks.size;
    return n;
  }

  private blobNumber(blob: string): number {
    let n = this.blobNumbers.get(blob);
    if (n === undefined) {
      n = this.blobDigests.push(blob) - 1;
      this.blobNumbers.set(blob, n);
    }
    return n;
  }

  add(blob: string, chunk: ChunkEntry): void {
    const key = chunk.digest.toString('latin1');
    const b = this.blobNumber(blob);
    const place = b * BLOB_STRIDE + chunk.uncompressedOffset;
    const had = this.byDigest.get(key);
    // A blob holds a digest once (conversion dedups within an image): the first place is kept.
    if (had === undefined) this.byDigest.set(key, place);
    else if (!placesOf(had).some((p) => Math.floor(p / BLOB_STRIDE) === b))
      this.byDigest.set(key, [...placesOf(had), place]);
    let chunks = this.byBlob.get(b);
    if (!chunks) this.byBlob.set(b, (chunks = new Map()));
    chunks.set(chunk.uncompressedOffset, key);
  }

  /** The chunk at `offset` of `blob` is gone (evicted, or found not to hold its bytes). */
  drop(blob: string, offset: number): void {
    const b = this.blobNumbers.get(blob);
    if (b === undefined) return;
    const chunks = this.byBlob.get(b);
    const key = chunks?.get(offset);
    if (key === undefined) return;
    chunks?.delete(offset);
    if (chunks?.size === 0) this.byBlob.delete(b);
    const had = this.byDigest.get(key);
    if (had === undefined) return;
    const left = placesOf(had).filter((p) => p !== b * BLOB_STRIDE + offset);
    if (left.length === 0) this.byDigest.delete(key);
    else this.byDigest.set(key, left.length === 1 ? left[0] : left);
  }

  /** Every chunk of `blob` is gone (its cache file removed, emptied, or opened afresh). */
  dropBlob(blob: string): void {
    const b = this.blobNumbers.get(blob);
    if (b === undefined) return;
    for (const offset of [...(this.byBlob.get(b)?.keys() ?? [])]) this.drop(blob, offset);
  }

  /** Where chunks of `digest` are present, other than in `except`. */
  places(digest: Buffer, except: string): ChunkPlace[] {
    const had = this.byDigest.get(digest.toString('latin1'));
    if (had === undefined) return [];
    return placesOf(had)
      .map((p) => ({ blob: this.blobDigests[Math.floor(p / BLOB_STRIDE)], offset: p % BLOB_STRIDE }))
      .filter((p) => p.blob !== except);
  }

  /** `chunk` was written from another cache file instead of fetched. */
  countCopy(chunk: ChunkEntry): void {
    this.stats.chunks++;
    this.stats.bytes += chunk.uncompressedSize;
    this.stats.savedBytes += chunk.compressedSize;
  }
}

function placesOf(had: number | number[]): number[] {
  return typeof had === 'number' ? [had] : had;
}
