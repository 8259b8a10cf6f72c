// The fake blob the unit tier reads through: what it serves must be a blob the daemon's own code
// accepts, and its faults must be the ones asked for.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { loadBlobIndex, MAX_TABLE_BYTES } from '../../src/blob/blob-index';
import { ENTRY_SIZE, TRAILER_SIZE } from '../../src/blob/chunk-table';
import { decodeChunk, makeFakeBlob, mirrored, plainChunks } from '../lib/fake-blob';

describe('fake blob', () => {
  it('serves a blob whose chunk table loadBlobIndex verifies and whose chunks decode to the content', async () => {
    const blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 5 * (16 << 10) + 7 });
    const r = blob.reader();
    const index = await loadBlobIndex(r.read, blob.bytes.length, 'fake', blob.expectedTable);
    assert.deepEqual({ ...index, chunks: plainChunks(index.chunks) }, blob.index);
    assert.equal(blob.chunks.length, 6);
    const decoded: Buffer[] = [];
    for (const c of blob.chunks) {
      const data = await decodeChunk(c, await r.read(c.compressedOffset, c.compressedSize));
      assert.ok(data.equals(blob.chunkData(c)));
      decoded.push(data);
    }
    assert.ok(Buffer.concat(decoded).equals(blob.content));
    assert.equal(r.requests.length, 7);
    assert.equal(r.bytes, blob.bytes.length);
  });

  it('injects the faults asked for, in order, then serves the blob again', async () => {
    const blob = await makeFakeBlob({ chunkSize: 4096, size: 3 * 4096 });
    const r = blob.reader().inject({ kind: 'error' }).inject({ kind: 'corrupt' }).inject({ kind: 'shifted', by: 3 });
    const right = blob.bytes.subarray(10, 110);
    await assert.rejects(r.read(10, 100), /injected failure of bytes 10-109/);
    const corrupt = await r.read(10, 100);
    assert.equal(corrupt.length, 100);
    assert.ok(!corrupt.equals(right));
    assert.ok((await r.read(10, 100)).equals(blob.bytes.subarray(13, 113)));
    assert.ok((await r.read(10, 100)).equals(right));
  });

  it('holds requests until released, and a mirrored reader moves past a source that fails verification', async () => {
    const blob = await makeFakeBlob({ chunkSize: 4096, size: 4096 });
    const liar = blob.reader().inject({ kind: 'corrupt' }, Infinity);
    const good = blob.reader();
    const release = good.hold();
    const read = mirrored(liar.read, good.read);
    const pending = read(0, 64, async (d) => (d.equals(blob.bytes.subarray(0, 64)) ? null : new Error('mismatch')));
    await good.started(1);
    assert.equal(good.active, 1);
    release();
    assert.ok((await pending).equals(blob.bytes.subarray(0, 64)));
    assert.equal(liar.requests.length, 1);
  });
});

describe('loadBlobIndex bounds', () => {
  it('refuses a chunk table the manifest or trailer makes larger than MAX_TABLE_BYTES, reading nothing of it', async () => {
    const blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 3 * (16 << 10) });
    const r = blob.reader();
    const table = (Math.floor(MAX_TABLE_BYTES / ENTRY_SIZE) + 1) * ENTRY_SIZE; // whole entries, past the bound
    await assert.rejects(
      loadBlobIndex(r.read, 1000 + table + TRAILER_SIZE, 'hostile', {
        offset: 1000,
        digest: blob.expectedTable.digest,
      }),
      /hostile: chunk table of \d+ bytes is over the bound/,
    );
    assert.equal(r.requests.length, 0, 'nothing fetched');
  });
});
