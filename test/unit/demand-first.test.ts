// Demand first: a reader waiting for a chunk whose prefetch is still queued moves it ahead of the
// rest of the prefetch queue, and its request runs with demand's retries.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { RangeReader } from '../../src/blob/blob-index';
import type { Priority } from '../../src/storage/limiter';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { makeFakeBlob, fetchChunkBytes } from '../lib/fake-blob';

it('a demand read of a queued prefetch chunk is fetched next, as demand', async () => {
  const blob = await makeFakeBlob({ size: 8 * (64 << 10) });
  const reader = blob.reader();
  const order: Array<{ offset: number; priority: Priority | undefined }> = [];
  const read: RangeReader = (offset, length, verify, priority) => {
    order.push({ offset, priority });
    return reader.read(offset, length, verify, priority);
  };
  // One slot, none reserved, requests of one chunk each: every prefetch range queues behind the first.
  const fetcher = new ChunkFetcher({ concurrency: 1, reservedForDemand: 0, maxRequestBytes: 1, maxGap: 0 });
  const remote = blob.remote(read);
  const release = reader.hold();
  const prefetch = fetchChunkBytes(fetcher, remote, blob.chunks, 'prefetch');
  await reader.started(1);
  const last = blob.chunks[blob.chunks.length - 1];
  const demand = fetchChunkBytes(fetcher, remote, [last], 'demand');
  release();
  const [got] = await demand;
  assert.ok(got.equals(blob.chunkData(last)));
  await prefetch;
  assert.equal(order[0].offset, blob.chunks[0].compressedOffset, 'the running prefetch went on');
  assert.equal(order[1].offset, last.compressedOffset, 'the promoted chunk came next');
  assert.equal(order[1].priority, 'demand');
  assert.ok(order.slice(2).every((o) => o.priority === 'prefetch'));
  assert.equal(order.length, blob.chunks.length, 'each chunk fetched once');
});

it('a reader waiting on a prefetch that fails gets the chunk fetched again as demand', async () => {
  const blob = await makeFakeBlob();
  const reader = blob.reader().inject({ kind: 'error' }, 1);
  const priorities: Array<Priority | undefined> = [];
  const read: RangeReader = (offset, length, verify, priority) => {
    priorities.push(priority);
    return reader.read(offset, length, verify, priority);
  };
  const fetcher = new ChunkFetcher();
  const remote = blob.remote(read);
  const c = blob.chunks[2];
  const release = reader.hold();
  const prefetch = fetchChunkBytes(fetcher, remote, [c], 'prefetch');
  await reader.started(1);
  const demand = fetchChunkBytes(fetcher, remote, [c], 'demand');
  release();
  await assert.rejects(prefetch, /injected/);
  const [got] = await demand;
  assert.ok(got.equals(blob.chunkData(c)));
  assert.deepEqual(priorities, ['prefetch', 'demand']);
});
