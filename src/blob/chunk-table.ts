// The per-blob chunk table: how a reader turns a byte range of a blob's uncompressed address space
// into Range GETs of its compressed bytes. Stored after the compressed chunks, found by a trailer
// in the last 64 bytes of the blob (layout in docs/FORMAT.md).

export interface ChunkEntry {
  /** Offset in the uncompressed address space (4 KiB aligned): blkaddr * 4096. */
  uncompressedOffset: number;
  uncompressedSize: number;
  compressedOffset: number;
  compressedSize: number;
  /** SHA-256 of the uncompressed bytes. */
  digest: Buffer;
}

export interface BlobTrailer {
  chunkSize: number;
  tableOffset: number;
  chunkCount: number;
  uncompressedSize: number;
}

export const ENTRY_SIZE = 56;
export const TRAILER_SIZE = 64;
const MAGIC = Buffer.from('EOCHUNKS', 'latin1');
const VERSION = 1;

export function encodeTable(entries: readonly ChunkEntry[]): Buffer {
  const out = Buffer.alloc(entries.length * ENTRY_SIZE);
  entries.forEach((e, i) => {
    const at = i * ENTRY_SIZE;
    out.writeBigUInt64LE(BigInt(e.uncompressedOffset), at);
    out.writeUInt32LE(e.uncompressedSize, at + 8);
    out.writeBigUInt64LE(BigInt(e.compressedOffset), at + 12);
    out.writeUInt32LE(e.compressedSize, at + 20);
    e.digest.copy(out, at + 24);
  });
  return out;
}

export function decodeTable(data: Buffer, what: string): ChunkEntry[] {
  if (data.length % ENTRY_SIZE !== 0)
    throw new Error(`${what}: chunk table of ${data.length} bytes is not a multiple of ${ENTRY_SIZE}`);
  const out: ChunkEntry[] = [];
  for (let at = 0; at < data.length; at += ENTRY_SIZE) {
    const e: ChunkEntry = {
      uncompressedOffset: Number(data.readBigUInt64LE(at)),
      uncompressedSize: data.readUInt32LE(at + 8),
      compressedOffset: Number(data.readBigUInt64LE(at + 12)),
      compressedSize: data.readUInt32LE(at + 20),
      digest: Buffer.from(data.subarray(at + 24, at + 56)),
    };
    const prev = out[out.length - 1];
    if (e.uncompressedOffset % 4096 !== 0) throw new Error(`${what}: chunk ${out.length} is not 4 KiB aligned`);
    if (prev && e.uncompressedOffset < prev.uncompressedOffset + prev.uncompressedSize)
      throw new Error(`${what}: chunk ${out.length} overlaps the one before`);
    if (prev && e.compressedOffset < prev.compressedOffset + prev.compressedSize)
      throw new Error(`${what}: compressed chunk ${out.length} overlaps the one before`);
    out.push(e);
  }
  return out;
}

export function encodeTrailer(t: BlobTrailer): Buffer {
  const out = Buffer.alloc(TRAILER_SIZE);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(t.chunkSize, 12);
  out.writeBigUInt64LE(BigInt(t.tableOffset), 16);
  out.writeBigUInt64LE(BigInt(t.chunkCount), 24);
  out.writeBigUInt64LE(BigInt(t.uncompressedSize), 32);
  return out;
}

export function decodeTrailer(data: Buffer, what: string): BlobTrailer {
  if (data.length !== TRAILER_SIZE || !data.subarray(0, 8).equals(MAGIC))
    throw new Error(`${what}: no chunk table trailer (not an erofs-ondemand blob)`);
  const version = data.readUInt32LE(8);
  if (version !== VERSION) throw new Error(`${what}: chunk table version ${version} is not supported`);
  return {
    chunkSize: data.readUInt32LE(12),
    tableOffset: Number(data.readBigUInt64LE(16)),
    chunkCount: Number(data.readBigUInt64LE(24)),
    uncompressedSize: Number(data.readBigUInt64LE(32)),
  };
}

/** Indexes [first, last) of the chunks overlapping [start, end) of the uncompressed space (binary search). */
export function chunkIndexRange(table: readonly ChunkEntry[], start: number, end: number): [number, number] {
  let lo = 0;
  let hi = table.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const e = table[mid];
    if (e.uncompressedOffset + e.uncompressedSize <= start) lo = mid + 1;
    else hi = mid;
  }
  let last = lo;
  while (last < table.length && table[last].uncompressedOffset < end) last++;
  return [lo, last];
}
