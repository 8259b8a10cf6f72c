// The per-blob chunk table: how a reader turns a byte range of a blob's uncompressed address space
// into Range GETs of its compressed bytes. Stored after the compressed chunks, found by a trailer
// in the last 64 bytes of the blob (layout in docs/FORMAT.md).

export interface ChunkEntry {
  /** Offset in the uncompressed address space (4 KiB aligned): blkaddr * 4096. */
  readonly uncompressedOffset: number;
  readonly uncompressedSize: number;
  readonly compressedOffset: number;
  readonly compressedSize: number;
  /** SHA-256 of the uncompressed bytes. */
  readonly digest: Buffer;
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

/** A little-endian u64 that the table's bounds keep below 2^53, read without a BigInt. */
function readU64(data: Buffer, at: number): number {
  return data.readUInt32LE(at) + data.readUInt32LE(at + 4) * 2 ** 32;
}

/**
 * One chunk of a decoded table, read in place from the table's bytes: a mount holds a table of many
 * chunks as one buffer and one small object per chunk, not five fields and a digest buffer per chunk.
 */
class TableEntry implements ChunkEntry {
  readonly #table: Buffer;
  readonly #at: number;

  constructor(table: Buffer, at: number) {
    this.#table = table;
    this.#at = at;
  }

  get uncompressedOffset(): number {
    return readU64(this.#table, this.#at);
  }

  get uncompressedSize(): number {
    return this.#table.readUInt32LE(this.#at + 8);
  }

  get compressedOffset(): number {
    return readU64(this.#table, this.#at + 12);
  }

  get compressedSize(): number {
    return this.#table.readUInt32LE(this.#at + 20);
  }

  /** A view of the table's bytes: read-only by contract. */
  get digest(): Buffer {
    return this.#table.subarray(this.#at + 24, this.#at + ENTRY_SIZE);
  }

  toJSON(): object {
    const { uncompressedOffset, uncompressedSize, compressedOffset, compressedSize, digest } = this;
    return { uncompressedOffset, uncompressedSize, compressedOffset, compressedSize, digest };
  }
}

/** The entries of an encoded table, read in place from a copy of `data` (so a caller's larger buffer is not kept). */
export function decodeTable(data: Buffer, what: string): ChunkEntry[] {
  if (data.length % ENTRY_SIZE !== 0)
    throw new Error(`${what}: chunk table of ${data.length} bytes is not a multiple of ${ENTRY_SIZE}`);
  const table = Buffer.alloc(data.length);
  data.copy(table);
  const out: ChunkEntry[] = [];
  let prevEnd = 0;
  let prevCompressedEnd = 0;
  for (let at = 0; at < table.length; at += ENTRY_SIZE) {
    const i = out.length;
    const uncompressedOffset = readU64(table, at);
    const compressedOffset = readU64(table, at + 12);
    if (!Number.isSafeInteger(uncompressedOffset) || !Number.isSafeInteger(compressedOffset))
      throw new Error(`${what}: chunk ${i} has an offset beyond 2^53`);
    if (uncompressedOffset % 4096 !== 0) throw new Error(`${what}: chunk ${i} is not 4 KiB aligned`);
    if (i > 0 && uncompressedOffset < prevEnd) throw new Error(`${what}: chunk ${i} overlaps the one before`);
    if (i > 0 && compressedOffset < prevCompressedEnd)
      throw new Error(`${what}: compressed chunk ${i} overlaps the one before`);
    prevEnd = uncompressedOffset + table.readUInt32LE(at + 8);
    prevCompressedEnd = compressedOffset + table.readUInt32LE(at + 20);
    out.push(new TableEntry(table, at));
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
