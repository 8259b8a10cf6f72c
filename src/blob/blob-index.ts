// Loads a data blob's chunk table through any byte-range reader (a local file, HTTP Range GETs).
import { decodeTable, decodeTrailer, ENTRY_SIZE, TRAILER_SIZE, type BlobTrailer, type ChunkEntry } from './chunk-table';

export type RangeReader = (offset: number, length: number) => Promise<Buffer>;

export interface BlobIndex {
  trailer: BlobTrailer;
  chunks: ChunkEntry[];
}

export async function loadBlobIndex(read: RangeReader, blobSize: number, what: string): Promise<BlobIndex> {
  if (blobSize < TRAILER_SIZE) throw new Error(`${what}: blob of ${blobSize} bytes is too small to hold a chunk table`);
  const trailer = decodeTrailer(await read(blobSize - TRAILER_SIZE, TRAILER_SIZE), what);
  const tableSize = trailer.chunkCount * ENTRY_SIZE;
  if (trailer.tableOffset + tableSize + TRAILER_SIZE !== blobSize) throw new Error(`${what}: chunk table does not end where the trailer starts`);
  const chunks = decodeTable(await read(trailer.tableOffset, tableSize), what);
  const last = chunks[chunks.length - 1];
  if (last && last.compressedOffset + last.compressedSize > trailer.tableOffset) throw new Error(`${what}: chunk data overlaps the chunk table`);
  if (last && last.uncompressedOffset + last.uncompressedSize > trailer.uncompressedSize) throw new Error(`${what}: chunk beyond the uncompressed size`);
  return { trailer, chunks };
}
