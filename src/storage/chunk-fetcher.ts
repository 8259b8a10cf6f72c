// The fetcher shared by every cache-miss transport: missing chunks -> merged Range GETs -> the
// destination, which verifies each chunk (zstd, SHA-256) and writes those that pass. One fetch per
// chunk however many readers wait for it; a chunk resolves only once verified and written.
import type { RangeReader } from '../blob/blob-index';
import { ChunkVerificationError } from '../blob/chunk-codec';
import type { ChunkEntry } from '../blob/chunk-table';
import { releaseBody } from '../oci/byte-stream';
import { Limiter, type Priority, type QueuedTask } from './limiter';
import { planRanges, type FetchRange } from './range-plan';

export interface RemoteBlob {
  /** The blob digest: chunks are identified by blob and uncompressed offset. */
  digest: string;
  /** Names the blob in errors and logs (image, blob). */
  what: string;
  /** Compressed bytes; a reader with several sources (mirrors) tries the next when the chunks in them fail verification. */
  read: RangeReader;
}

/** Where fetched chunks go: a blob's cache file. */
export interface ChunkDestination {
  /**
   * Verifies each of `chunks` from `bytes` (compressed bytes from offset `start` of the blob) and writes
   * those that pass; one result per chunk: null when written, else why it failed.
   */
  place(bytes: Buffer, start: number, chunks: readonly ChunkEntry[], priority: Priority): Promise<Array<Error | null>>;
}

export interface FetchStats {
  requests: number;
  bytesFetched: number;
  chunksFetched: number;
  verifyFailures: number;
  failedRequests: number;
}

export interface FetcherOptions {
  /** Upper bound of one Range GET (compressed bytes). */
  maxRequestBytes?: number;
  /** Gap of unneeded compressed bytes worth fetching to save a request. */
  maxGap?: number;
  /**
   * The same for prefetch (default 256 KiB): nobody waits on a prefetch request, so a larger gap only
   * costs bandwidth, while every request saved spares the registry its fixed cost per request.
   */
  prefetchGap?: number;
  concurrency?: number;
  /** Of those, slots prefetch never takes (default a quarter). */
  reservedForDemand?: number;
  /** Called with each request's duration in seconds (for the latency histogram). */
  observeLatency?: (seconds: number, bytes: number) => void;
}

/** Compressed bytes decoded at a time of a request's chunks no reader waits for. */
const BATCH_BYTES = 1 << 20;

/** The first chunks of `chunks` up to `bytes` compressed bytes, at least one. */
function nextBatch(chunks: readonly ChunkEntry[], bytes: number): ChunkEntry[] {
  const out: ChunkEntry[] = [];
  let sum = 0;
  for (const c of chunks) {
    if (out.length > 0 && sum + c.compressedSize > bytes) break;
    out.push(c);
    sum += c.compressedSize;
  }
  return out;
}

export class ChunkFetcher {
  readonly stats: FetchStats = {
    requests: 0,
    bytesFetched: 0,
    chunksFetched: 0,
    verifyFailures: 0,
    failedRequests: 0,
  };
  /**
   * Chunks being fetched, the priority their request has (or will run at), whether they were asked for
   * as read-ahead, and whether a reader has come to wait for one asked for as read-ahead or at a lower
   * priority (its bytes are then decoded first, as demand's are).
   */
  private readonly inflight = new Map<
    string,
    { data: Promise<void>; priority: Priority; ahead?: boolean; readerWaits?: boolean }
  >();
  /** Chunks whose request waits for a slot, with the handle that promotes it to demand. */
  private readonly queued = new Map<string, QueuedTask>();
  private readonly pending = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  private readonly limiter: Limiter;
  private readonly maxRequestBytes: number;
  private readonly maxGap: number;
  private readonly prefetchGap: number;

  constructor(private readonly opts: FetcherOptions = {}) {
    this.limiter = new Limiter(opts.concurrency ?? 8, opts.reservedForDemand);
    this.maxRequestBytes = opts.maxRequestBytes ?? 4 << 20;
    this.maxGap = opts.maxGap ?? 64 << 10;
    this.prefetchGap = opts.prefetchGap ?? 256 << 10;
  }

  /** Prefetch requests that can run at once: demand keeps the rest of the slots. */
  get prefetchSlots(): number {
    return this.limiter.prefetchSlots;
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /**
   * One promise per wanted chunk, in the order asked, resolved once it is verified and written to `dest`
   * (a chunk already in flight is written by its first asker's destination: one per blob digest). All
   * are asked for at once, so adjacent ones share requests. Chunks from `aheadFrom` on are read-ahead:
   * in the same requests, but decoded after the others of their request, whose readers wait.
   */
  getEachChunk(
    blob: RemoteBlob,
    wanted: readonly ChunkEntry[],
    dest: ChunkDestination,
    priority: Priority = 'demand',
    aheadFrom = wanted.length,
  ): Array<Promise<void>> {
    const result: Array<Promise<void>> = [];
    const missing: ChunkEntry[] = [];
    for (const [i, c] of wanted.entries()) {
      const key = `${blob.digest}@${c.uncompressedOffset}`;
      const inflight = this.inflight.get(key);
      if (inflight?.ahead && priority === 'demand' && i < aheadFrom) inflight.readerWaits = true;
      if (inflight && priority === 'demand' && inflight.priority !== 'demand') {
        // A reader now waits for a chunk being prefetched: a queued request goes ahead of other prefetch;
        // one that fails (it had prefetch's fewer retries) is asked again as demand.
        this.queued.get(key)?.promote();
        inflight.readerWaits = true;
        const retried = inflight.data.catch(() => this.getEachChunk(blob, [c], dest, 'demand')[0]);
        retried.catch(() => undefined);
        result.push(retried);
        continue;
      }
      if (inflight) {
        result.push(inflight.data);
        continue;
      }
      missing.push(c);
      const data = new Promise<void>((resolve, reject) => this.pending.set(key, { resolve, reject }));
      data.catch(() => undefined);
      this.inflight.set(key, { data, priority, ahead: i >= aheadFrom });
      result.push(data);
    }
    for (const range of this.plan(missing, priority)) {
      const keys = range.chunks.map((c) => `${blob.digest}@${c.uncompressedOffset}`);
      void this.limiter.run(
        priority,
        (effective) => {
          for (const k of keys) {
            this.queued.delete(k);
            const f = this.inflight.get(k);
            if (f) f.priority = effective;
          }
          return this.fetchRange(blob, dest, range.start, range.end, range.chunks, effective);
        },
        (queued) => {
          for (const k of keys) this.queued.set(k, queued);
        },
      );
    }
    return result;
  }

  /** The Range GETs `chunks` of one blob take when fetched at `priority`. */
  plan(chunks: readonly ChunkEntry[], priority: Priority): FetchRange[] {
    return planRanges(chunks, this.maxRequestBytes, priority === 'demand' ? this.maxGap : this.prefetchGap);
  }

  private async fetchRange(
    blob: RemoteBlob,
    dest: ChunkDestination,
    start: number,
    end: number,
    chunks: ChunkEntry[],
    priority: Priority,
  ): Promise<void> {
    const settle = (c: ChunkEntry, fault: Error | null) => {
      const key = `${blob.digest}@${c.uncompressedOffset}`;
      const waiter = this.pending.get(key);
      this.pending.delete(key);
      this.inflight.delete(key);
      if (!waiter) return;
      if (fault) waiter.reject(fault);
      else waiter.resolve();
    };
    // What placing the bytes last checked gave: a reader with several sources (mirrors) calls the
    // check for each and moves on when a chunk fails; a plain reader never calls it.
    let checkedBytes: Buffer | undefined;
    let faults: Array<Error | null> = [];
    const flags = (c: ChunkEntry) => this.inflight.get(`${blob.digest}@${c.uncompressedOffset}`);
    const place = async (bytes: Buffer, some: readonly ChunkEntry[]): Promise<Array<Error | null>> => {
      const waited = some.some((c) => flags(c)?.readerWaits);
      let out: Array<Error | null>;
      try {
        out = await dest.place(bytes, start, some, waited ? 'demand' : priority);
      } catch (err) {
        out = some.map(() => err as Error);
      }
      this.stats.verifyFailures += out.filter((f) => f instanceof ChunkVerificationError).length;
      return out;
    };
    // Chunks readers wait for are decoded first and settled as soon as they are written; the others
    // (read-ahead, prefetch) a batch at a time, so that a reader who comes to wait for one of them
    // meanwhile is next. A chunk that failed is settled only once no other source is left to try.
    const settled = new Set<ChunkEntry>();
    const urgent = (c: ChunkEntry) => (priority === 'demand' && !flags(c)?.ahead) || flags(c)?.readerWaits;
    const done = (c: ChunkEntry) => {
      if (settled.has(c)) return;
      settled.add(c);
      this.stats.chunksFetched++;
      settle(c, null);
    };
    // While the body comes in, a chunk a reader waits for is placed as soon as its bytes are there, not
    // after the rest of the request (read-ahead, a trace's other chunks). One that fails is left to the
    // whole body's pass below, which counts the failure and may try another source.
    const early = new Map<ChunkEntry, Promise<void>>();
    // The body being received: another attempt or source fills another buffer (small ones may share
    // an ArrayBuffer, at other offsets), and starts again from none.
    let receiving: { bytes: ArrayBufferLike; at: number; complete: number; waiting: ChunkEntry[] } | null = null;
    const onBytes = (received: Buffer) => {
      if (receiving?.bytes !== received.buffer || receiving.at !== received.byteOffset)
        receiving = { bytes: received.buffer, at: received.byteOffset, complete: 0, waiting: [] };
      const r = receiving;
      for (; r.complete < chunks.length; r.complete++) {
        const c = chunks[r.complete];
        if (c.compressedOffset + c.compressedSize - start > received.length) break;
        r.waiting.push(c);
      }
      r.waiting = r.waiting.filter((c) => {
        if (settled.has(c) || early.has(c)) return false;
        if (!urgent(c)) return true;
        early.set(
          c,
          dest.place(received, start, [c], 'demand').then(
            ([fault]) => (fault === null ? done(c) : undefined),
            () => undefined,
          ),
        );
        return false;
      });
    };
    const earlyPlaced = () => Promise.all(early.values());
    const placeInOrder = async (bytes: Buffer): Promise<Array<Error | null>> => {
      // Nothing decodes a chunk twice at once, and nothing reads the body once it is released.
      await earlyPlaced();
      const got = new Map<ChunkEntry, Error | null>();
      for (const c of chunks) if (settled.has(c)) got.set(c, null);
      let todo: readonly ChunkEntry[] = chunks.filter((c) => !got.has(c));
      while (todo.length > 0) {
        const waited = todo.filter(urgent);
        const batch = waited.length > 0 ? waited : nextBatch(todo, BATCH_BYTES);
        const out = await place(bytes, batch);
        batch.forEach((c, i) => {
          got.set(c, out[i]);
          if (out[i] === null) done(c);
        });
        todo = todo.filter((c) => !got.has(c));
      }
      return chunks.map((c) => got.get(c)!);
    };
    const verify = async (bytes: Buffer): Promise<Error | null> => {
      faults = await placeInOrder(bytes);
      checkedBytes = bytes;
      return faults.find((f) => f instanceof ChunkVerificationError) ?? null; // a failed write is no reason to try another source
    };
    let data: Buffer;
    const t0 = process.hrtime.bigint();
    try {
      this.stats.requests++;
      data = await blob.read(start, end - start, verify, priority, onBytes);
      this.stats.bytesFetched += data.length;
      this.opts.observeLatency?.(Number(process.hrtime.bigint() - t0) / 1e9, data.length);
    } catch (err) {
      this.stats.failedRequests++;
      await earlyPlaced(); // a chunk placed from the bytes that did come is the reader's
      const e = new Error(`${blob.what}: fetching bytes ${start}-${end - 1}: ${(err as Error).message}`, {
        cause: err,
      });
      for (const c of chunks) if (!settled.has(c)) settle(c, e);
      return;
    }
    if (checkedBytes !== data) faults = await placeInOrder(data);
    chunks.forEach((c, i) => {
      if (faults[i] !== null) settle(c, faults[i]);
    });
    // Every chunk of the request is decoded from these bytes or failed: nothing reads them again.
    releaseBody(data);
  }
}
