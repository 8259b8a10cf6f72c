// Fetching whole blobs ahead of readers: background prefetch after a mount, `prefetch IMAGE`, and the
// fill of a busy fanotify mount at shutdown. One loop over a blob's missing ranges serves all three.
import { log } from '../log';
import type { BlobCache } from './blob-cache';
import type { CacheBudget } from './cache-budget';
import type { Priority } from './limiter';

export interface FetchMissingOptions {
  priority: Priority;
  /** Ranges fetched at once (default 1). */
  workers?: number;
  /** Asked before each range: a reason to stop, or null to go on. */
  stopReason?: (bytes: number) => string | null;
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

/** Background prefetch of every mounted blob, behind demand reads, short of the cache bound. */
export class Prefetcher {
  private stopped = false;

  constructor(
    /** Workers per blob; 0: no background prefetch. */
    private readonly workers: number,
    private readonly budget: CacheBudget,
  ) {}

  start(blob: BlobCache): void {
    if (this.workers <= 0) return;
    void fetchMissing(blob, {
      priority: 'prefetch',
      workers: this.workers,
      // Beyond the bound's last tenth, prefetch would only evict what readers fetched: they know better what they need.
      stopReason: (bytes) =>
        this.stopped
          ? 'the daemon is stopping'
          : this.budget.nearBound(bytes)
            ? `at the cache bound (${this.budget.limit} bytes)`
            : null,
      onError: (err, offset) => log.warn('prefetch failed', { blob: blob.what, offset, error: err.message }),
    });
  }

  stop(): void {
    this.stopped = true;
  }
}
