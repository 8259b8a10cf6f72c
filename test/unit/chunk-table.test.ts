// The chunk table codec: what encodeTable writes, decodeTable reads back, in place and checked.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chunkIndexRange, decodeTable, encodeTable, type ChunkEntry } from '../../src/blob/chunk-table';
import { plainChunks } from '../lib/fake-blob';

const entries: ChunkEntry[] = [
  {
    uncompressedOffset: 0,
    uncompressedSize: 8192,
    compressedOffset: 0,
    compressedSize: 100,
    digest: Buffer.alloc(32, 1),
  },
  {
    uncompressedOffset: 2 ** 40,
    uncompressedSize: 4096,
    compressedOffset: 2 ** 33 + 5,
    compressedSize: 7,
    digest: Buffer.alloc(32, 2),
  },
];

describe('chunk table', () => {
  it('reads back what was written, offsets beyond 2^32 included', () => {
    const table = decodeTable(encodeTable(entries), 't');
    assert.deepEqual(plainChunks(table), entries);
    assert.deepEqual(chunkIndexRange(table, 4096, 2 ** 40 + 1), [0, 2]);
    assert.deepEqual(JSON.parse(JSON.stringify(table[1])).compressedOffset, 2 ** 33 + 5);
  });

  it('keeps its own copy of the bytes it was given', () => {
    const bytes = encodeTable(entries);
    const table = decodeTable(bytes, 't');
    bytes.fill(0xff);
    assert.deepEqual(plainChunks(table), entries);
  });

  it('rejects overlapping chunks and offsets beyond 2^53', () => {
    const overlap = [entries[0], { ...entries[0], uncompressedOffset: 4096, compressedOffset: 200 }];
    assert.throws(() => decodeTable(encodeTable(overlap), 't'), /t: chunk 1 overlaps the one before/);
    const huge = encodeTable([entries[0]]);
    huge.writeUInt32LE(0xffffffff, 4);
    assert.throws(() => decodeTable(huge, 't'), /t: chunk 0 has an offset beyond 2\^53/);
  });
});
