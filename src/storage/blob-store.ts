// The blob cache files of the node (<cache-dir>/blobs/<digest hex>): one per blob, shared by every
// image using it, opened once, and removed least recently used first when no mounted image uses them.
import fs from 'node:fs';
import path from 'node:path';
import type { BlobIndex } from '../blob/blob-index';
import { log } from '../log';
import { digestHex } from '../oci/digest';
import { BlobCache, DEFAULT_READ_AHEAD, type ReadAhead, type SpaceReserver } from './blob-cache';
import type { ChunkFetcher, RemoteBlob } from './chunk-fetcher';

export interface EvictionResult {
  /** Digests of the blobs removed. */
  removed: string[];
  freedBytes: number;
  /** What the cache files take afterwards. */
  cacheBytes: number;
}

/** A blob's cache file is "used" when an image using it is mounted: its mtime orders eviction. */
function touch(file: string): void {
  const now = new Date();
  fs.utimesSync(file, now, now);
}

export class BlobStore {
  private readonly open = new Map<string, BlobCache>();

  constructor(
    readonly dir: string,
    private readonly fetcher: ChunkFetcher,
    /** Enforces the cache bound before chunks are written; none: unbounded. */
    private readonly space: SpaceReserver | null = null,
    private readonly readAhead: ReadAhead = DEFAULT_READ_AHEAD,
  ) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** The open cache of `digest`, marked used now; undefined when it is not open. */
  get(digest: string): BlobCache | undefined {
    const known = this.open.get(digest);
    if (known) touch(known.path);
    return known;
  }

  /** Opens (creating it sparse) the cache file of a blob, marked used now. */
  add(remote: RemoteBlob, index: BlobIndex): BlobCache {
    const cache = BlobCache.open(path.join(this.dir, digestHex(remote.digest)), remote, index, this.fetcher);
    cache.space = this.space;
    cache.readAhead = this.readAhead;
    this.open.set(remote.digest, cache);
    touch(cache.path);
    return cache;
  }

  all(): BlobCache[] {
    return [...this.open.values()];
  }

  /** Bytes the open blob cache files take on disk. */
  cacheBytes(): number {
    return this.all().reduce((n, b) => n + b.allocatedBytes, 0);
  }

  /**
   * Removes cache files of blobs not in `inUse`, least recently used first, until the cache takes at
   * most `target` bytes (Infinity: removes nothing, measures).
   */
  evictUnused(inUse: readonly BlobCache[], target: number): EvictionResult {
    const used = new Set(inUse.map((b) => path.basename(b.path)));
    const files = fs.readdirSync(this.dir).map((name) => {
      const st = fs.statSync(path.join(this.dir, name));
      return { name, bytes: st.blocks * 512, mtime: st.mtimeMs };
    });
    let total = files.reduce((n, f) => n + f.bytes, 0);
    const removed: string[] = [];
    let freed = 0;
    for (const f of files.filter((x) => !used.has(x.name)).sort((x, y) => x.mtime - y.mtime)) {
      if (total <= target) break;
      const digest = `sha256:${f.name}`;
      this.open.get(digest)?.close();
      this.open.delete(digest);
      fs.rmSync(path.join(this.dir, f.name), { force: true });
      total -= f.bytes;
      freed += f.bytes;
      removed.push(digest);
    }
    if (removed.length > 0) log.info('cache evicted unused blobs', { removed, freedBytes: freed, cacheBytes: total });
    return { removed, freedBytes: freed, cacheBytes: total };
  }
}
