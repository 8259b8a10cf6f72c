// Fetching whole blobs ahead of readers: background prefetch after a mount, `prefetch IMAGE`, and the
// fill of a busy fanotify mount at shutdown. One loop over a blob's missing ranges serves all three.
import { log } from '../log';
import type { AccessTrace } from './access-trace';
import type { BlobCache } from './blob-cache';
import type { CacheBudget } from './cache-budget';
import { BACKGROUND_SLOTS, type Priority } from './limiter';

export interface FetchMissingOptions {
  priority: Priority;
  /** Ranges fetched at once (default 1). */
  workers?: number;
  /** Asked before each range: a reason to stop, or null to go on. */
  stopReason?: (bytes: number) => string | null;
  /** Awaited before each range: lets the caller hold the loop back for a while. */
  pause?: () => Promise<void>;
  /** A failed range is reported here and skipped; without it the first failure rejects. */
  onError?: (err: Error, offset: number) => void;
}

/** Fetches every chunk of `blob` not cached yet, a merged range at a time; resolves to the chunks fetched. */
export async function fetchMissing(blob: BlobCache, opts: FetchMissingOptions): Promise<number> {
  const ranges = blob.missingRanges();
  let next = 0;
  let fetched = 0;
  const worker = async () => {
    while (next < ranges.length) {
      await opts.pause?.();
      if (next >= ranges.length) return;
      const [start, end] = ranges[next++];
      const stop = opts.stopReason?.(end - start);
      if (stop) {
        log.info(`prefetch stopped: ${stop}`, { blob: blob.what });
        next = ranges.length;
        return;
      }
      try {
        const n = await blob.serve(start, end, { kind: 'cache' }, opts.priority);
        fetched += n; // not `fetched += await`: that would add to the value read before the await
      } catch (err) {
        if (!opts.onError) throw err;
        opts.onError(err as Error, start);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.workers ?? 1) }, worker));
  return fetched;
}

/**
 * Blind prefetch waits until demand misses have been quiet this long. A start's reads come in bursts
 * with short gaps (a process creating, imports between computations); a range fetched in a gap takes
 * the CPU the next burst's misses need to be decompressed, verified and answered.
 */
const DEMAND_QUIET_MS = 1000;

/** Background prefetch of every mounted blob, behind demand reads, short of the cache bound. */
export class Prefetcher {
  private stopped = false;
  private lastDemand = 0;

  constructor(
    /** Workers per blob; 0: no background prefetch. */
    private readonly workers: number,
    private readonly budget: CacheBudget,
    private readonly quietMs = DEMAND_QUIET_MS,
  ) {}

  /** Prefetches `blob` (just mounted) once demand has been quiet: a mount counts as demand about to come. */
  start(blob: BlobCache): void {
    if (this.workers <= 0) return;
    this.noteDemand();
    void fetchMissing(blob, {
      priority: 'background',
      // More ranges at once than the fetcher runs would only wait in its queue, each holding the
      // bookkeeping of every chunk in it: the daemon's heap, not its speed, would grow with `workers`.
      workers: Math.min(this.workers, BACKGROUND_SLOTS),
      // Beyond the bound's last tenth, prefetch would only evict what readers fetched: they know better what they need.
      stopReason: (bytes) =>
        this.stopped
          ? 'the daemon is stopping'
          : this.budget.nearBound(bytes)
            ? `at the cache bound (${this.budget.limit} bytes)`
            : null,
      onError: (err, offset) => log.warn('prefetch failed', { blob: blob.what, offset, error: err.message }),
      pause: () => this.quiet(),
    });
  }

  /** A demand miss happened: blind prefetch holds back while they are frequent. */
  noteDemand(): void {
    this.lastDemand = Date.now();
  }

  private async quiet(): Promise<void> {
    for (
      let wait = this.lastDemand + this.quietMs - Date.now();
      wait > 0 && !this.stopped;
      wait = this.lastDemand + this.quietMs - Date.now()
    ) {
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /**
   * Fetches what a checked access trace names as the fetcher's prefetch requests would take it, the
   * request the trace wants first going first, `workers` requests at once (by default as many as the
   * fetcher runs for prefetch: a request waits on the registry's latency as much as on its bytes, so
   * each free slot shortens the replay), behind demand reads, which keep their reserved slots.
   * Resolves to the chunks fetched once the trace is replayed.
   */
  async replay(
    trace: AccessTrace,
    blobs: readonly BlobCache[],
    workers = Math.max(1, ...blobs.map((b) => b.prefetchSlots)),
  ): Promise<number> {
    const batches = traceBatches(trace, blobs);
    const traced = new Set(trace.entries.map((e) => blobs[e.blob]));
    for (const blob of traced) blob.trace = 'replaying';
    let next = 0;
    let fetched = 0;
    const worker = async () => {
      while (!this.stopped && next < batches.length) {
        const { blob, chunks } = batches[next++];
        if (this.budget.nearBound(chunks.length * blob.index.trailer.chunkSize)) return;
        try {
          fetched += await blob.fetchChunks(chunks, 'prefetch');
        } catch (err) {
          log.warn('trace prefetch failed', { blob: blob.what, chunks: chunks.length, error: (err as Error).message });
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: workers }, worker));
    } finally {
      for (const blob of traced) blob.trace = 'replayed';
    }
    log.info('access trace replayed', { image: trace.image, chunks: trace.entries.length, fetched });
    return fetched;
  }

  stop(): void {
    this.stopped = true;
  }
}

/**
 * The trace's chunks as the Range GETs prefetch merges them into (one blob each), in the order the
 * trace first wants any of a request's chunks.
 */
export function traceBatches(
  trace: AccessTrace,
  blobs: readonly BlobCache[],
): Array<{ blob: BlobCache; chunks: number[] }> {
  const first = blobs.map(() => new Map<number, number>());
  trace.entries.forEach((e, i) => {
    if (!first[e.blob].has(e.chunk)) first[e.blob].set(e.chunk, i);
  });
  const out: Array<{ blob: BlobCache; chunks: number[]; at: number }> = [];
  blobs.forEach((blob, b) => {
    for (const chunks of blob.prefetchRequests([...first[b].keys()]))
      out.push({ blob, chunks, at: Math.min(...chunks.map((c) => first[b].get(c)!)) });
  });
  return out.sort((x, y) => x.at - y.at).map(({ blob, chunks }) => ({ blob, chunks }));
}
