// Access traces without a registry or a mount: TraceRecorder over real BlobCaches of in-memory blobs,
// checkTrace refusing each fault, and a trace turned into fetch runs and replayed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  checkTrace,
  rebaseTrace,
  TraceRecorder,
  type AccessTrace,
  type EndReason,
} from '../../src/storage/access-trace';
import { BlobCache } from '../../src/storage/blob-cache';
import { CacheBudget } from '../../src/storage/cache-budget';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { Prefetcher, traceBatches } from '../../src/storage/prefetcher';
import { until } from '../lib/assertions';
import { makeFakeBlob, type FakeBlob, type FakeRangeReader } from '../lib/fake-blob';

const IMAGE = `sha256:${'a'.repeat(64)}`;
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-access-trace-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

let n = 0;
function open(blob: FakeBlob, reader: FakeRangeReader = blob.reader()): BlobCache {
  const cache = BlobCache.open(
    path.join(work, `cache-${n++}`),
    blob.remote(reader.read),
    blob.index,
    // Prefetch merges only neighbours here, so that requests show the order of the trace.
    new ChunkFetcher({ prefetchGap: 0 }),
  );
  cache.readAhead = { maxBytes: 0 };
  return cache;
}

/** A demand read of chunk `i` of `cache`, as a reader of the mount makes it. */
function read(cache: BlobCache, i: number, priority: 'demand' | 'prefetch' = 'demand'): Promise<number> {
  const c = cache.index.chunks[i];
  return cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, { kind: 'cache' }, priority);
}

let a: FakeBlob;
let b: FakeBlob;
before(async () => {
  a = await makeFakeBlob({ size: 8 * (64 << 10) });
  b = await makeFakeBlob({ size: 4 * (64 << 10) });
});

describe('TraceRecorder', () => {
  it('records the first demand read of each chunk, in order, across blobs, with the chunk table digests', async () => {
    const blobs = [open(a), open(b)];
    const ended: Array<{ trace: AccessTrace; reason: EndReason }> = [];
    const rec = new TraceRecorder(IMAGE, blobs, { onEnd: (trace, reason) => ended.push({ trace, reason }) });
    await read(blobs[0], 5);
    await read(blobs[1], 2);
    await read(blobs[0], 5); // again: a hit, not a new entry
    await read(blobs[0], 1);
    await read(blobs[1], 0, 'prefetch'); // not a reader's
    const c = blobs[0].index.chunks;
    await blobs[0].serve(c[2].uncompressedOffset, c[3].uncompressedOffset + 10, { kind: 'cache' }); // two chunks
    const t = rec.trace();
    assert.deepEqual(
      t.entries.map((e) => [e.blob, e.chunk]),
      [
        [0, 5],
        [1, 2],
        [0, 1],
        [0, 2],
        [0, 3],
      ],
    );
    for (const e of t.entries)
      assert.equal(e.digest, blobs[e.blob].index.chunks[e.chunk].digest.toString('hex'), 'the chunk table digest');
    assert.ok(
      t.entries.every((e, i) => i === 0 || e.ms >= t.entries[i - 1].ms),
      'times do not go back',
    );
    assert.deepEqual(t.blobs, [a.digest, b.digest]);
    assert.equal(t.image, IMAGE);
    assert.equal(rec.ended, null, 'still recording');
    rec.end('command');
    rec.end('unmount');
    await read(blobs[1], 3);
    assert.equal(ended.length, 1, 'onEnd called once');
    assert.equal(ended[0].reason, 'command');
    assert.equal(ended[0].trace.entries.length, 5, 'nothing recorded after the window closed');
    assert.deepEqual(checkTrace(JSON.parse(JSON.stringify(ended[0].trace)), IMAGE, blobs), ended[0].trace);
  });

  it('records a chunk already being fetched for prefetch when a reader asks for it', async () => {
    const reader = a.reader();
    const cache = open(a, reader);
    const rec = new TraceRecorder(IMAGE, [cache]);
    const release = reader.hold();
    const prefetch = read(cache, 4, 'prefetch');
    await reader.started(1);
    const demand = read(cache, 4);
    release();
    await Promise.all([prefetch, demand]);
    assert.equal(reader.requests.length, 1, 'fetched once');
    assert.deepEqual(
      rec.trace().entries.map((e) => e.chunk),
      [4],
    );
    rec.end('unmount');
  });

  it('closes the window after a quiet spell, not before the first read', async () => {
    const cache = open(a);
    let reason: EndReason | null = null;
    const rec = new TraceRecorder(IMAGE, [cache], { idleMs: 30, onEnd: (_t, r) => (reason = r) });
    await new Promise((r) => setTimeout(r, 80));
    assert.equal(rec.ended, null, 'a mount nobody has read is still recording');
    await read(cache, 0);
    await new Promise((r) => setTimeout(r, 80));
    assert.equal(rec.ended, 'idle');
    assert.equal(reason, 'idle');
    await read(cache, 1);
    assert.equal(rec.size, 1);
  });

  it('closes the window at its bound', async () => {
    const cache = open(a);
    const rec = new TraceRecorder(IMAGE, [cache], { maxEntries: 3 });
    for (const i of [7, 6, 5, 4, 3]) await read(cache, i);
    assert.equal(rec.ended, 'bound');
    assert.deepEqual(
      rec.trace().entries.map((e) => e.chunk),
      [7, 6, 5],
    );
  });

  it('calls onEnd for nothing when nothing was read', () => {
    let called = false;
    const rec = new TraceRecorder(IMAGE, [open(a)], { onEnd: () => (called = true) });
    rec.end('unmount');
    assert.equal(called, false);
  });
});

describe('checkTrace', () => {
  let blobs: BlobCache[];
  let good: AccessTrace;
  before(() => {
    blobs = [open(a), open(b)];
    const entry = (blob: number, chunk: number) => ({
      blob,
      chunk,
      ms: chunk,
      digest: blobs[blob].index.chunks[chunk].digest.toString('hex'),
    });
    good = { version: 1, image: IMAGE, blobs: [a.digest, b.digest], entries: [entry(0, 3), entry(1, 1), entry(0, 7)] };
  });
  const bad = (change: (t: AccessTrace) => void): unknown => {
    const t = structuredClone(good);
    change(t);
    return t;
  };

  it('accepts a trace of the image', () => {
    assert.deepEqual(checkTrace(structuredClone(good), IMAGE, blobs), good);
  });

  const faults: Array<[string, (t: AccessTrace) => void, RegExp]> = [
    ['another image', (t) => (t.image = `sha256:${'b'.repeat(64)}`), /is the trace of "sha256:b/],
    ['other blobs', (t) => (t.blobs = [b.digest, a.digest]), /blobs are not the image's/],
    ['a blob fewer', (t) => t.blobs.pop(), /blobs are not the image's/],
    ['a chunk index past the table', (t) => (t.entries[1].chunk = 4), /entry 1 is out of range/],
    ['a negative chunk index', (t) => (t.entries[0].chunk = -1), /entry 0 is out of range/],
    ['a fractional chunk index', (t) => (t.entries[0].chunk = 1.5), /entry 0 is out of range/],
    ['a blob index past the image', (t) => (t.entries[2].blob = 2), /entry 2 is out of range/],
    ['a wrong chunk digest', (t) => (t.entries[2].digest = t.entries[0].digest), /entry 2: chunk 7 of blob .* digest/],
    ['another version', (t) => ((t as { version: number }).version = 2), /version 2 is not 1/],
    ['no entries', (t) => delete (t as Partial<AccessTrace>).entries, /entries missing/],
  ];
  for (const [what, change, message] of faults) {
    it(`refuses a trace with ${what}`, () => {
      assert.throws(() => checkTrace(bad(change), IMAGE, blobs), message);
    });
  }

  it('refuses what is not a trace at all', () => {
    assert.throws(() => checkTrace(null, IMAGE, blobs), /not an object/);
    assert.throws(() => checkTrace('trace', IMAGE, blobs), /not an object/);
  });
});

describe('rebaseTrace', () => {
  const CHUNK = 64 << 10;
  const REBUILT = `sha256:${'b'.repeat(64)}`;

  it('carries a trace over to a rebuild by digest: other blobs, other indexes, what it lacks left out', async () => {
    const content = randomBytes(8 * CHUNK);
    const old = await makeFakeBlob({ content });
    // The rebuild: a new chunk, then chunks 2..5 of the old blob; and `b`, in the other device slot.
    const rebuilt = await makeFakeBlob({
      content: Buffer.concat([randomBytes(CHUNK), content.subarray(2 * CHUNK, 6 * CHUNK)]),
    });
    const from = [open(old), open(b)];
    const to = [open(b), open(rebuilt)];
    const entry = (blob: number, chunk: number) => ({
      blob,
      chunk,
      ms: 0,
      digest: from[blob].index.chunks[chunk].digest.toString('hex'),
    });
    const trace: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [old.digest, b.digest],
      entries: [entry(0, 3), entry(1, 2), entry(0, 7), entry(0, 2), entry(1, 0)].map((e, ms) => ({ ...e, ms })),
    };
    const rebased = rebaseTrace(checkTrace(trace, IMAGE, from), REBUILT, to);
    assert.equal(rebased.image, REBUILT);
    assert.deepEqual(rebased.blobs, [b.digest, rebuilt.digest]);
    assert.deepEqual(
      rebased.entries.map((e) => [e.blob, e.chunk, e.ms]),
      [
        [1, 2, 0], // old chunk 3 is the rebuild's chunk 2
        [0, 2, 1],
        // old chunk 7 is not in the rebuild: left out
        [1, 1, 3],
        [0, 0, 4],
      ],
    );
    assert.deepEqual(checkTrace(structuredClone(rebased), REBUILT, to), rebased, 'a trace of the rebuild');
  });

  it('names a chunk once when the trace has its digest twice', () => {
    const blobs = [open(a)];
    const digest = blobs[0].index.chunks[4].digest.toString('hex');
    const twice: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [a.digest],
      entries: [
        { blob: 0, chunk: 4, ms: 0, digest },
        { blob: 0, chunk: 4, ms: 1, digest },
      ],
    };
    assert.deepEqual(
      rebaseTrace(twice, REBUILT, blobs).entries.map((e) => [e.chunk, e.ms]),
      [[4, 0]],
    );
  });
});

describe('traceBatches and replay', () => {
  it('takes the trace as prefetch requests, the one the trace wants first going first', async () => {
    const big = await makeFakeBlob({ size: 6 << 20, chunkSize: 1 << 20 });
    const blobs = [open(a), open(big)];
    const e = (blob: number, chunk: number) => ({ blob, chunk, ms: 0, digest: '' });
    const trace: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [a.digest, big.digest],
      entries: [e(1, 5), e(0, 2), e(0, 7), e(1, 0), e(0, 3), e(0, 6), e(1, 1), e(1, 5)],
    };
    const requests = traceBatches(trace, blobs).map((x) => [blobs.indexOf(x.blob), ...x.chunks]);
    // Prefetch merges only neighbours here (`open`): a request is a run of consecutive chunks.
    assert.deepEqual(requests, [
      [1, 5],
      [0, 2, 3],
      [0, 6, 7],
      [1, 0, 1],
    ]);
  });

  it('while a trace is replayed, a demand miss fetches its own chunks only: the trace names what comes next', async () => {
    const reader = a.reader();
    const cache = open(a, reader);
    cache.readAhead = { maxBytes: 1 << 20 };
    const trace: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [a.digest],
      entries: [{ blob: 0, chunk: 7, ms: 0, digest: cache.index.chunks[7].digest.toString('hex') }],
    };
    const prefetcher = new Prefetcher(0, new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }));
    const release = reader.hold();
    const replay = prefetcher.replay(trace, [cache], 1);
    await reader.started(1);
    const miss = read(cache, 1);
    release();
    await Promise.all([miss, replay]);
    const c1 = cache.index.chunks[1];
    assert.deepEqual(
      reader.requests.map((r) => [r.offset, r.length]),
      [
        [cache.index.chunks[7].compressedOffset, cache.index.chunks[7].compressedSize],
        [c1.compressedOffset, c1.compressedSize],
      ],
      'the traced chunk, then the miss alone: no read-ahead',
    );
    await read(cache, 3);
    // Read-ahead lands after the reader's own chunk.
    await until(() => cache.presentChunks > 3, 'read-ahead, back once the trace is replayed', 5_000);
  });

  it('replays a trace in as many requests at once as the fetcher runs for prefetch, and demand still finds its slots', async () => {
    const blob = await makeFakeBlob({ size: 32 * (64 << 10) });
    const reader = blob.reader();
    const cache = open(blob, reader);
    const slots = cache.prefetchSlots;
    assert.ok(slots >= 2 && slots < 8, `the fetcher runs 8, of which prefetch ${slots}`);
    // Every other chunk: with prefetchGap 0 each is a request of its own.
    const chunks = Array.from({ length: 2 * slots + 2 }, (_, i) => 2 * i);
    assert.ok(chunks.at(-1)! < cache.index.chunks.length);
    const trace: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [blob.digest],
      entries: chunks.map((chunk) => ({
        blob: 0,
        chunk,
        ms: 0,
        digest: cache.index.chunks[chunk].digest.toString('hex'),
      })),
    };
    const prefetcher = new Prefetcher(0, new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }));
    const release = reader.hold();
    const replay = prefetcher.replay(trace, [cache]);
    await until(() => reader.active >= slots, `${slots} trace requests at once`, 5_000);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(reader.active, slots, 'every prefetch slot busy, no more');
    const miss = read(cache, 1);
    await reader.started(slots + 1);
    release();
    await Promise.all([miss, replay]);
    assert.equal(reader.maxActive, slots + 1, 'the demand read ran beside the replay, in a reserved slot');
    assert.equal(cache.presentChunks, chunks.length + 1);
  });

  it('blind prefetch holds no more ranges of a blob at once than the fetcher runs, whatever its workers', async () => {
    const big = await makeFakeBlob({ size: 200 * (64 << 10) }); // several 4 MiB ranges
    const cache = open(big);
    let serving = 0;
    let most = 0;
    const serve = cache.serve.bind(cache);
    cache.serve = async (...args) => {
      most = Math.max(most, ++serving);
      try {
        return await serve(...args);
      } finally {
        serving--;
      }
    };
    const prefetcher = new Prefetcher(10, new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }));
    prefetcher.start(cache);
    await until(() => cache.presentChunks === cache.index.chunks.length, 'the whole blob prefetched', 10_000);
    assert.ok(most >= 1 && most <= 2, `${most} ranges at once`);
    cache.close();
  });

  it('blind prefetch starts once a mount has been quiet, and holds back while demand misses come', async () => {
    const big = await makeFakeBlob({ size: 20 * (64 << 10) });
    const cache = open(big);
    const quietMs = 300;
    const prefetcher = new Prefetcher(
      2,
      new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }),
      quietMs,
    );
    const started = Date.now();
    prefetcher.start(cache);
    // Misses keep coming for a while: nothing is prefetched meanwhile.
    for (let i = 0; i < 6; i++) {
      await new Promise((r) => setTimeout(r, quietMs / 3));
      prefetcher.noteDemand();
    }
    const lastDemand = Date.now();
    assert.equal(cache.presentChunks, 0, 'prefetched while demand misses came');
    await until(() => cache.presentChunks === cache.index.chunks.length, 'the whole blob prefetched', 10_000);
    assert.ok(Date.now() - lastDemand >= quietMs, 'prefetch waited for the quiet spell after the last miss');
    assert.ok(lastDemand - started >= 2 * quietMs, 'the misses came for longer than one quiet spell');
    prefetcher.stop();
    cache.close();
  });

  it("after a blob's trace is replayed, a miss starts read-ahead from its smallest window", async () => {
    const big = await makeFakeBlob({ size: 40 * (64 << 10) });
    const missAfter = async (trace: boolean): Promise<number> => {
      const reader = big.reader();
      const cache = open(big, reader);
      cache.readAhead = { maxBytes: 8 << 20 };
      const last = cache.index.chunks.length - 1;
      const entries = [{ blob: 0, chunk: last, ms: 0, digest: cache.index.chunks[last].digest.toString('hex') }];
      const prefetcher = new Prefetcher(0, new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }));
      if (trace) await prefetcher.replay({ version: 1, image: IMAGE, blobs: [big.digest], entries }, [cache], 1);
      await read(cache, 0);
      return reader.requests.find((r) => r.offset === cache.index.chunks[0].compressedOffset)!.length;
    };
    const untraced = await missAfter(false);
    const traced = await missAfter(true);
    assert.ok(traced <= (256 << 10) + (66 << 10), `a first window of about one chunk: ${traced} bytes`);
    // Chunk 0 has nothing before it: the request holds the window's share after the miss.
    assert.ok(untraced >= ((2 << 20) * 5) / 8, `a quarter of the bound without a trace: ${untraced} bytes`);
  });

  it('replays a trace as prefetch: its chunks cached, in trace order, none recorded as a reader access', async () => {
    const reader = a.reader();
    const cache = open(a, reader);
    const rec = new TraceRecorder(IMAGE, [cache]);
    const digest = (i: number) => cache.index.chunks[i].digest.toString('hex');
    const trace: AccessTrace = {
      version: 1,
      image: IMAGE,
      blobs: [a.digest],
      entries: [6, 1, 2].map((chunk) => ({ blob: 0, chunk, ms: 0, digest: digest(chunk) })),
    };
    const prefetcher = new Prefetcher(0, new CacheBudget(0, 0, { evictUnused: () => 0, mounted: () => [cache] }));
    const fetched = await prefetcher.replay(trace, [cache], 1);
    assert.equal(fetched, 3);
    assert.equal(cache.presentChunks, 3);
    assert.deepEqual(
      reader.requests.map((r) => r.offset),
      [cache.index.chunks[6].compressedOffset, cache.index.chunks[1].compressedOffset],
      'trace order: 6 first, in a request of its own; neighbours 1 and 2 share one',
    );
    assert.equal(rec.size, 0);
    rec.end('unmount');
  });
});
