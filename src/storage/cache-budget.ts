// The bound on the cache's disk use, enforced before each chunk is written: first whole blobs no
// mounted image uses (least recently used first), then the oldest chunks of mounted blobs, which
// later reads simply fetch again.
import { log } from '../log';
import type { BlobCache, SpaceReserver } from './blob-cache';

export interface BudgetSources {
  /** Removes unused blob files, LRU first, until the cache takes at most `target` bytes; returns the bytes freed. */
  evictUnused(target: number): number;
  /** Blobs of mounted images. */
  mounted(): readonly BlobCache[];
}

/** Evicting a little more than needed keeps every write from evicting a chunk of its own. */
const HEADROOM = 0.05;
/** Prefetch fills the cache up to this share of its bound, leaving the rest to demand reads. */
const PREFETCH_SHARE = 0.9;

export class CacheBudget implements SpaceReserver {
  private queue: Promise<void> = Promise.resolve();
  evictedBytes = 0;
  private warned = false;

  constructor(
    readonly limit: number,
    private used: number,
    private readonly sources: BudgetSources,
  ) {}

  get usedBytes(): number {
    return this.used;
  }

  /** Whether `bytes` more would take the cache into the last tenth below its bound (never without one). */
  nearBound(bytes: number): boolean {
    return this.limit > 0 && this.used + bytes > this.limit * PREFETCH_SHARE;
  }

  /** The cache's measured size, when nothing is being written (at start). */
  resync(used: number): void {
    this.used = used;
  }

  /** Bytes freed outside the budget (gc removing unused blob files). */
  release(bytes: number): void {
    this.used -= bytes;
    this.evictedBytes += bytes;
  }

  /** Evicts the oldest chunks of mounted blobs until the cache takes at most `target`; returns bytes freed. */
  async evictChunks(target: number): Promise<number> {
    let total = 0;
    while (this.used > target) {
      let victim: BlobCache | null = null;
      let oldest = Infinity;
      for (const b of this.sources.mounted()) {
        const t = b.oldestEvictable();
        if (t < oldest) [victim, oldest] = [b, t];
      }
      if (!victim) break;
      const freed = await victim.evictOldest(this.used - target);
      if (freed === 0) break;
      this.used -= freed;
      total += freed;
    }
    this.evictedBytes += total;
    return total;
  }

  reserve(bytes: number, forBlob: BlobCache): Promise<void> {
    return this.exclusive(() => this.makeRoom(bytes, forBlob));
  }

  /** Runs `fn` when no other eviction is under way: concurrent readers would all evict for the same room. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn);
    this.queue = next.then(
      () => undefined,
      () => undefined,
    );
    return next;
  }

  private async makeRoom(bytes: number, forBlob: BlobCache): Promise<void> {
    if (this.limit <= 0 || this.used + bytes <= this.limit) {
      this.used += bytes;
      return;
    }
    const target = Math.max(0, Math.floor(this.limit * (1 - HEADROOM)) - bytes);
    // Freed bytes, not a fresh measurement: chunks reserved but not written yet are not on disk so far.
    const freed = this.sources.evictUnused(target);
    this.used -= freed;
    this.evictedBytes += freed;
    await this.evictChunks(target);
    if (this.used + bytes > this.limit && !this.warned) {
      // Only chunks under active reads are left: serving them correctly comes before the bound.
      this.warned = true;
      log.warn('cache bound exceeded: every cached chunk is being read right now', {
        bound: this.limit,
        used: this.used,
        blob: forBlob.remote.what,
      });
    }
    this.used += bytes;
  }
}
