// The fetcher shared by every cache-miss transport: missing chunks -> merged Range GETs -> zstd
// decompression -> SHA-256 check. One fetch per chunk however many readers wait for it; nothing
// unverified is ever returned.
import type { RangeReader } from '../blob/blob-index';
import { decodeChunk } from '../blob/chunk-codec';
import type { ChunkEntry } from '../blob/chunk-table';
import { LRUCache } from 'lru-cache';
import { Limiter, type Priority, type QueuedTask } from './limiter';
import { planRanges } from './range-plan';

export interface RemoteBlob {
  /** The blob digest: chunks are identified by blob and uncompressed offset. */
  digest: string;
  /** Names the blob in errors and logs (image, blob). */
  what: string;
  /** Compressed bytes; a reader with several sources (mirrors) tries the next when the chunks in them fail verification. */
  read: RangeReader;
}

export interface FetchStats {
  requests: number;
  bytesFetched: number;
  chunksFetched: number;
  verifyFailures: number;
  failedRequests: number;
  memoryHits: number;
}

export interface FetcherOptions {
  /** Upper bound of one Range GET (compressed bytes). */
  maxRequestBytes?: number;
  /** Gap of unneeded compressed bytes worth fetching to save a request. */
  maxGap?: number;
  concurrency?: number;
  /** Of those, slots prefetch never takes (default a quarter). */
  reservedForDemand?: number;
  /** Bytes of recently used decompressed chunks kept in memory (default 64 MiB). */
  memoryCacheBytes?: number;
  /** Called with each request's duration in seconds (for the latency histogram). */
  observeLatency?: (seconds: number, bytes: number) => void;
}

export class ChunkFetcher {
  readonly stats: FetchStats = {
    requests: 0,
    bytesFetched: 0,
    chunksFetched: 0,
    verifyFailures: 0,
    failedRequests: 0,
    memoryHits: 0,
  };
  /** Verified chunks recently fetched: a chunk evicted from the page cache is served without the network. */
  private readonly recent: LRUCache<string, Buffer>;
  /** Chunks being fetched, and the priority their request has (or will run at). */
  private readonly inflight = new Map<string, { data: Promise<Buffer>; priority: Priority }>();
  /** Chunks whose request waits for a slot, with the handle that promotes it to demand. */
  private readonly queued = new Map<string, QueuedTask>();
  private readonly pending = new Map<string, { resolve: (b: Buffer) => void; reject: (e: Error) => void }>();
  private readonly limiter: Limiter;
  private readonly maxRequestBytes: number;
  private readonly maxGap: number;

  constructor(private readonly opts: FetcherOptions = {}) {
    this.limiter = new Limiter(opts.concurrency ?? 8, opts.reservedForDemand);
    this.maxRequestBytes = opts.maxRequestBytes ?? 4 << 20;
    this.maxGap = opts.maxGap ?? 64 << 10;
    this.recent = new LRUCache<string, Buffer>({
      maxSize: opts.memoryCacheBytes ?? 64 << 20,
      sizeCalculation: (b) => Math.max(1, b.length),
    });
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /** The verified uncompressed bytes of each wanted chunk, in the order asked. */
  getChunks(blob: RemoteBlob, wanted: readonly ChunkEntry[], priority: Priority = 'demand'): Promise<Buffer[]> {
    return Promise.all(this.getEachChunk(blob, wanted, priority));
  }

  /** One promise per wanted chunk, in the order asked: all asked for at once, so adjacent ones share requests. */
  getEachChunk(blob: RemoteBlob, wanted: readonly ChunkEntry[], priority: Priority = 'demand'): Array<Promise<Buffer>> {
    const result: Array<Promise<Buffer>> = [];
    const missing: ChunkEntry[] = [];
    for (const c of wanted) {
      const key = `${blob.digest}@${c.uncompressedOffset}`;
      const cached = this.recent.get(key);
      if (cached) {
        this.stats.memoryHits++;
        result.push(Promise.resolve(cached));
        continue;
      }
      const inflight = this.inflight.get(key);
      if (inflight && priority === 'demand' && inflight.priority === 'prefetch') {
        // A reader now waits for a chunk being prefetched: a queued request goes ahead of other prefetch;
        // one that fails (it had prefetch's fewer retries) is asked again as demand.
        this.queued.get(key)?.promote();
        const retried = inflight.data.catch(() => this.getEachChunk(blob, [c], 'demand')[0]);
        retried.catch(() => undefined);
        result.push(retried);
        continue;
      }
      if (inflight) {
        result.push(inflight.data);
        continue;
      }
      missing.push(c);
      const data = new Promise<Buffer>((resolve, reject) => this.pending.set(key, { resolve, reject }));
      data.catch(() => undefined);
      this.inflight.set(key, { data, priority });
      result.push(data);
    }
    for (const range of planRanges(missing, this.maxRequestBytes, this.maxGap)) {
      const keys = range.chunks.map((c) => `${blob.digest}@${c.uncompressedOffset}`);
      void this.limiter.run(
        priority,
        (effective) => {
          for (const k of keys) {
            this.queued.delete(k);
            const f = this.inflight.get(k);
            if (f) f.priority = effective;
          }
          return this.fetchRange(blob, range.start, range.end, range.chunks, effective);
        },
        (queued) => {
          for (const k of keys) this.queued.set(k, queued);
        },
      );
    }
    return result;
  }

  private async fetchRange(
    blob: RemoteBlob,
    start: number,
    end: number,
    chunks: ChunkEntry[],
    priority: Priority,
  ): Promise<void> {
    const settle = (c: ChunkEntry, value: Buffer | Error) => {
      const key = `${blob.digest}@${c.uncompressedOffset}`;
      const waiter = this.pending.get(key);
      this.pending.delete(key);
      this.inflight.delete(key);
      if (!waiter) return;
      if (value instanceof Error) waiter.reject(value);
      else waiter.resolve(value);
    };
    // The chunks decoded from the bytes last checked: a reader with several sources (mirrors) calls
    // the check for each and moves on when a chunk fails; a plain reader never calls it.
    let checkedBytes: Buffer | undefined;
    let decoded: Array<Buffer | Error> = [];
    const decodeAll = async (bytes: Buffer): Promise<Array<Buffer | Error>> => {
      const out = await Promise.all(
        chunks.map((c) =>
          decodeChunk(
            c,
            bytes.subarray(c.compressedOffset - start, c.compressedOffset - start + c.compressedSize),
            blob.what,
          ).catch((e: Error) => e),
        ),
      );
      this.stats.verifyFailures += out.filter((d) => d instanceof Error).length;
      return out;
    };
    const verify = async (bytes: Buffer): Promise<Error | null> => {
      decoded = await decodeAll(bytes);
      checkedBytes = bytes;
      return decoded.find((d): d is Error => d instanceof Error) ?? null;
    };
    let data: Buffer;
    const t0 = process.hrtime.bigint();
    try {
      this.stats.requests++;
      data = await blob.read(start, end - start, verify, priority);
      this.stats.bytesFetched += data.length;
      this.opts.observeLatency?.(Number(process.hrtime.bigint() - t0) / 1e9, data.length);
    } catch (err) {
      this.stats.failedRequests++;
      const e = new Error(`${blob.what}: fetching bytes ${start}-${end - 1}: ${(err as Error).message}`, {
        cause: err,
      });
      for (const c of chunks) settle(c, e);
      return;
    }
    if (checkedBytes !== data) decoded = await decodeAll(data);
    for (const [i, c] of chunks.entries()) {
      const chunk = decoded[i];
      if (!(chunk instanceof Error)) {
        this.recent.set(`${blob.digest}@${c.uncompressedOffset}`, chunk);
        this.stats.chunksFetched++;
      }
      settle(c, chunk);
    }
  }
}
