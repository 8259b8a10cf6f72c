// The fetcher against in-memory blobs whose sources fail, lie or are slow (test/lib/fake-blob):
// what reaches a caller is verified bytes or an error naming the blob and range, never wrong bytes.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { makeFakeBlob, mirrored, type FakeBlob, fetchChunkBytes } from '../lib/fake-blob';

const CHUNK = 16 << 10;

describe('chunk fetcher with failing sources', () => {
  let blob: FakeBlob;
  before(async () => {
    blob = await makeFakeBlob({ chunkSize: CHUNK, size: 12 * CHUNK + 100 });
  });

  const expect = (got: Buffer[], wanted: number[]) =>
    wanted.forEach((n, i) => assert.ok(got[i].equals(blob.chunkData(blob.chunks[n])), `chunk ${n}`));

  it('fetches each chunk once for concurrent readers of overlapping chunk sets', async () => {
    const r = blob.reader();
    const release = r.hold();
    const f = new ChunkFetcher({ maxGap: 0 });
    const sets = [
      [0, 1, 2, 3],
      [2, 3, 4, 5],
      [5, 6, 0],
    ];
    const reads = sets.map((set) =>
      fetchChunkBytes(
        f,
        blob.remote(r.read),
        set.map((n) => blob.chunks[n]),
      ),
    );
    release();
    (await Promise.all(reads)).forEach((got, i) => expect(got, sets[i]));
    const fetched = r.requests.flatMap(({ offset, length }) =>
      blob.chunks.filter(
        (c) => c.compressedOffset >= offset && c.compressedOffset + c.compressedSize <= offset + length,
      ),
    );
    assert.deepEqual(
      fetched.map((c) => blob.chunks.indexOf(c)).sort((a, b) => a - b),
      [0, 1, 2, 3, 4, 5, 6],
      'every chunk in exactly one request',
    );
    assert.equal(f.stats.chunksFetched, 7);
  });

  it('rejects every waiter of a failed request with the blob and byte range, and fetches again on the next read', async () => {
    const r = blob.reader().inject({ kind: 'error', error: new Error('connection reset') });
    const f = new ChunkFetcher();
    const wanted = [blob.chunks[1], blob.chunks[2]];
    const first = blob.chunks[1].compressedOffset;
    const last = blob.chunks[2].compressedOffset + blob.chunks[2].compressedSize - 1;
    const failing = [
      fetchChunkBytes(f, blob.remote(r.read, 'image x, blob y'), wanted),
      fetchChunkBytes(f, blob.remote(r.read, 'image x, blob y'), [wanted[1]]),
    ];
    for (const p of failing)
      await assert.rejects(
        p,
        new RegExp(`^Error: image x, blob y: fetching bytes ${first}-${last}: connection reset$`),
      );
    assert.equal(r.requests.length, 1);
    assert.equal(f.stats.failedRequests, 1);
    assert.equal(f.inFlight, 0);
    expect(await fetchChunkBytes(f, blob.remote(r.read), wanted), [1, 2]);
    assert.equal(r.requests.length, 2);
  });

  for (const fault of [{ kind: 'corrupt' }, { kind: 'shifted', by: 1 }, { kind: 'shifted', by: -7 }] as const) {
    it(`gives an error, never the bytes, when the source answers with ${fault.kind === 'corrupt' ? 'a flipped byte' : `bytes shifted by ${fault.by}`}`, async () => {
      const r = blob.reader().inject(fault);
      const f = new ChunkFetcher();
      await assert.rejects(
        fetchChunkBytes(f, blob.remote(r.read), [blob.chunks[4]]),
        /chunk at \d+: (sha256 .* does not match|zstd|.* bytes after decompression)/,
      );
      assert.equal(f.stats.verifyFailures, 1);
      assert.equal(f.stats.chunksFetched, 0);
      expect(await fetchChunkBytes(f, blob.remote(r.read), [blob.chunks[4]]), [4]);
    });
  }

  it('a cache write that fails is an error of its own: no other source is tried, no lie is counted', async () => {
    const first = blob.reader();
    const second = blob.reader();
    const f = new ChunkFetcher();
    const full = {
      place: async (_b: Buffer, _s: number, chunks: readonly unknown[]) => chunks.map(() => new Error('ENOSPC')),
    };
    await assert.rejects(
      Promise.all(f.getEachChunk(blob.remote(mirrored(first.read, second.read)), [blob.chunks[2]], full)),
      /ENOSPC/,
    );
    assert.equal(first.requests.length, 1);
    assert.equal(second.requests.length, 0, 'the bytes were fine: the next source is not asked');
    assert.equal(f.stats.verifyFailures, 0);
  });

  it('a reader with sources that lie before an honest one gives the honest bytes, counting each lie', async () => {
    const liar = blob.reader().inject({ kind: 'corrupt' }, Infinity);
    const shifter = blob.reader().inject({ kind: 'shifted' }, Infinity);
    const honest = blob.reader();
    const f = new ChunkFetcher();
    const wanted = [7, 8, 9];
    expect(
      await fetchChunkBytes(
        f,
        blob.remote(mirrored(liar.read, shifter.read, honest.read)),
        wanted.map((n) => blob.chunks[n]),
      ),
      wanted,
    );
    assert.equal(liar.requests.length, 1);
    assert.equal(shifter.requests.length, 1);
    assert.equal(honest.requests.length, 1);
    assert.ok(f.stats.verifyFailures >= 2, `${f.stats.verifyFailures} verification failures`);
    assert.equal(f.stats.chunksFetched, 3);
  });

  it('when every source lies, the error names the chunk and nothing is kept', async () => {
    const f = new ChunkFetcher();
    const read = mirrored(
      blob.reader().inject({ kind: 'corrupt' }, Infinity).read,
      blob.reader().inject({ kind: 'shifted' }, Infinity).read,
    );
    await assert.rejects(fetchChunkBytes(f, blob.remote(read), [blob.chunks[10]]), /chunk at \d+/);
    const honest = blob.reader();
    expect(await fetchChunkBytes(f, blob.remote(honest.read), [blob.chunks[10]]), [10]);
    assert.equal(honest.requests.length, 1, 'the failed chunk was not remembered');
  });

  it('keeps at most `concurrency` requests in flight', async () => {
    const r = blob.reader();
    const f = new ChunkFetcher({ concurrency: 2, maxRequestBytes: 1, maxGap: 0 });
    const release = r.hold();
    const all = fetchChunkBytes(f, blob.remote(r.read), blob.chunks.slice(0, 8));
    await r.started(2);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(r.requests.length, 2, 'the others wait for a slot');
    release();
    expect(await all, [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.equal(r.requests.length, 8);
    assert.equal(r.maxActive, 2);
  });
});
