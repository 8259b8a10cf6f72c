// The shared fetcher against a real converted blob read through a counting range reader.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { loadBlobIndex, type BlobIndex } from '../../src/blob/blob-index';
import { convertLayers } from '../../src/convert/convert-layers';
import { readAtMost } from '../../src/oci/byte-stream';
import { ChunkFetcher, type RemoteBlob } from '../../src/storage/chunk-fetcher';
import { planRanges } from '../../src/storage/range-plan';
import { until } from '../lib/assertions';
import { cleanup, tempDir } from '../lib/image';
import { memoryLayer, TAR } from '../lib/layers';
import { makeTar } from '../lib/tar-writer';
import { FileDestination, fetchChunkBytes } from '../lib/fake-blob';

const CHUNK = 64 << 10;
const work = tempDir('fetcher');
after(() => cleanup(work));

let blobFile: string;
let index: BlobIndex;
let content: Buffer;

before(async () => {
  content = randomBytes(40 * CHUNK + 123);
  const c = await convertLayers([memoryLayer(makeTar([{ name: 'data', body: content }]), TAR)], work, {
    chunkBits: 16,
    image: 'fetcher-test',
  });
  blobFile = c.blobs[0].path;
  const fd = fs.openSync(blobFile, 'r');
  index = await loadBlobIndex(async (o, l) => readAt(fd, o, l), fs.statSync(blobFile).size, blobFile);
});

function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  fs.readSync(fd, b, 0, length, offset);
  return b;
}

function remote(
  opts: {
    corrupt?: boolean;
    delayMs?: number;
    verifies?: boolean;
    /** The body comes in two parts, as a socket delivers it: `first` bytes, then the rest once `rest` resolves. */
    trickle?: { first: number; rest: Promise<void> };
  } = {},
): RemoteBlob & { calls: Array<[number, number]> } {
  const fd = fs.openSync(blobFile, 'r');
  const calls: Array<[number, number]> = [];
  return {
    digest: `sha256:${path.basename(blobFile, '.blob')}`,
    what: 'test blob',
    calls,
    read: async (offset, length, verify, _priority, onBytes) => {
      calls.push([offset, length]);
      if (opts.delayMs) await new Promise((r) => setTimeout(r, opts.delayMs));
      const data = readAt(fd, offset, length);
      if (opts.trickle) {
        onBytes?.(data.subarray(0, opts.trickle.first));
        await opts.trickle.rest;
        onBytes?.(data);
      }
      if (opts.corrupt) data[data.length >> 1] ^= 1;
      // As the registry client does: the bytes are checked (placed) before the read returns.
      if (opts.verifies) await verify?.(data);
      return data;
    },
  };
}

describe('chunk fetcher', () => {
  it('returns verified chunk contents', async () => {
    const f = new ChunkFetcher();
    const wanted = [index.chunks[0], index.chunks[7], index.chunks[40]];
    const got = await fetchChunkBytes(f, remote(), wanted);
    got.forEach((b, i) => {
      const off = wanted[i].uncompressedOffset;
      assert.ok(b.equals(content.subarray(off, off + wanted[i].uncompressedSize)));
      assert.equal(createHash('sha256').update(b).digest('hex'), wanted[i].digest.toString('hex'));
    });
  });

  it('merges adjacent chunks into one request, bounded in size', async () => {
    const r = remote();
    await fetchChunkBytes(new ChunkFetcher({ maxRequestBytes: 10 * CHUNK, maxGap: 0 }), r, index.chunks.slice(0, 25));
    // Random data barely compresses: ~9 chunks fit under the bound, so 25 chunks take 3 requests.
    assert.equal(r.calls.length, 3);
    for (const [, len] of r.calls) assert.ok(len <= 10 * CHUNK);
    assert.equal(planRanges([index.chunks[0], index.chunks[2]], 1 << 30, 0).length, 2, 'a gap splits the range');
  });

  it('merges prefetch across a larger gap than demand: nobody waits on it, and requests cost the registry', async () => {
    const f = new ChunkFetcher({ maxGap: CHUNK, prefetchGap: 4 * CHUNK });
    const apart = [index.chunks[0], index.chunks[3]]; // two chunks, about two chunks apart
    const demand = remote();
    await fetchChunkBytes(f, demand, apart, 'demand');
    assert.equal(demand.calls.length, 2, 'demand: the gap is worth a request');
    const prefetch = remote();
    await fetchChunkBytes(new ChunkFetcher({ maxGap: CHUNK, prefetchGap: 4 * CHUNK }), prefetch, apart, 'prefetch');
    assert.equal(prefetch.calls.length, 1, 'prefetch: one request over the gap');
  });

  it('decodes the chunks a reader waits for before the read-ahead of the same request', async () => {
    const r = remote();
    const f = new ChunkFetcher();
    const file = new FileDestination();
    const placed: number[][] = [];
    const dest = {
      place: async (bytes: Buffer, start: number, chunks: readonly (typeof index.chunks)[number][]) => {
        const faults = await file.place(bytes, start, chunks);
        placed.push(chunks.map((c) => index.chunks.indexOf(c)));
        return faults;
      },
    };
    const [wanted, ...ahead] = f.getEachChunk(r, index.chunks.slice(10, 14), dest, 'demand', 1);
    await wanted;
    assert.deepEqual(placed, [[10]], 'the wanted chunk was placed on its own, and resolved before the read-ahead');
    await Promise.all(ahead);
    assert.deepEqual(placed, [[10], [11, 12, 13]]);
    assert.equal(r.calls.length, 1, 'one request for both');
    file.close();
  });

  it('settles the chunks a reader waits for before the read-ahead is placed, also when the reader verifies', async () => {
    const r = remote({ verifies: true });
    const f = new ChunkFetcher();
    const file = new FileDestination();
    let releaseAhead!: () => void;
    const aheadHeld = new Promise<void>((resolve) => (releaseAhead = resolve));
    const placed: number[][] = [];
    const dest = {
      place: async (bytes: Buffer, start: number, chunks: readonly (typeof index.chunks)[number][]) => {
        const which = chunks.map((c) => index.chunks.indexOf(c));
        placed.push(which);
        if (!which.includes(10)) await aheadHeld;
        return file.place(bytes, start, chunks);
      },
    };
    const [wanted, ...ahead] = f.getEachChunk(r, index.chunks.slice(10, 14), dest, 'demand', 1);
    await wanted; // would never resolve if the read-ahead had to be written first
    assert.deepEqual(placed[0], [10]);
    releaseAhead();
    await Promise.all(ahead);
    assert.deepEqual(
      placed.flat().sort((a, b) => a - b),
      [10, 11, 12, 13],
    );
    assert.equal(r.calls.length, 1, 'one request for both');
    assert.equal(f.stats.chunksFetched, 4);
    file.close();
  });

  it('places a chunk a reader waits for once its bytes are in, before the rest of the request comes', async () => {
    let sendRest!: () => void;
    const rest = new Promise<void>((resolve) => (sendRest = resolve));
    // The request starts at chunk 10, the one read; 11-13 are its read-ahead.
    const r = remote({ trickle: { first: index.chunks[10].compressedSize, rest } });
    const f = new ChunkFetcher();
    const file = new FileDestination();
    const [wanted, ...ahead] = f.getEachChunk(r, index.chunks.slice(10, 14), file, 'demand', 1);
    let aheadPlaced = false;
    const aheadDone = Promise.all(ahead).then(() => (aheadPlaced = true));
    let wantedPlaced = false;
    void wanted.then(() => (wantedPlaced = true));
    await until(() => wantedPlaced, 'the chunk read, placed before the rest of the body comes', 5000);
    const c = index.chunks[10];
    assert.ok(file.chunk(c).equals(content.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize)));
    assert.equal(aheadPlaced, false, 'the read-ahead waits for its bytes');
    sendRest();
    await aheadDone;
    assert.equal(r.calls.length, 1, 'one request for all');
    assert.equal(f.stats.chunksFetched, 4, 'each chunk counted once');
    file.close();
  });

  it('fetches a chunk once when many readers want it at the same time', async () => {
    const r = remote({ delayMs: 20 });
    const f = new ChunkFetcher();
    const all = await Promise.all(
      Array.from({ length: 10 }, () => fetchChunkBytes(f, r, [index.chunks[3], index.chunks[4]])),
    );
    assert.equal(r.calls.length, 1);
    assert.ok(all.every((x) => x[0].equals(all[0][0])));
    assert.equal(f.inFlight, 0);
  });

  it('gives back the memory of a response body once every chunk in it is placed, not before', async () => {
    const base = remote({ verifies: true });
    const bodies: Buffer[] = [];
    const r: RemoteBlob = {
      ...base,
      // As the registry client reads a Range GET: into a buffer of the body's size, collected by readAtMost.
      read: async (offset, length, verify) => {
        const bytes = await base.read(offset, length);
        const body = (await readAtMost(Readable.from([bytes]), length, length))!;
        bodies.push(body);
        await verify?.(body);
        return body;
      },
    };
    const wanted = index.chunks.slice(3, 9);
    const got = await fetchChunkBytes(new ChunkFetcher(), r, wanted);
    got.forEach((b, i) => {
      const off = wanted[i].uncompressedOffset;
      assert.ok(b.equals(content.subarray(off, off + wanted[i].uncompressedSize)), `chunk ${i}`);
    });
    assert.equal(bodies.length, 1);
    // Whole pages only: a part of a page may stay at each end.
    const kept = () => bodies[0].reduce((n, b) => n + (b === 0 ? 0 : 1), 0);
    await until(() => kept() < 2 * 4096, "the body's memory given back", 2000);
  });

  it('rejects corrupt bytes and counts the verification failure', async () => {
    const f = new ChunkFetcher();
    await assert.rejects(
      fetchChunkBytes(f, remote({ corrupt: true }), [index.chunks[5]]),
      /test blob: chunk at \d+: (sha256 .* does not match|zstd)/,
    );
    assert.equal(f.stats.verifyFailures, 1);
    // The failure is not remembered: a later good read succeeds.
    const [ok] = await fetchChunkBytes(f, remote(), [index.chunks[5]]);
    assert.equal(ok.length, CHUNK);
  });

  it('serves on-demand requests before queued prefetch', async () => {
    const order: string[] = [];
    const f = new ChunkFetcher({ concurrency: 1, maxRequestBytes: CHUNK + 1024 });
    const base = remote({ delayMs: 5 });
    const tagged = (tag: string): RemoteBlob => ({ ...base, read: async (o, l) => (order.push(tag), base.read(o, l)) });
    const prefetch = fetchChunkBytes(f, tagged('prefetch'), index.chunks.slice(10, 14), 'prefetch');
    const demand = fetchChunkBytes(f, tagged('demand'), [index.chunks[30]], 'demand');
    await Promise.all([prefetch, demand]);
    assert.equal(order[0], 'prefetch', 'the first prefetch request was already running');
    assert.equal(order[1], 'demand', 'the demand request jumps the prefetch queue');
  });
});
