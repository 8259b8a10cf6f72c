// A converted blob turned back into its uncompressed address space: a sparse file of the blob's
// uncompressed size with every chunk at its offset, each verified. What a fully warmed cache file holds.
import fs from 'node:fs';
import { loadBlobIndex } from './blob-index';
import { decodeChunksInto } from './chunk-codec';

export async function materializeBlob(
  compressedPath: string,
  outPath: string,
): Promise<{ uncompressedSize: number; chunks: number }> {
  const fd = fs.openSync(compressedPath, 'r');
  const out = fs.openSync(outPath, 'w');
  try {
    const read = async (offset: number, length: number) => {
      const buf = Buffer.alloc(length);
      const n = fs.readSync(fd, buf, 0, length, offset);
      if (n !== length) throw new Error(`${compressedPath}: short read at ${offset}`);
      return buf;
    };
    const { trailer, chunks } = await loadBlobIndex(read, fs.fstatSync(fd).size, compressedPath);
    fs.ftruncateSync(out, trailer.uncompressedSize);
    for (const c of chunks) {
      const [fault] = await decodeChunksInto(
        out,
        await read(c.compressedOffset, c.compressedSize),
        c.compressedOffset,
        [c],
        compressedPath,
      );
      if (fault) throw fault;
    }
    return { uncompressedSize: trailer.uncompressedSize, chunks: chunks.length };
  } finally {
    fs.closeSync(fd);
    fs.closeSync(out);
  }
}
