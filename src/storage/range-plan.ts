// Turns the chunks a reader is missing into as few Range GETs as possible.
import type { ChunkEntry } from '../blob/chunk-table';

export interface FetchRange {
  /** Compressed byte range [start, end) of the blob. */
  start: number;
  end: number;
  chunks: ChunkEntry[];
}

/**
 * Merges chunks whose compressed bytes are adjacent (or at most `maxGap` apart: a small gap costs
 * less than another round trip) into ranges of at most `maxBytes`, unless a single chunk is larger.
 */
export function planRanges(chunks: readonly ChunkEntry[], maxBytes: number, maxGap = 0): FetchRange[] {
  const sorted = [...chunks].sort((a, b) => a.compressedOffset - b.compressedOffset);
  const ranges: FetchRange[] = [];
  for (const c of sorted) {
    const end = c.compressedOffset + c.compressedSize;
    const last = ranges[ranges.length - 1];
    if (
      last &&
      c.compressedOffset >= last.end &&
      c.compressedOffset - last.end <= maxGap &&
      end - last.start <= maxBytes
    ) {
      last.end = end;
      last.chunks.push(c);
    } else if (last && c.compressedOffset < last.end) {
      last.chunks.push(c); // the same chunk asked for twice
    } else {
      ranges.push({ start: c.compressedOffset, end, chunks: [c] });
    }
  }
  return ranges;
}
