// BlobCache.serve, the one path of a cache miss, over an in-memory blob: the right bytes or an
// error, one fetch per chunk, pinned chunks never evicted, nothing unverified written.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { native } from '../../src/native';
import { BlobCache, chunkHeld, heldChunks, type KernelObject } from '../../src/storage/blob-cache';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { fetchMissing } from '../../src/storage/prefetcher';
import { makeFakeBlob, type FakeBlob, type FakeRangeReader } from '../lib/fake-blob';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-blob-cache-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

let n = 0;
function open(
  blob: FakeBlob,
  reader: FakeRangeReader = blob.reader(),
  fetcher = new ChunkFetcher(),
  readAheadBytes = 0,
): { cache: BlobCache; reader: FakeRangeReader; file: string } {
  const file = path.join(work, `cache-${n++}`);
  const cache = BlobCache.open(file, blob.remote(reader.read), blob.index, fetcher);
  cache.readAhead = { maxBytes: readAheadBytes };
  return { cache, reader, file };
}

/** The uncompressed bytes of [start, end) as the blob holds them. */
function expected(blob: FakeBlob, start: number, end: number): Buffer {
  return blob.content.subarray(start, end);
}

async function serveBuffer(cache: BlobCache, start: number, end: number): Promise<{ data: Buffer; fetched: number }> {
  const data = Buffer.alloc(end - start);
  const fetched = await cache.serve(start, end, { kind: 'buffer', buf: data, offset: 0 });
  return { data, fetched };
}

describe('BlobCache.serve', () => {
  it('delivers verified bytes into a buffer, fetching only the chunks the range needs, and hits afterwards', async () => {
    const blob = await makeFakeBlob();
    const { cache, reader, file } = open(blob);
    try {
      const c = blob.chunks[3];
      const start = c.uncompressedOffset + 100;
      const got = await serveBuffer(cache, start, start + 5000);
      assert.equal(got.fetched, 1);
      assert.ok(got.data.equals(expected(blob, start, start + 5000)));
      assert.equal(reader.requests.length, 1);
      assert.equal(cache.presentChunks, 1);
      const fd = fs.openSync(file, 'r');
      assert.equal(native.seekData(fd, 0), c.uncompressedOffset, 'nothing before the chunk was written');
      fs.closeSync(fd);
      const again = await serveBuffer(cache, start, start + 10);
      assert.equal(again.fetched, 0, 'a hit fetches nothing');
      assert.equal(reader.requests.length, 1);
      assert.equal(cache.hits, 1);
      assert.equal(cache.misses, 1);
    } finally {
      cache.close();
    }
  });

  it('a range across chunks is fetched in one merged request and read back whole', async () => {
    const blob = await makeFakeBlob();
    const { cache, reader } = open(blob);
    try {
      const [a, , c] = blob.chunks.slice(2, 5);
      const got = await serveBuffer(cache, a.uncompressedOffset + 7, c.uncompressedOffset + 9);
      assert.equal(got.fetched, 3);
      assert.equal(reader.requests.length, 1);
      assert.ok(got.data.equals(expected(blob, a.uncompressedOffset + 7, c.uncompressedOffset + 9)));
    } finally {
      cache.close();
    }
  });

  it('concurrent readers of one chunk cause one fetch', async () => {
    const blob = await makeFakeBlob();
    const { cache, reader } = open(blob);
    try {
      const c = blob.chunks[1];
      const release = reader.hold();
      const all = Promise.all([
        serveBuffer(cache, c.uncompressedOffset, c.uncompressedOffset + 10),
        cache.serve(c.uncompressedOffset + 20, c.uncompressedOffset + 30, { kind: 'cache' }),
        serveBuffer(cache, c.uncompressedOffset + 4096, c.uncompressedOffset + 8192),
      ]);
      await reader.started(1);
      release();
      const [first, , third] = await all;
      assert.equal(reader.requests.length, 1, 'one Range GET for three readers');
      assert.ok(first.data.equals(expected(blob, c.uncompressedOffset, c.uncompressedOffset + 10)));
      assert.ok(third.data.equals(expected(blob, c.uncompressedOffset + 4096, c.uncompressedOffset + 8192)));
      assert.equal(cache.presentChunks, 1);
    } finally {
      cache.close();
    }
  });

  it('a cache sink makes each missing chunk present in the file, verified', async () => {
    const blob = await makeFakeBlob();
    const { cache } = open(blob);
    const fd = fs.openSync(cache.path, 'r');
    try {
      const c = blob.chunks[5];
      assert.equal(await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' }), 1);
      const inFile = Buffer.alloc(c.uncompressedSize);
      fs.readSync(fd, inFile, 0, inFile.length, c.uncompressedOffset);
      assert.ok(inFile.equals(blob.chunkData(c)));
      assert.equal(cache.presentChunks, 1);
      assert.equal((await serveBuffer(cache, c.uncompressedOffset, c.uncompressedOffset + 1)).fetched, 0);
    } finally {
      fs.closeSync(fd);
      cache.close();
    }
  });

  for (const fault of [{ kind: 'corrupt' as const }, { kind: 'shifted' as const }, { kind: 'error' as const }]) {
    it(`rejects and writes nothing when the source answers with a fault (${fault.kind})`, async () => {
      const blob = await makeFakeBlob();
      const reader = blob.reader().inject(fault, 10);
      const { cache, file } = open(blob, reader);
      try {
        const c = blob.chunks[2];
        const buf = Buffer.alloc(100);
        await assert.rejects(
          cache.serve(c.uncompressedOffset, c.uncompressedOffset + 100, { kind: 'buffer', buf, offset: 0 }),
          /does not match|zstd|injected|size/,
        );
        assert.ok(buf.equals(Buffer.alloc(100)), 'no byte delivered');
        assert.equal(cache.presentChunks, 0);
        const fd = fs.openSync(file, 'r');
        assert.equal(native.seekData(fd, 0), -1, 'the cache file is still all hole');
        fs.closeSync(fd);
      } finally {
        cache.close();
      }
    });
  }

  it('after a restart, present chunks are found on disk and not fetched again', async () => {
    const blob = await makeFakeBlob();
    const first = open(blob);
    await first.cache.serve(0, blob.index.trailer.uncompressedSize, { kind: 'cache' });
    first.cache.close();
    const reader = blob.reader();
    const again = BlobCache.open(first.file, blob.remote(reader.read), blob.index, new ChunkFetcher());
    try {
      assert.equal(again.presentChunks, blob.chunks.length);
      const got = await serveBuffer(again, 0, blob.content.length);
      assert.equal(got.fetched, 0);
      assert.equal(reader.requests.length, 0);
      assert.ok(got.data.equals(blob.content));
    } finally {
      again.close();
    }
  });

  it('a chunk whose write was cut short (a daemon killed while writing it) is missing at the next open', async () => {
    const blob = await makeFakeBlob();
    const first = open(blob);
    first.cache.close();
    // What a killed daemon leaves: the chunk's first blocks written with its bytes, the rest holes.
    const c = blob.chunks[2];
    const fd = fs.openSync(first.file, 'r+');
    fs.writeSync(fd, expected(blob, c.uncompressedOffset, c.uncompressedOffset + 8192), 0, 8192, c.uncompressedOffset);
    fs.closeSync(fd);
    const reader = blob.reader();
    const again = BlobCache.open(first.file, blob.remote(reader.read), blob.index, new ChunkFetcher());
    try {
      assert.equal(again.presentChunks, 0, 'a chunk with a hole is not present');
      const got = await serveBuffer(again, c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize);
      assert.equal(got.fetched, 1, 'fetched again');
      assert.ok(got.data.equals(expected(blob, c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize)));
    } finally {
      again.close();
    }
  });

  it('eviction punches out the oldest unpinned chunks; a chunk being served is never punched', async () => {
    const blob = await makeFakeBlob();
    const { cache, reader } = open(blob);
    try {
      for (const c of blob.chunks) await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' });
      const [oldest, second] = blob.chunks;
      const freed = await cache.evictOldest(1);
      assert.equal(freed, blob.chunkSize, 'one chunk is enough for one byte');
      assert.equal(cache.presentChunks, blob.chunks.length - 1);
      assert.equal(cache.evictedChunks, 1);
      // The evicted chunk comes back by fetching; the second oldest is pinned by its reader meanwhile.
      const before = reader.requests.length;
      const release = reader.hold();
      const reading = serveBuffer(
        cache,
        oldest.uncompressedOffset,
        second.uncompressedOffset + second.uncompressedSize,
      );
      await reader.started(before + 1);
      const freedMeanwhile = await cache.evictOldest(blob.chunkSize);
      release();
      const got = await reading;
      assert.equal(got.fetched, 1);
      assert.ok(
        got.data.equals(expected(blob, oldest.uncompressedOffset, second.uncompressedOffset + second.uncompressedSize)),
      );
      assert.equal(freedMeanwhile, blob.chunkSize, 'another chunk was evicted instead');
      assert.equal(cache.presentChunks, blob.chunks.length - 1);
    } finally {
      cache.close();
    }
  });

  it('missing ranges group neighbouring missing chunks; fetchMissing fills them all', async () => {
    const blob = await makeFakeBlob();
    const { cache } = open(blob);
    try {
      const c = blob.chunks[4];
      await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' });
      const ranges = cache.missingRanges();
      assert.deepEqual(ranges, [
        [0, c.uncompressedOffset],
        [c.uncompressedOffset + blob.chunkSize, blob.content.length],
      ]);
      const fetched = await fetchMissing(cache, { priority: 'prefetch', workers: 2 });
      assert.equal(fetched, blob.chunks.length - 1);
      assert.deepEqual(cache.missingRanges(), []);
      assert.deepEqual(await cache.verify(), []);
      assert.ok(fs.readFileSync(cache.path).subarray(0, blob.content.length).equals(blob.content));
    } finally {
      cache.close();
    }
  });

  it('fetchMissing reports a failed range and goes on with the next when told to', async () => {
    const blob = await makeFakeBlob();
    const reader = blob.reader().inject({ kind: 'error' }, 1);
    const { cache } = open(blob, reader);
    try {
      const failed: number[] = [];
      await fetchMissing(cache, { priority: 'prefetch', onError: (_e, offset) => failed.push(offset) });
      assert.deepEqual(failed, [0]);
      assert.equal(cache.presentChunks, 0);
      reader.inject({ kind: 'error' }, 1);
      await assert.rejects(fetchMissing(cache, { priority: 'prefetch' }), /injected/);
      assert.equal(await fetchMissing(cache, { priority: 'prefetch' }), blob.chunks.length);
    } finally {
      cache.close();
    }
  });

  it('a demand miss reads around it in the same request: a quarter of the window, doubling on near misses', async () => {
    const blob = await makeFakeBlob({ size: 20 * (64 << 10) });
    // Random data does not compress: every chunk's frame is the same size, a window is a chunk count.
    const frame = blob.chunks[0].compressedSize;
    const { cache, reader } = open(blob, undefined, undefined, 4 * frame);
    try {
      const chunk = (i: number) => blob.chunks[i];
      const until = async (present: number) => {
        for (let i = 0; i < 200 && cache.presentChunks < present; i++) await new Promise((r) => setTimeout(r, 5));
      };
      // A miss of chunk 0 fetches chunk 1 too (a quarter of the bound), in the one request, stored in the background.
      assert.equal((await serveBuffer(cache, 0, 10)).fetched, 1, 'the reader waited for its own chunk only');
      await until(2);
      assert.equal(reader.requests.length, 1);
      assert.equal(cache.presentChunks, 2);
      // Misses within reach of the last window: it doubles (2 chunks), then reaches the bound (4), 3/8 of
      // it going to the chunks before the miss, the rest (at least one chunk) to those after.
      await serveBuffer(cache, chunk(2).uncompressedOffset, chunk(2).uncompressedOffset + 1);
      await until(4);
      assert.equal(cache.presentChunks, 4, 'chunk 2 and one after');
      await serveBuffer(cache, chunk(5).uncompressedOffset, chunk(5).uncompressedOffset + 1);
      await until(8);
      assert.equal(cache.presentChunks, 8, 'chunk 5, two after it and chunk 4 before it');
      assert.equal(reader.requests.length, 3, 'one request per miss');
      // A miss further away starts again at a quarter; nothing present is fetched again.
      await serveBuffer(cache, chunk(17).uncompressedOffset, chunk(17).uncompressedOffset + 1);
      await until(10);
      assert.equal(cache.presentChunks, 10);
      const got = await serveBuffer(cache, 0, chunk(11).uncompressedOffset);
      assert.equal(got.fetched, 3, 'only chunks 8 to 10 were missing');
      assert.ok(got.data.equals(blob.content.subarray(0, chunk(11).uncompressedOffset)));
      assert.deepEqual(await cache.verify(), []);
    } finally {
      cache.close();
    }
  });

  it('demand reads are reported to observers (access traces), prefetch is not', async () => {
    const blob = await makeFakeBlob();
    const { cache } = open(blob);
    try {
      const seen: number[][] = [];
      const stop = cache.onDemand((chunks) => seen.push([...chunks]));
      await serveBuffer(cache, blob.chunks[1].uncompressedOffset, blob.chunks[2].uncompressedOffset + 1);
      await cache.serve(
        blob.chunks[6].uncompressedOffset,
        blob.chunks[6].uncompressedOffset + 1,
        { kind: 'cache' },
        'prefetch',
      );
      stop();
      await serveBuffer(cache, 0, 1);
      assert.deepEqual(seen, [[1, 2]]);
    } finally {
      cache.close();
    }
  });

  it('close waits for writes under way: the fd number is never reused under them', async () => {
    const blob = await makeFakeBlob();
    const { cache, reader, file } = open(blob, undefined, undefined, 1 << 20);
    const release = reader.hold();
    const serving = serveBuffer(cache, 0, 10);
    await reader.started(1);
    release();
    const got = await serving;
    assert.ok(got.data.equals(blob.content.subarray(0, 10)));
    // Read-ahead chunks may still be written now: closing must let them finish on this file.
    cache.close();
    cache.close(); // twice is harmless
    const other = path.join(work, 'other');
    fs.writeFileSync(other, '');
    const fd = fs.openSync(other, 'r+'); // would take the cache's fd number if it were free
    try {
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(fs.fstatSync(fd).size, 0, 'nothing written into another file');
    } finally {
      fs.closeSync(fd);
    }
    const written = fs.readFileSync(file);
    for (const c of blob.chunks.slice(1)) {
      const bytes = written.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize);
      assert.ok(
        bytes.equals(Buffer.alloc(bytes.length)) || bytes.equals(blob.chunkData(c)),
        'a chunk is a hole or right',
      );
    }
    await assert.rejects(cache.serve(0, 1, { kind: 'buffer', buf: Buffer.alloc(1), offset: 0 }), /closed/);
  });
});

describe('BlobCache kept in a kernel cache object (cachefiles)', () => {
  /** Stands in for a cachefiles object: a file that takes only direct I/O, as the anonymous fd does. */
  function directObject(size: number): { fd: number; file: string; use: KernelObject['use']; close(): void } {
    const file = path.join(work, `object-${n++}`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, Math.ceil(size / 4096) * 4096); // cachefiles sizes the backing file in whole pages
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    return { fd, file, use: async (op) => op(fd), close: () => fs.closeSync(fd) };
  }

  it('writes verified chunks straight into the object, the last one padded, and nothing into the cache file', async () => {
    const blob = await makeFakeBlob(); // its last chunk ends off a page boundary
    const object = directObject(blob.content.length);
    const { cache, file } = open(blob);
    try {
      cache.keepInKernelObject(object);
      const last = blob.chunks[blob.chunks.length - 1];
      assert.notEqual(last.uncompressedSize % 4096, 0);
      const fetched = await cache.serve(blob.chunks[1].uncompressedOffset, blob.content.length, { kind: 'cache' });
      assert.equal(fetched, blob.chunks.length - 1);
      const held = fs.readFileSync(object.file);
      assert.ok(
        held
          .subarray(blob.chunks[1].uncompressedOffset, blob.content.length)
          .equals(blob.content.subarray(blob.chunks[1].uncompressedOffset)),
      );
      assert.ok(held.subarray(blob.content.length).equals(Buffer.alloc(held.length - blob.content.length)));
      assert.equal(fs.statSync(file).blocks, 0, 'the cache file holds no data');
      assert.equal(cache.presentChunks, blob.chunks.length - 1);
      await assert.rejects(cache.verify(), /cannot read back/);
      await assert.rejects(cache.serve(0, 1, { kind: 'buffer', buf: Buffer.alloc(1), offset: 0 }), /cannot read back/);
    } finally {
      cache.close();
      object.close();
    }
  });

  it('prefetches only what the object lacks, and nothing while the kernel has no object open', async () => {
    const blob = await makeFakeBlob();
    const object = directObject(blob.content.length);
    let objectOpen = false;
    const { cache, reader } = open(blob);
    try {
      cache.keepInKernelObject({
        use: async (op) => {
          if (!objectOpen) throw new Error('not open');
          return object.use(op);
        },
      });
      const all = blob.chunks.map((_, i) => i);
      assert.equal(await cache.fetchChunks(all), 0, 'no object open: nothing could be stored');
      assert.equal(reader.requests.length, 0, 'nor fetched');
      objectOpen = true;
      const c = blob.chunks[1];
      await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' });
      // A restarted daemon: its state starts empty, the object holds chunk 1.
      const { cache: again } = open(blob);
      again.keepInKernelObject({ use: (op) => object.use(op) });
      assert.equal(await again.fetchChunks(all), blob.chunks.length - 1, 'all but the chunk the object holds');
      again.close();
      // Blind prefetch goes through serve: the same for it.
      const { cache: third, reader: thirdReader } = open(blob);
      let open3 = false;
      third.keepInKernelObject({ use: (op) => (open3 ? object.use(op) : Promise.reject(new Error('not open'))) });
      assert.equal(await third.serve(0, blob.content.length, { kind: 'cache' }, 'background'), 0, 'no object open');
      assert.equal(thirdReader.requests.length, 0);
      await assert.rejects(third.serve(0, 1, { kind: 'cache' }, 'demand'), /not open/, 'a demand read fails instead');
      open3 = true;
      assert.equal(
        await third.serve(0, blob.content.length, { kind: 'cache' }, 'background'),
        0,
        'the object holds all',
      );
      assert.equal(thirdReader.requests.length, 0, 'nothing fetched again');
      third.close();
    } finally {
      cache.close();
      object.close();
    }
  });

  it('takes what the object holds as present, and fetches again what the kernel lost', async () => {
    const blob = await makeFakeBlob();
    const object = directObject(blob.content.length);
    const { cache, reader } = open(blob);
    try {
      cache.keepInKernelObject(object);
      await cache.serve(0, blob.content.length, { kind: 'cache' });
      const requests = reader.requests.length;
      // The kernel culled the file while the object was closed: it comes back empty.
      fs.ftruncateSync(object.fd, 0);
      fs.ftruncateSync(object.fd, Math.ceil(blob.content.length / 4096) * 4096);
      await cache.syncWithObject();
      assert.equal(cache.presentChunks, 0);
      const c = blob.chunks[2];
      assert.equal(await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' }), 1);
      assert.ok(reader.requests.length > requests);
      const held = fs.readFileSync(object.file);
      assert.ok(
        held.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize).equals(blob.chunkData(c)),
      );
      // A READ comes only for a hole: a chunk taken as present but gone is fetched again, not skipped.
      await cache.syncWithObject();
      fs.ftruncateSync(object.fd, 0);
      fs.ftruncateSync(object.fd, Math.ceil(blob.content.length / 4096) * 4096);
      assert.equal(await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' }), 1);
    } finally {
      cache.close();
      object.close();
    }
  });
});

describe('heldChunks', () => {
  it('finds by walking extents exactly the chunks chunkHeld finds one by one', async () => {
    const chunkSize = 16 << 10;
    const blob = await makeFakeBlob({ size: 40 * chunkSize + 777, chunkSize });
    const chunks = blob.index.chunks;
    const size = blob.index.trailer.uncompressedSize;
    let seed = 7;
    const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
    for (let trial = 0; trial < 40; trial++) {
      const file = path.join(work, `held-${trial}`);
      const fd = fs.openSync(file, 'w+');
      try {
        fs.ftruncateSync(fd, size);
        for (const c of chunks) {
          const r = random();
          const part = (from: number, length: number) =>
            fs.writeSync(
              fd,
              blob.content,
              c.uncompressedOffset + from,
              Math.min(length, c.uncompressedSize - from),
              c.uncompressedOffset + from,
            );
          // Whole chunks, a chunk cut short, or one block somewhere inside it (holes around).
          if (r < 0.4) part(0, c.uncompressedSize);
          else if (r < 0.55) part(0, 4096);
          else if (r < 0.65 && c.uncompressedSize > 8192) part(8192, 4096);
        }
        const oneByOne = chunks.flatMap((c, i) => (chunkHeld(fd, c, size) ? [i] : []));
        assert.deepEqual(heldChunks(fd, chunks, size), oneByOne, `trial ${trial}`);
      } finally {
        fs.closeSync(fd);
      }
    }
    const empty = path.join(work, 'held-empty');
    fs.writeFileSync(empty, '');
    fs.truncateSync(empty, size);
    const fd = fs.openSync(empty, 'r');
    assert.deepEqual(heldChunks(fd, chunks, size), []);
    fs.closeSync(fd);
  });
});
