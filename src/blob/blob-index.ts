// Loads a data blob's chunk table through any byte-range reader (a local file, HTTP Range GETs).
import { createHash } from 'node:crypto';
import type { BytesSoFar } from '../oci/byte-stream';
import type { Priority } from '../oci/retry';
import { decodeTable, decodeTrailer, ENTRY_SIZE, TRAILER_SIZE, type BlobTrailer, type ChunkEntry } from './chunk-table';

/**
 * Reads `length` bytes at `offset`. A reader with more than one source (a registry's mirrors) calls
 * `verify` with each source's bytes and moves on to the next source when it returns an error; it
 * returns the last bytes it got, checked or not, so callers check what they are given. `priority`
 * (default 'demand') says how hard a transient failure is retried: a prefetch gives up sooner.
 * `onBytes`, when the reader can, is told the bytes received so far as they come in (a retry or
 * another source starts again from none).
 */
export type RangeReader = (
  offset: number,
  length: number,
  verify?: (data: Buffer) => Promise<Error | null>,
  priority?: Priority,
  onBytes?: BytesSoFar,
) => Promise<Buffer>;

export interface BlobIndex {
  trailer: BlobTrailer;
  chunks: ChunkEntry[];
}

/** Where the chunk table starts and the SHA-256 of the blob's bytes from there to its end (table and trailer). */
export interface ExpectedTable {
  offset: number;
  digest: string;
}

export function tableDigest(tableAndTrailer: Buffer): string {
  return `sha256:${createHash('sha256').update(tableAndTrailer).digest('hex')}`;
}

/**
 * The chunk table and trailer. With `expected` (from the image manifest, itself verified) they are
 * read in one request and checked against its digest; without it they are taken as read.
 */
export async function loadBlobIndex(
  read: RangeReader,
  blobSize: number,
  what: string,
  expected?: ExpectedTable,
): Promise<BlobIndex> {
  if (blobSize < TRAILER_SIZE) throw new Error(`${what}: blob of ${blobSize} bytes is too small to hold a chunk table`);
  if (expected) return loadVerified(read, blobSize, what, expected);
  const trailer = decodeTrailer(await read(blobSize - TRAILER_SIZE, TRAILER_SIZE), what);
  const tableSize = trailer.chunkCount * ENTRY_SIZE;
  checkTableSize(tableSize, what);
  if (trailer.tableOffset + tableSize + TRAILER_SIZE !== blobSize)
    throw new Error(`${what}: chunk table does not end where the trailer starts`);
  return checked(trailer, decodeTable(await read(trailer.tableOffset, tableSize), what), what);
}

/**
 * The most bytes a chunk table may take: more chunks than any image holds (over a million), so that
 * what a manifest or trailer claims cannot make a mount read and hold an unbounded table.
 */
export const MAX_TABLE_BYTES = 64 << 20;

function checkTableSize(bytes: number, what: string): void {
  if (bytes > MAX_TABLE_BYTES)
    throw new Error(`${what}: chunk table of ${bytes} bytes is over the bound of ${MAX_TABLE_BYTES} bytes`);
}

async function loadVerified(
  read: RangeReader,
  blobSize: number,
  what: string,
  expected: ExpectedTable,
): Promise<BlobIndex> {
  const { offset, digest } = expected;
  if (
    !Number.isSafeInteger(offset) ||
    offset < 0 ||
    offset + TRAILER_SIZE > blobSize ||
    (blobSize - offset - TRAILER_SIZE) % ENTRY_SIZE !== 0
  ) {
    throw new Error(`${what}: chunk table offset ${offset} does not fit a blob of ${blobSize} bytes`);
  }
  checkTableSize(blobSize - offset - TRAILER_SIZE, what);
  const mismatch = (data: Buffer): Error | null => {
    const got = tableDigest(data);
    return got === digest ? null : new Error(`${what}: chunk table digest mismatch: expected ${digest}, got ${got}`);
  };
  const data = await read(offset, blobSize - offset, async (d) => mismatch(d));
  const bad = mismatch(data);
  if (bad) throw bad;
  const trailer = decodeTrailer(data.subarray(data.length - TRAILER_SIZE), what);
  if (trailer.tableOffset !== offset)
    throw new Error(`${what}: the trailer puts the chunk table at ${trailer.tableOffset}, the manifest at ${offset}`);
  if (trailer.chunkCount * ENTRY_SIZE !== data.length - TRAILER_SIZE)
    throw new Error(`${what}: chunk table does not end where the trailer starts`);
  return checked(trailer, decodeTable(data.subarray(0, data.length - TRAILER_SIZE), what), what);
}

function checked(trailer: BlobTrailer, chunks: ChunkEntry[], what: string): BlobIndex {
  const last = chunks[chunks.length - 1];
  if (last && last.compressedOffset + last.compressedSize > trailer.tableOffset)
    throw new Error(`${what}: chunk data overlaps the chunk table`);
  if (last && last.uncompressedOffset + last.uncompressedSize > trailer.uncompressedSize)
    throw new Error(`${what}: chunk beyond the uncompressed size`);
  return { trailer, chunks };
}
