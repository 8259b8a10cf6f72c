// The blob cache files of the node (<cache-dir>/blobs/<digest hex>): one per blob, shared by every
// image using it, opened once, and removed least recently used first when no mounted image uses them.
// The node's chunk index (./chunk-index) lists the chunks present in every one of them, open or not:
// a blob's miss for a chunk another cache file holds is copied from there (`copyFromNode`).
import fs from 'node:fs';
import path from 'node:path';
import type { BlobIndex } from '../blob/blob-index';
import { ChunkVerificationError } from '../blob/chunk-codec';
import type { ChunkEntry } from '../blob/chunk-table';
import { log } from '../log';
import { digestHex } from '../oci/digest';
import {
  BlobCache,
  heldChunks,
  DEFAULT_READ_AHEAD,
  type NodeChunks,
  type ReadAhead,
  type SpaceReserver,
} from './blob-cache';
import type { ChunkFetcher, RemoteBlob } from './chunk-fetcher';
import { ChunkIndex } from './chunk-index';

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

/** A cache file's name is its blob's digest in hex. */
const CACHE_FILE = /^[0-9a-f]{64}$/;

export class BlobStore implements NodeChunks {
  private readonly open = new Map<string, BlobCache>();
  /** The chunks present in the cache files, by SHA-256: true at every moment, checked at every use. */
  readonly chunks = new ChunkIndex();

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
    this.chunks.dropBlob(remote.digest); // the file is scanned afresh as it is opened
    const cache = BlobCache.open(path.join(this.dir, digestHex(remote.digest)), remote, index, this.fetcher, this);
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
      this.chunks.dropBlob(digest);
      fs.rmSync(path.join(this.dir, f.name), { force: true });
      total -= f.bytes;
      freed += f.bytes;
      removed.push(digest);
    }
    if (removed.length > 0) log.info('cache evicted unused blobs', { removed, freedBytes: freed, cacheBytes: total });
    return { removed, freedBytes: freed, cacheBytes: total };
  }

  /**
   * Lists in the chunk index the chunks present in the cache files not open (at start: every one),
   * with each blob's chunk table as `tableOf` gives it (null: unknown, the file is left out). A chunk is
   * present when all its blocks are (SEEK_DATA/SEEK_HOLE), as when its blob is opened. Returns the
   * number of chunks listed.
   */
  indexCacheFiles(tableOf: (blob: string) => readonly ChunkEntry[] | null): number {
    let listed = 0;
    for (const name of fs.readdirSync(this.dir)) {
      const blob = `sha256:${name}`;
      if (!CACHE_FILE.test(name) || this.open.has(blob)) continue;
      try {
        const chunks = tableOf(blob);
        if (!chunks) continue;
        const fd = fs.openSync(path.join(this.dir, name), fs.constants.O_RDONLY);
        try {
          const size = fs.fstatSync(fd).size;
          for (const i of heldChunks(fd, chunks, size)) {
            if (chunks[i].uncompressedOffset + chunks[i].uncompressedSize > size) continue;
            this.chunks.add(blob, chunks[i]);
            listed++;
          }
        } finally {
          fs.closeSync(fd);
        }
      } catch (err) {
        log.warn('cache file left out of the chunk index', { blob, error: (err as Error).message });
      }
    }
    return listed;
  }

  noted(blob: BlobCache, c: ChunkEntry, present: boolean): void {
    if (present) this.chunks.add(blob.remote.digest, c);
    else this.chunks.drop(blob.remote.digest, c.uncompressedOffset);
  }

  holds(blob: BlobCache, c: ChunkEntry): boolean {
    return this.chunks.places(c.digest, blob.remote.digest).length > 0;
  }

  /**
   * Tries each cache file the index lists for `c`'s digest: an open one lends its fd with the chunk
   * pinned; one not open is opened read-only for the copy (removed meanwhile, its bytes stay readable
   * through the fd). A source that no longer holds the chunk's bytes is dropped from the index.
   */
  async copyFromNode(
    dest: BlobCache,
    c: ChunkEntry,
    copy: (fd: number, offset: number) => Promise<Error | null>,
  ): Promise<boolean> {
    for (const { blob, offset } of this.chunks.places(c.digest, dest.remote.digest)) {
      const source = this.open.get(blob);
      const fault = source
        ? await source.lend(offset, (fd) => copy(fd, offset))
        : await this.withCacheFile(blob, (fd) => copy(fd, offset));
      if (fault === null) {
        this.chunks.countCopy(c);
        return true;
      }
      if (fault !== undefined && !(fault instanceof ChunkVerificationError)) throw fault; // the destination failed
      this.chunks.drop(blob, offset);
      this.chunks.stats.staleSources++;
      if (fault)
        log.warn('a cached chunk does not hold its bytes: no longer copied from', {
          source: blob,
          offset,
          error: fault.message,
        });
    }
    return false;
  }

  /** Runs `op` with a read-only fd of `blob`'s cache file; undefined when there is none. */
  private async withCacheFile<T>(blob: string, op: (fd: number) => Promise<T>): Promise<T | undefined> {
    let fd: number;
    try {
      fd = fs.openSync(path.join(this.dir, digestHex(blob)), fs.constants.O_RDONLY);
    } catch {
      return undefined;
    }
    try {
      return await op(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}
