// Which Range GETs a set of missing chunks becomes: adjacent chunks merged up to a size bound,
// small gaps bridged, every chunk in exactly one range.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ChunkEntry } from '../../src/blob/chunk-table';
import { planRanges } from '../../src/storage/range-plan';

/** Chunks of the given compressed sizes, laid out back to back, with `gaps[i]` unused bytes before chunk i. */
function layout(sizes: number[], gaps: number[] = []): ChunkEntry[] {
  let at = 0;
  return sizes.map((size, i) => {
    at += gaps[i] ?? 0;
    const c: ChunkEntry = {
      uncompressedOffset: i * 4096,
      uncompressedSize: 4096,
      compressedOffset: at,
      compressedSize: size,
      digest: Buffer.alloc(32, i),
    };
    at += size;
    return c;
  });
}

const spans = (chunks: readonly ChunkEntry[], maxBytes: number, maxGap = 0) =>
  planRanges(chunks, maxBytes, maxGap).map((r) => ({
    start: r.start,
    end: r.end,
    chunks: r.chunks.map((c) => chunks.indexOf(c)),
  }));

describe('planRanges', () => {
  it('merges adjacent chunks into one range', () => {
    assert.deepEqual(spans(layout([100, 200, 300]), 1 << 20), [{ start: 0, end: 600, chunks: [0, 1, 2] }]);
  });

  it('starts a new range where the next chunk would pass the size bound', () => {
    assert.deepEqual(spans(layout([100, 200, 300, 50]), 300), [
      { start: 0, end: 300, chunks: [0, 1] },
      { start: 300, end: 600, chunks: [2] },
      { start: 600, end: 650, chunks: [3] },
    ]);
  });

  it('gives a chunk larger than the bound a range of its own', () => {
    assert.deepEqual(spans(layout([10, 5000, 10]), 1000), [
      { start: 0, end: 10, chunks: [0] },
      { start: 10, end: 5010, chunks: [1] },
      { start: 5010, end: 5020, chunks: [2] },
    ]);
  });

  it('bridges a gap of at most maxGap bytes, and splits at a larger one', () => {
    const chunks = layout([100, 100, 100], [0, 64, 65]);
    assert.deepEqual(spans(chunks, 1 << 20, 64), [
      { start: 0, end: 264, chunks: [0, 1] },
      { start: 329, end: 429, chunks: [2] },
    ]);
    assert.equal(planRanges(chunks, 1 << 20, 0).length, 3, 'no gap bridged without maxGap');
  });

  it('orders chunks given in any order, and puts a chunk asked for twice in the range that has it', () => {
    const chunks = layout([100, 100, 100]);
    const ranges = planRanges([chunks[2], chunks[0], chunks[1], chunks[0]], 1 << 20);
    assert.equal(ranges.length, 1);
    assert.deepEqual([ranges[0].start, ranges[0].end], [0, 300]);
    assert.deepEqual(ranges[0].chunks, [chunks[0], chunks[0], chunks[1], chunks[2]]);
  });

  it('plans nothing for no chunks', () => {
    assert.deepEqual(planRanges([], 1 << 20), []);
  });
});
