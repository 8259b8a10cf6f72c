// The cache's disk bound, with fake sources: blob files no mount uses go first, then the oldest
// chunks of mounted blobs; evictions never overlap; a cache of only pinned chunks still serves.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlobCache } from '../../src/storage/blob-cache';
import { CacheBudget, type BudgetSources } from '../../src/storage/cache-budget';
import { captureLogs } from '../lib/log-capture';

/** A mounted blob with chunks of `size` bytes written at the given times; `pinned` ones cannot go. */
class FakeMountedBlob {
  readonly evicted: number[] = [];
  /** While set, an eviction waits for it (to see whether another starts meanwhile). */
  gate: Promise<void> | null = null;
  readonly remote: { what: string };
  evicting = 0;
  maxEvicting = 0;

  constructor(
    readonly name: string,
    private readonly chunks: Array<{ at: number; size: number; pinned?: boolean }>,
  ) {
    this.remote = { what: `blob ${name}` };
  }

  oldestEvictable(): number {
    return Math.min(Infinity, ...this.chunks.filter((c) => !c.pinned).map((c) => c.at));
  }

  async evictOldest(bytes: number): Promise<number> {
    this.evicting++;
    this.maxEvicting = Math.max(this.maxEvicting, this.evicting);
    try {
      if (this.gate) await this.gate;
      let freed = 0;
      for (const c of [...this.chunks].sort((a, b) => a.at - b.at)) {
        if (freed >= bytes) break;
        if (c.pinned) continue;
        this.chunks.splice(this.chunks.indexOf(c), 1);
        this.evicted.push(c.at);
        freed += c.size;
      }
      return freed;
    } finally {
      this.evicting--;
    }
  }

  asCache(): BlobCache {
    return this as unknown as BlobCache;
  }
}

function sources(
  unusedBytes: number,
  mounted: FakeMountedBlob[],
): BudgetSources & { targets: number[]; unused: number } {
  const s = {
    unused: unusedBytes,
    targets: [] as number[],
    evictUnused(target: number): number {
      s.targets.push(target);
      const freed = s.unused;
      s.unused = 0;
      return freed;
    },
    mounted: () => mounted.map((b) => b.asCache()),
  };
  return s;
}

const KiB = 1024;

describe('CacheBudget', () => {
  it('reserves room under the bound without evicting anything', async () => {
    const blob = new FakeMountedBlob('a', [{ at: 1, size: 4 * KiB }]);
    const src = sources(10 * KiB, [blob]);
    const budget = new CacheBudget(100 * KiB, 50 * KiB, src);
    await budget.reserve(40 * KiB, blob.asCache());
    assert.equal(budget.usedBytes, 90 * KiB);
    assert.deepEqual(src.targets, []);
    assert.deepEqual(blob.evicted, []);
    assert.equal(budget.evictedBytes, 0);
  });

  it('is unbounded with a limit of 0', async () => {
    const src = sources(10 * KiB, []);
    const budget = new CacheBudget(0, 1 << 30, src);
    await budget.reserve(1 << 30, new FakeMountedBlob('a', []).asCache());
    assert.equal(budget.usedBytes, 2 ** 31);
    assert.deepEqual(src.targets, []);
  });

  it('removes unused blob files first, and leaves mounted chunks alone when that is enough', async () => {
    const blob = new FakeMountedBlob('a', [{ at: 1, size: 8 * KiB }]);
    const src = sources(30 * KiB, [blob]);
    const budget = new CacheBudget(100 * KiB, 95 * KiB, src);
    await budget.reserve(10 * KiB, blob.asCache());
    assert.equal(src.targets.length, 1);
    assert.ok(src.targets[0] <= 90 * KiB, `asked to shrink to ${src.targets[0]}, which leaves no room for 10 KiB`);
    assert.deepEqual(blob.evicted, []);
    assert.equal(budget.usedBytes, 75 * KiB);
    assert.equal(budget.evictedBytes, 30 * KiB);
  });

  it('then evicts chunks of the mounted blob with the oldest one, then of the next, never a pinned one', async () => {
    const a = new FakeMountedBlob('a', [
      { at: 1, size: 10 * KiB, pinned: true },
      { at: 4, size: 10 * KiB },
      { at: 6, size: 10 * KiB },
    ]);
    const b = new FakeMountedBlob('b', [{ at: 2, size: 10 * KiB }]);
    const budget = new CacheBudget(50 * KiB, 50 * KiB, sources(0, [a, b]));
    await budget.reserve(15 * KiB, a.asCache());
    assert.deepEqual(b.evicted, [2]);
    assert.deepEqual(a.evicted, [4]);
    assert.ok(budget.usedBytes <= 50 * KiB, `used ${budget.usedBytes}`);
    assert.equal(budget.usedBytes, 45 * KiB);
    assert.equal(budget.evictedBytes, 20 * KiB);
  });

  it('when only pinned chunks are left, reserves anyway, above the bound, and warns once', async () => {
    const logs = captureLogs();
    try {
      const a = new FakeMountedBlob('a', [{ at: 1, size: 40 * KiB, pinned: true }]);
      const budget = new CacheBudget(40 * KiB, 40 * KiB, sources(0, [a]));
      await budget.reserve(8 * KiB, a.asCache());
      await budget.reserve(8 * KiB, a.asCache());
      assert.equal(budget.usedBytes, 56 * KiB);
      const warnings = logs.records.filter((r) => r.level === 'warn' && /cache bound exceeded/.test(String(r.message)));
      assert.equal(warnings.length, 1);
      assert.equal(warnings[0].blob, 'blob a');
    } finally {
      logs.stop();
    }
  });

  it('runs one eviction at a time: concurrent reserves do not all evict for the same room', async () => {
    const chunks = Array.from({ length: 10 }, (_, i) => ({ at: i + 1, size: 10 * KiB }));
    const a = new FakeMountedBlob('a', chunks);
    let open!: () => void;
    a.gate = new Promise((resolve) => (open = resolve));
    const budget = new CacheBudget(100 * KiB, 100 * KiB, sources(0, [a]));
    const reserves = [budget.reserve(10 * KiB, a.asCache()), budget.reserve(10 * KiB, a.asCache())];
    await new Promise((resolve) => setImmediate(resolve));
    open();
    await Promise.all(reserves);
    assert.equal(a.maxEvicting, 1);
    assert.ok(budget.usedBytes <= 100 * KiB, `used ${budget.usedBytes}`);
    // The second reserve found the room the first one's headroom made: fewer chunks than two full evictions.
    assert.ok(a.evicted.length < 4, `evicted ${a.evicted.length} chunks`);
  });

  it('counts bytes freed outside it (gc) and a measured size', () => {
    const budget = new CacheBudget(100, 80, sources(0, []));
    budget.release(30);
    assert.equal(budget.usedBytes, 50);
    assert.equal(budget.evictedBytes, 30);
    budget.resync(70);
    assert.equal(budget.usedBytes, 70);
  });
});
