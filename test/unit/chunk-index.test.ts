// The node-wide chunk index (storage/chunk-index.ts, kept by BlobStore): a miss for a chunk another
// cache file holds is copied from there, checked against the destination's table, never fetched; a
// source evicted or corrupt is dropped and the chunk fetched; the index is rebuilt from the files.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ChunkVerificationError, copyChunkInto } from '../../src/blob/chunk-codec';
import { ImageMetadata } from '../../src/daemon/image-metadata';
import { native } from '../../src/native';
import type { BlobCache } from '../../src/storage/blob-cache';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { makeFakeBlob, plainChunks, type FakeBlob, type FakeRangeReader } from '../lib/fake-blob';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-chunk-index-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const CHUNK = 64 << 10;
let n = 0;

/** Blob A, and blob B: one new chunk, then A's content (so every chunk of A is in B at another offset). */
async function pair(): Promise<{ a: FakeBlob; b: FakeBlob }> {
  const a = await makeFakeBlob({ chunkSize: CHUNK, size: 6 * CHUNK + 1234 });
  const b = await makeFakeBlob({ chunkSize: CHUNK, content: Buffer.concat([randomBytes(CHUNK), a.content]) });
  return { a, b };
}

function newStore(dir = path.join(work, `store-${n++}`)): BlobStore {
  return new BlobStore(dir, new ChunkFetcher(), null, { maxBytes: 0 });
}

/** The blob's content as its cache serves it (the uncompressed space ends on a block boundary). */
async function readAll(cache: BlobCache, blob: FakeBlob): Promise<Buffer> {
  const buf = Buffer.alloc(cache.size);
  await cache.serve(0, cache.size, { kind: 'buffer', buf, offset: 0 });
  return buf.subarray(0, blob.content.length);
}

function open(store: BlobStore, blob: FakeBlob): { cache: BlobCache; reader: FakeRangeReader } {
  const reader = blob.reader();
  return { cache: store.add(blob.remote(reader.read), blob.index), reader };
}

const compressed = (chunks: FakeBlob['chunks']) => chunks.reduce((s, c) => s + c.compressedSize, 0);

describe('node-wide chunk index', () => {
  it("B's chunks that A holds are copied from A's cache file: only B's new chunk is fetched", async () => {
    const { a, b } = await pair();
    const store = newStore();
    const first = open(store, a);
    assert.ok((await readAll(first.cache, a)).equals(a.content));
    assert.equal(store.chunks.size, a.chunks.length);
    const second = open(store, b);
    assert.ok((await readAll(second.cache, b)).equals(b.content));
    assert.deepEqual(second.reader.requests, [{ offset: 0, length: b.chunks[0].compressedSize }]);
    assert.deepEqual(store.chunks.stats, {
      chunks: a.chunks.length,
      bytes: a.content.length,
      savedBytes: compressed(b.chunks.slice(1)),
      staleSources: 0,
    });
    assert.equal(second.cache.presentChunks, b.chunks.length);
    assert.equal(store.chunks.size, a.chunks.length + b.chunks.length, 'copies are sources in turn');
  });

  it("a demand miss's read-ahead is copied where the node holds it, fetched only where not", async () => {
    const { a, b } = await pair();
    const store = new BlobStore(path.join(work, `store-${n++}`), new ChunkFetcher(), null, { maxBytes: 8 << 20 });
    await readAll(open(store, a).cache, a);
    const second = open(store, b);
    const c = b.chunks[1];
    assert.equal(await second.cache.serve(c.uncompressedOffset, c.uncompressedOffset + 10, { kind: 'cache' }), 0);
    for (let i = 0; i < 100 && second.cache.presentChunks < b.chunks.length; i++)
      await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(second.cache.presentChunks, b.chunks.length, 'every chunk after the miss, and chunk 0 before it');
    // Only chunk 0, the one chunk of B that A lacks, came from the registry.
    const first = b.chunks[0];
    assert.deepEqual(second.reader.requests, [{ offset: first.compressedOffset, length: first.compressedSize }]);
  });

  it('a source corrupt on disk is not copied from: the chunk is fetched, the source left out', async () => {
    const { a, b } = await pair();
    const store = newStore();
    const first = open(store, a);
    await readAll(first.cache, a);
    const bad = a.chunks[2];
    const fd = fs.openSync(first.cache.path, 'r+');
    fs.writeSync(fd, Buffer.from([~a.content[bad.uncompressedOffset + 10] & 0xff]), 0, 1, bad.uncompressedOffset + 10);
    fs.closeSync(fd);
    const second = open(store, b);
    assert.ok((await readAll(second.cache, b)).equals(b.content), 'the corrupt bytes never reached B');
    const fetched = second.reader.requests.reduce((s, r) => s + r.length, 0);
    assert.equal(fetched, b.chunks[0].compressedSize + b.chunks[3].compressedSize);
    assert.equal(store.chunks.stats.staleSources, 1);
    assert.equal(store.chunks.stats.chunks, a.chunks.length - 1);
    assert.deepEqual(
      store.chunks.places(bad.digest, a.digest).map((p) => p.blob),
      [b.digest],
      "A's corrupt chunk is no source any more; B's fetched one is",
    );
  });

  it('eviction keeps the index true: punched chunks and removed files are no sources, B fetches them', async () => {
    const { a, b } = await pair();
    const store = newStore();
    const first = open(store, a);
    await readAll(first.cache, a);
    const punched = await first.cache.evictOldest(1);
    assert.ok(punched > 0);
    assert.equal(store.chunks.size, a.chunks.length - 1);
    const evicted = a.chunks.find((c) => store.chunks.places(c.digest, '').length === 0);
    assert.ok(evicted, 'the punched chunk left the index');
    const removed = store.evictUnused([], 0).removed;
    assert.deepEqual(removed, [a.digest]);
    assert.equal(store.chunks.size, 0);
    const second = open(store, b);
    assert.ok((await readAll(second.cache, b)).equals(b.content));
    assert.equal(store.chunks.stats.chunks, 0);
    assert.equal(
      second.reader.requests.reduce((s, r) => s + r.length, 0),
      compressed(b.chunks),
    );
  });

  it('rebuilt from the cache files and kept tables, it copies from a cache file no image has open', async () => {
    const { a, b } = await pair();
    const dir = path.join(work, `restart-${n++}`);
    const before = newStore(path.join(dir, 'blobs'));
    const first = open(before, a);
    const half = a.chunks[3].uncompressedOffset;
    await first.cache.serve(0, half, { kind: 'cache' });
    first.cache.close();
    const meta = new ImageMetadata(dir);
    meta.keepTable(
      { mediaType: 'application/octet-stream', digest: a.digest, size: a.bytes.length },
      a.bytes.subarray(a.expectedTable.offset),
      a.expectedTable,
    );
    assert.deepEqual(plainChunks(meta.keptChunks(a.digest)), a.chunks);
    assert.equal(meta.keptChunks(b.digest), null);

    const after = newStore(path.join(dir, 'blobs'));
    assert.equal(
      after.indexCacheFiles((blob) => meta.keptChunks(blob)),
      3,
      'the chunks present in the file',
    );
    const second = open(after, b);
    assert.ok((await readAll(second.cache, b)).equals(b.content));
    assert.equal(after.chunks.stats.chunks, 3);
    const fetched = second.reader.requests.reduce((s, r) => s + r.length, 0);
    assert.equal(fetched, compressed(b.chunks) - compressed(a.chunks.slice(0, 3)));
  });

  it('a kept table that is not one leaves its file out of the index, and the store starts', async () => {
    const { a } = await pair();
    const dir = path.join(work, `bad-table-${n++}`);
    const before = newStore(path.join(dir, 'blobs'));
    await readAll(open(before, a).cache, a);
    const meta = new ImageMetadata(dir);
    fs.writeFileSync(path.join(dir, 'tables', a.digest.slice(7)), 'not a table');
    assert.throws(() => meta.keptChunks(a.digest), /kept chunk table of sha256:/);
    const after = newStore(path.join(dir, 'blobs'));
    assert.equal(
      after.indexCacheFiles((blob) => meta.keptChunks(blob)),
      0,
    );
  });

  it('a blob kept in the kernel object is no source, but is written by copies, padded to pages', async () => {
    const { a, b } = await pair();
    const store = newStore();
    await readAll(open(store, a).cache, a);
    const second = open(store, b);
    const file = path.join(work, `object-${n++}`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, Math.ceil(b.content.length / 4096) * 4096);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    try {
      second.cache.keepInKernelObject({ use: async (op) => op(fd) });
      await second.cache.serve(0, b.content.length, { kind: 'cache' });
      assert.ok(fs.readFileSync(file).subarray(0, b.content.length).equals(b.content));
      assert.equal(store.chunks.stats.chunks, a.chunks.length);
      assert.deepEqual(store.chunks.places(b.chunks[0].digest, ''), [], "the object's chunks are not listed");
    } finally {
      fs.closeSync(fd);
    }
  });

  it('copyChunkInto writes nothing when the source bytes do not match the chunk', async () => {
    const { a } = await pair();
    const src = path.join(work, `src-${n++}`);
    fs.writeFileSync(src, a.content);
    const dst = path.join(work, `dst-${n++}`);
    fs.writeFileSync(dst, '');
    fs.truncateSync(dst, a.content.length);
    const [s, d] = [fs.openSync(src, 'r'), fs.openSync(dst, 'r+')];
    try {
      const c = a.chunks[1];
      const wrong = { ...c, digest: a.chunks[2].digest };
      const fault = await copyChunkInto(s, c.uncompressedOffset, d, wrong, 'test');
      assert.ok(fault instanceof ChunkVerificationError, String(fault));
      assert.equal(native.seekData(d, 0), -1, 'nothing written');
      const past = await copyChunkInto(s, a.content.length - 10, d, c, 'test');
      assert.match(String(past), /the source ends at/);
      assert.equal(await copyChunkInto(s, c.uncompressedOffset, d, c, 'test'), null);
      const got = Buffer.alloc(c.uncompressedSize);
      fs.readSync(d, got, 0, got.length, c.uncompressedOffset);
      assert.ok(got.equals(a.chunkData(c)));
    } finally {
      fs.closeSync(s);
      fs.closeSync(d);
    }
  });
});
