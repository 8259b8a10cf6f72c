// decodeChunksInto: the one place fetched bytes become cached chunks. A chunk that fails any check
// is reported and never written, whatever the others in the same range do.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ChunkVerificationError, decodeChunksInto } from '../../src/blob/chunk-codec';
import type { ChunkEntry } from '../../src/blob/chunk-table';
import { makeFakeBlob } from '../lib/fake-blob';

function tempFile(): { fd: number; read(c: ChunkEntry): Buffer; close(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-codec-'));
  const fd = fs.openSync(path.join(dir, 'out'), 'w+');
  fs.rmSync(dir, { recursive: true, force: true });
  return {
    fd,
    read: (c) => {
      const buf = Buffer.alloc(c.uncompressedSize);
      fs.readSync(fd, buf, 0, buf.length, c.uncompressedOffset);
      return buf;
    },
    close: () => fs.closeSync(fd),
  };
}

describe('decodeChunksInto', () => {
  it('writes each verified chunk at its offset and refuses each faulty one, writing nothing of it', async () => {
    const blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 6 * (16 << 10) });
    const [a, b, c, d, e] = blob.chunks;
    const start = a.compressedOffset;
    const bytes = blob.bytes.subarray(start, e.compressedOffset + e.compressedSize);
    const wrongDigest = { ...b, digest: Buffer.alloc(32, 7) };
    const wrongSize = { ...c, uncompressedSize: c.uncompressedSize - 4096 };
    const outside = { ...d, compressedOffset: start + bytes.length - 10 };
    const out = tempFile();
    try {
      const faults = await decodeChunksInto(out.fd, bytes, start, [a, wrongDigest, wrongSize, outside, e], 'blob x');
      assert.equal(faults[0], null);
      assert.match(String(faults[1]), /blob x: chunk at \d+: sha256 [0-9a-f]{64} does not match 0707/);
      assert.match(String(faults[2]), /blob x: chunk at \d+: zstd: /);
      assert.match(String(faults[3]), /blob x: chunk at \d+: compressed bytes out of the fetched range/);
      assert.equal(faults[4], null);
      assert.ok(out.read(a).equals(blob.chunkData(a)));
      assert.ok(out.read(e).equals(blob.chunkData(e)));
      for (const bad of [b, c, d])
        assert.ok(out.read(bad).equals(Buffer.alloc(bad.uncompressedSize)), 'nothing written');
    } finally {
      out.close();
    }
  });

  it('refuses a frame that decodes to fewer bytes than the table says', async () => {
    const blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 2 * (16 << 10) });
    const c = blob.chunks[0];
    const out = tempFile();
    try {
      const [fault] = await decodeChunksInto(
        out.fd,
        blob.bytes.subarray(c.compressedOffset, c.compressedOffset + c.compressedSize),
        c.compressedOffset,
        [{ ...c, uncompressedSize: c.uncompressedSize + 4096 }],
        'blob y',
      );
      assert.match(String(fault), /blob y: chunk at 0: 16384 bytes after decompression, expected 20480/);
    } finally {
      out.close();
    }
  });

  it('tells a failed write from a chunk that is not what the table says', async () => {
    const blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 2 * (16 << 10) });
    const [a] = blob.chunks;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-codec-'));
    const file = path.join(dir, 'out');
    fs.writeFileSync(file, '');
    const readOnly = fs.openSync(file, 'r');
    try {
      const bytes = blob.bytes.subarray(a.compressedOffset, a.compressedOffset + a.compressedSize);
      const [fault] = await decodeChunksInto(readOnly, bytes, a.compressedOffset, [a], 'blob z');
      assert.match(String(fault), /blob z: chunk at 0: writing the cache file: /);
      assert.ok(fault instanceof Error && !(fault instanceof ChunkVerificationError), 'not a fault of the bytes');
      const [bad] = await decodeChunksInto(
        readOnly,
        bytes,
        a.compressedOffset,
        [{ ...a, digest: Buffer.alloc(32) }],
        'z',
      );
      assert.ok(bad instanceof ChunkVerificationError, 'a wrong digest is checked before any write');
    } finally {
      fs.closeSync(readOnly);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
