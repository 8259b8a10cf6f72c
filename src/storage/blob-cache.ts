// The persistent cache of one data blob: a sparse file of the blob's uncompressed size holding each
// chunk at its offset. What is present is whatever is allocated (SEEK_DATA/SEEK_HOLE), so a restarted
// daemon reuses it without fetching again. `serve` is the one path of a cache miss. Under cachefiles
// the kernel's cache object of the blob takes the cache file's place (`keepInKernelObject`).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { BlobIndex } from '../blob/blob-index';
import { copyChunkInto, decodeChunksInto } from '../blob/chunk-codec';
import { chunkIndexRange, type ChunkEntry } from '../blob/chunk-table';
import { BLOCK_SIZE } from '../erofs/format';
import { native } from '../native';
import { log } from '../log';
import { readAt } from '../read-at';
import type { ChunkDestination, ChunkFetcher, RemoteBlob } from './chunk-fetcher';
import { ChunkState, indexRange } from './chunk-state';
import type { Priority } from './limiter';
import type { RangeSink, RangeSource } from './range-source';

/** Room on disk for new chunks: `reserve` may evict other chunks or blobs first (cache-budget.ts). */
export interface SpaceReserver {
  reserve(bytes: number, forBlob: BlobCache): Promise<void>;
}

/**
 * The kernel's own cache file of a blob (a cachefiles object), reached through the anonymous fds the
 * kernel hands the daemon; writes through them are direct I/O, and the daemon cannot read them back.
 */
export interface KernelObject {
  /**
   * Runs `op` with an fd of the object, kept open until `op` settles; rejects when the kernel has no
   * object of the blob open now.
   */
  use<T>(op: (fd: number) => T | Promise<T>): Promise<T>;
}

/**
 * The node's other cache files as sources of chunks (blob-store.ts keeps the index of their chunks by
 * SHA-256): a missing chunk another blob holds is copied from there, checked like a fetched one.
 */
export interface NodeChunks {
  /** Chunk `c` of `blob` became present in its cache file (true), or left it (false). */
  noted(blob: BlobCache, c: ChunkEntry, present: boolean): void;
  /** Whether another cache file of the node is known to hold a chunk of `c`'s digest. */
  holds(blob: BlobCache, c: ChunkEntry): boolean;
  /**
   * Calls `copy` with an fd and offset of each known copy of `c`'s digest elsewhere until one was written
   * into `blob`; false when none was (a source gone or corrupt is dropped from the index).
   */
  copyFromNode(
    blob: BlobCache,
    c: ChunkEntry,
    copy: (fd: number, offset: number) => Promise<Error | null>,
  ): Promise<boolean>;
}

/** The bytes a chunk takes in the cache file: chunks start on block boundaries. */
function alignedEnd(c: ChunkEntry): number {
  return c.uncompressedOffset + Math.ceil(c.uncompressedSize / BLOCK_SIZE) * BLOCK_SIZE;
}

/**
 * Whether the file `fd` (of `size` bytes) holds chunk `c`: every block of it allocated (SEEK_DATA and
 * SEEK_HOLE). Why that means its verified bytes: the invariant in BlobCache's constructor.
 */
export function chunkHeld(fd: number, c: ChunkEntry, size: number): boolean {
  return (
    native.seekData(fd, c.uncompressedOffset) === c.uncompressedOffset &&
    native.seekHole(fd, c.uncompressedOffset) >= Math.min(alignedEnd(c), size)
  );
}

/**
 * The indexes of `chunks` (in offset order) that the file `fd` (of `size` bytes) holds, each exactly as
 * `chunkHeld` would tell, found by walking the file's data extents: a few calls for a file that is
 * mostly holes or mostly data, not two per chunk.
 */
export function heldChunks(fd: number, chunks: readonly ChunkEntry[], size: number): number[] {
  const held: number[] = [];
  let i = 0;
  for (let data = native.seekData(fd, 0); data >= 0 && data < size && i < chunks.length;) {
    const hole = native.seekHole(fd, data);
    const extentEnd = hole < 0 ? size : hole;
    for (; i < chunks.length && chunks[i].uncompressedOffset < extentEnd; i++) {
      const c = chunks[i];
      if (c.uncompressedOffset >= data && Math.min(alignedEnd(c), size) <= extentEnd) held.push(i);
    }
    data = extentEnd >= size ? -1 : native.seekData(fd, extentEnd);
  }
  return held;
}

/** How far a demand miss reads ahead in its blob. */
export interface ReadAhead {
  /** The most compressed bytes fetched past a miss, reached by doubling on near misses; 0: none. */
  maxBytes: number;
}

export const DEFAULT_READ_AHEAD: ReadAhead = { maxBytes: 8 << 20 };

/** The read-ahead window of a first miss in a blob whose trace was replayed: about one chunk. */
const FIRST_WINDOW_AFTER_TRACE = 256 << 10;

/**
 * The share of a read-ahead window spent on the chunks just before a miss: a reader moves backwards
 * too (a loader reads an ELF's headers, then sections behind them; a package's files are read in
 * another order than the tar's), and such misses would otherwise each cost a round trip.
 */
const BEHIND_SHARE = 3 / 8;

export class BlobCache implements RangeSource, ChunkDestination {
  private readonly state: ChunkState;
  /** Observers of demand reads (access traces): the chunk indexes of each range served. */
  private readonly demandListeners = new Set<(chunks: readonly number[]) => void>();
  /** The last demand miss's first chunk, the chunk after its read-ahead, and the window (compressed bytes) it had. */
  private sequential = { from: -1, next: -1, window: 0 };
  readAhead: ReadAhead = DEFAULT_READ_AHEAD;
  /**
   * Whether an access trace of this blob is being replayed, or was. It names what readers will want:
   * while it replays a demand miss fetches its own chunks only (read-ahead would fetch what the trace
   * does not name, beside it); after it, a miss is most likely a read the trace did not foresee, and
   * read-ahead starts from its smallest window, growing only if misses turn out sequential.
   */
  trace: 'none' | 'replaying' | 'replayed' = 'none';
  /** Hole punches under way: a chunk fetched again meanwhile is written only after its punch. */
  private readonly punching = new Map<number, Promise<void>>();
  /** Copies from another cache file under way, each resolving to whether it was written. */
  private readonly copying = new Map<number, Promise<boolean>>();
  private closed = false;
  /** I/O on the fd under way on the thread pool: the fd is closed only once it is done. */
  private busy = 0;
  /** Reads answered from the cache file alone / that needed chunks fetched. */
  hits = 0;
  misses = 0;
  evictedChunks = 0;
  space: SpaceReserver | null = null;
  /** Set under cachefiles: where chunks go instead of the cache file, which then stays empty. */
  private object: KernelObject | null = null;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly remote: RemoteBlob,
    readonly index: BlobIndex,
    private readonly fetcher: ChunkFetcher,
    /** Told of each chunk present or gone, and asked for copies before fetching; none: fetch alone. */
    private readonly node: NodeChunks | null,
  ) {
    this.state = new ChunkState(index.chunks.length);
    // Invariant: a chunk whose blocks are all allocated holds exactly its verified bytes, even after a
    // daemon was killed in the middle of writing it (and the next one takes its mounts over). Why:
    // - the only writes to a cache file are chunks decoded and verified in full first, each written
    //   from its own (block-aligned) offset forwards (native/chunk_decode.cc); so every allocated block
    //   of a chunk's range was written with that chunk's bytes (punches only free blocks);
    // - SIGKILL stops a write(2) only between the page-cache pieces it copies, never within one, and a
    //   write cut short leaves the rest of its range as it was: holes. So a chunk cut short has a hole
    //   before alignedEnd, and the SEEK_HOLE test below counts it missing; it is fetched again.
    // This needs a filesystem that allocates only the blocks written (ext4, xfs, btrfs; not tmpfs with
    // huge pages, which would count a whole huge page written as soon as any part of it is).
    // Found at start: older than anything written from now on.
    for (const i of heldChunks(fd, index.chunks, index.trailer.uncompressedSize)) this.nowPresent(i);
  }

  /** Opens (or creates, sparse) the cache file; one of another size is started afresh. */
  static open(
    path: string,
    remote: RemoteBlob,
    index: BlobIndex,
    fetcher: ChunkFetcher,
    node: NodeChunks | null = null,
  ): BlobCache {
    const size = index.trailer.uncompressedSize;
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    if (fs.fstatSync(fd).size !== size) {
      fs.ftruncateSync(fd, 0);
      fs.ftruncateSync(fd, size);
    }
    return new BlobCache(path, fd, remote, index, fetcher, node);
  }

  get size(): number {
    return this.index.trailer.uncompressedSize;
  }

  get what(): string {
    return this.remote.what;
  }

  get presentChunks(): number {
    return this.state.presentCount;
  }

  get totalChunks(): number {
    return this.state.count;
  }

  get presentBytes(): number {
    return this.index.chunks.reduce((n, c, i) => n + (this.state.isPresent(i) ? c.uncompressedSize : 0), 0);
  }

  /** Bytes the cache file takes on disk. */
  get allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  /**
   * cachefiles: from now on the kernel's cache object holds the blob, so that each chunk is stored once.
   * Verified chunks are written straight into it, never into the cache file, which is emptied (it
   * stays as the blob's entry in the store: its mtime orders the removal of unused blobs). What is
   * present is what the object holds (`syncWithObject`). The kernel culls its cache itself: chunks of
   * an object are never evicted by the daemon.
   */
  keepInKernelObject(object: KernelObject): void {
    if (this.object === object) return;
    if (this.object) throw new Error(`${this.what}: already kept in another kernel cache object`);
    this.object = object;
    fs.ftruncateSync(this.fd, 0);
    fs.ftruncateSync(this.fd, this.size);
    for (let i = 0; i < this.state.count; i++) this.nowAbsent(i);
  }

  /** Chunk `i` is present now: the newest for eviction, and a copy source for other blobs unless in an object. */
  private nowPresent(i: number): void {
    this.state.markPresent(i);
    if (!this.object) this.node?.noted(this, this.index.chunks[i], true);
  }

  private nowAbsent(i: number): void {
    this.state.markAbsent(i);
    this.node?.noted(this, this.index.chunks[i], false);
  }

  /**
   * Runs `op` with the cache file's fd while the chunk at `offset` is pinned (no eviction punches it
   * meanwhile), when it is present here; undefined when it is not (or only in the kernel's object).
   */
  async lend<T>(offset: number, op: (fd: number) => Promise<T>): Promise<T | undefined> {
    if (this.object || this.closed) return undefined;
    const [i] = chunkIndexRange(this.index.chunks, offset, offset + 1);
    if (this.index.chunks[i]?.uncompressedOffset !== offset || !this.state.isPresent(i)) return undefined;
    this.state.pin([i]);
    try {
      return await this.io(() => op(this.fd));
    } finally {
      this.state.unpin([i]);
    }
  }

  /**
   * Reads which chunks of [first, last) the kernel's object holds (SEEK_DATA/SEEK_HOLE through its fd):
   * after an OPEN (the kernel may have culled the file meanwhile), and before serving a READ, which the
   * kernel sends only for a hole. A chunk counts only when all its bytes are there.
   */
  async syncWithObject(first = 0, last = this.state.count): Promise<void> {
    const object = this.object;
    if (!object) return;
    await object.use((fd) => {
      for (let i = first; i < last; i++) {
        const held = chunkHeld(fd, this.index.chunks[i], this.size);
        if (held && !this.state.isPresent(i)) this.state.markPresent(i);
        else if (!held && this.state.isPresent(i)) this.state.markAbsent(i);
      }
    });
  }

  /**
   * Serves [start, end) into `sink`: the chunks of the range are pinned throughout (an eviction cannot
   * turn them into holes between being made present and being read), missing ones are fetched,
   * verified and written, then the bytes are delivered. Resolves to the number of chunks fetched.
   */
  async serve(start: number, end: number, sink: RangeSink, priority: Priority = 'demand'): Promise<number> {
    const [first, last] = chunkIndexRange(this.index.chunks, start, end);
    const pinned = indexRange(first, last);
    if (priority === 'demand') for (const l of this.demandListeners) l(pinned);
    this.state.pin(pinned);
    try {
      // A demand read under cachefiles comes from the kernel through an open object: one that finds
      // it closed fails (EIO) rather than taking what nothing could store as served.
      const missing = await this.absent(first, last, priority !== 'demand');
      if (!missing) return 0;
      if (missing.length === 0) this.hits++;
      else if (priority === 'demand') this.misses++;
      const ahead =
        priority === 'demand' && missing.length > 0 ? this.readAround(missing[0], missing[missing.length - 1]) : [];
      const fetched = await this.fill(missing, priority, ahead);
      if (sink.kind === 'buffer' && this.object)
        throw new Error(`${this.what}: held in the kernel's cache object, which the daemon cannot read back`);
      if (sink.kind === 'buffer')
        await this.io(() =>
          readAt(this.fd, sink.buf, sink.offset, end - start, start, `cache file ${this.path}`, () => !this.closed),
        );
      return fetched;
    } finally {
      this.state.unpin(pinned);
    }
  }

  /**
   * Fetches the chunks `indexes` not cached yet, all asked for at once so that neighbours share Range
   * GETs; resolves to the number fetched. Nobody reads them now: they are not pinned.
   */
  async fetchChunks(indexes: readonly number[], priority: Priority = 'prefetch'): Promise<number> {
    const wanted = [...new Set(indexes)].sort((a, b) => a - b);
    if (wanted.length === 0) return 0;
    if (!(await this.absent(wanted[0], wanted[wanted.length - 1] + 1, true))) return 0;
    return this.fill(
      wanted.filter((i) => !this.state.isPresent(i)),
      priority,
    );
  }

  /**
   * The chunks of [first, last) not present, in order. Under cachefiles what is present is known only
   * from the kernel's object, which is asked first: a restarted daemon's state starts empty, and
   * anything else would fetch again what the object holds. While the kernel has no object open
   * (before a mount's OPEN, after its CLOSE) nothing fetched could be stored: null when `orNull`,
   * else the error.
   */
  private async absent(first: number, last: number, orNull: boolean): Promise<number[] | null> {
    try {
      await this.syncWithObject(first, last);
    } catch (err) {
      if (orNull) return null;
      throw err;
    }
    return this.state.missing(first, last);
  }

  /** The chunks `indexes` (no two alike) grouped as prefetch fetches them: a Range GET each. */
  prefetchRequests(indexes: readonly number[]): number[][] {
    const indexOf = new Map(indexes.map((i) => [this.index.chunks[i], i]));
    return this.fetcher.plan([...indexOf.keys()], 'prefetch').map((r) => r.chunks.map((c) => indexOf.get(c)!));
  }

  /** Prefetch requests the fetcher of this blob runs at once. */
  get prefetchSlots(): number {
    return this.fetcher.prefetchSlots;
  }

  /** See ChunkState.presentFlags. */
  get presentFlags(): Uint8Array {
    return this.state.presentFlags;
  }

  /** Each chunk's [start, end) in the uncompressed blob, two numbers per chunk, in order. */
  chunkExtents(): Float64Array {
    const out = new Float64Array(this.index.chunks.length * 2);
    this.index.chunks.forEach((c, i) =>
      out.set([c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize], i * 2),
    );
    return out;
  }

  /**
   * Reads a transport served without the daemon (`hits` of them, all of present chunks): `firstRead`
   * are the chunks they read for the first time, in order, told to `onDemand`'s listeners.
   */
  servedElsewhere(hits: number, firstRead: readonly number[]): void {
    this.hits += hits;
    if (firstRead.length > 0) for (const l of this.demandListeners) l(firstRead);
  }

  /** Calls `listener` with the chunk indexes of every demand read; returns the unsubscribe. */
  onDemand(listener: (chunks: readonly number[]) => void): () => void {
    this.demandListeners.add(listener);
    return () => this.demandListeners.delete(listener);
  }

  /**
   * The missing chunks around a demand miss of chunks [first, last] worth fetching in the same request:
   * files of one package lie side by side. The window is counted in compressed bytes, what a request
   * carries; BEHIND_SHARE of it goes to the chunks before the miss, the rest (at least one chunk) to
   * those after. As the kernel's read-ahead it starts at a quarter of its bound and doubles, up to the
   * bound, while misses land within reach of the last window; each side stops at a present chunk.
   */
  private readAround(first: number, last: number): number[] {
    const max = this.readAhead.maxBytes;
    if (max <= 0 || this.trace === 'replaying') return [];
    const w = this.sequential;
    const near = w.next >= 0 && first >= w.from && first <= w.next + (w.next - w.from);
    const initial = this.trace === 'replayed' ? FIRST_WINDOW_AFTER_TRACE : max >> 2;
    w.window = near ? Math.min(max, w.window * 2) : Math.max(1, Math.min(max, initial));
    const after = this.missingRun(last + 1, 1, w.window * (1 - BEHIND_SHARE), 1);
    const before = this.missingRun(first - 1, -1, w.window * BEHIND_SHARE, 0);
    w.from = first;
    w.next = last + 1 + after.length;
    return [...after, ...before];
  }

  /** Missing chunks from `from` on, stepping by `step`, up to `bytes` compressed bytes (at least `least`). */
  private missingRun(from: number, step: 1 | -1, bytes: number, least: number): number[] {
    const out: number[] = [];
    let sum = 0;
    for (let i = from; i >= 0 && i < this.state.count && !this.state.isPresent(i); i += step) {
      sum += this.index.chunks[i].compressedSize;
      if (sum > bytes && out.length >= least) break;
      out.push(i);
    }
    return out;
  }

  /**
   * Makes the chunks `slots` (indexes into the chunk table) present: copied from another cache file of
   * the node holding the same digest, else fetched; resolves to the number fetched. `ahead` likewise,
   * and nobody waits for them. Copies run beside the fetch of the others; a copy that fails is fetched.
   */
  private async fill(slots: number[], priority: Priority, ahead: readonly number[] = []): Promise<number> {
    if (slots.length === 0) return 0;
    const node = this.node;
    const local = new Set(node ? [...slots, ...ahead].filter((i) => node.holds(this, this.index.chunks[i])) : []);
    const fetching = this.fetch(
      slots.filter((i) => !local.has(i)),
      priority,
      ahead.filter((i) => !local.has(i)),
    );
    fetching.catch(() => undefined); // awaited below, after the copies
    // Read-ahead copies: nobody waits for them; one that fails is fetched as read-ahead.
    for (const i of ahead.filter((j) => local.has(j)))
      void this.copyOne(i, priority)
        .then((ok) => (ok ? 0 : this.fetch([], priority, [i])))
        .catch((err: Error) => log.debug('read-ahead not stored', { blob: this.what, error: err.message }));
    const copied = await Promise.all(
      slots.filter((i) => local.has(i)).map(async (i) => ((await this.copyOne(i, priority)) ? -1 : i)),
    );
    const again = this.fetch(
      copied.filter((i) => i >= 0),
      priority,
    );
    again.catch(() => undefined);
    return (await fetching) + (await again);
  }

  /** Writes chunk `i` from another cache file of the node; resolves to whether it is present now. */
  private copyOne(i: number, priority: Priority): Promise<boolean> {
    if (this.state.isPresent(i)) return Promise.resolve(true);
    const node = this.node;
    if (!node) return Promise.resolve(false);
    const known = this.copying.get(i);
    if (known) return known;
    const c = this.index.chunks[i];
    const run = node
      .copyFromNode(this, c, (fd, offset) => this.writeCopy(fd, offset, i, priority))
      .catch((err: Error) => {
        log.warn('chunk not copied from the node: fetching it', { blob: this.what, error: err.message });
        return false;
      })
      .finally(() => this.copying.delete(i));
    this.copying.set(i, run);
    return run;
  }

  /** Chunk `i` from `source` at `offset`: checked against this blob's table, then written (as `place`). */
  private async writeCopy(source: number, offset: number, i: number, priority: Priority): Promise<Error | null> {
    if (this.state.isPresent(i)) return null;
    const c = this.index.chunks[i];
    const background = priority === 'background';
    const object = this.object;
    let fault: Error | null;
    if (object) {
      fault = await object.use((fd) => copyChunkInto(source, offset, fd, c, this.what, { background, direct: true }));
    } else {
      await this.space?.reserve(alignedEnd(c) - c.uncompressedOffset, this);
      await this.punching.get(i)?.catch(() => undefined);
      fault = await this.io(() => copyChunkInto(source, offset, this.fd, c, this.what, { background }));
    }
    if (fault === null && !this.state.isPresent(i)) this.nowPresent(i);
    return fault;
  }

  /**
   * Fetches, verifies and writes the chunks `slots`; resolves to their count. `ahead` are asked for in
   * the same call, so that they share its Range GETs: nobody waits for them.
   */
  private async fetch(slots: number[], priority: Priority, ahead: readonly number[] = []): Promise<number> {
    if (slots.length === 0 && ahead.length === 0) return 0;
    const done = this.fetcher.getEachChunk(
      this.remote,
      [...slots, ...ahead].map((i) => this.index.chunks[i]),
      this,
      priority,
      slots.length,
    );
    if (ahead.length > 0) {
      void Promise.all(done.slice(slots.length)).catch((err: Error) =>
        log.debug('read-ahead not stored', { blob: this.what, error: err.message }),
      );
    }
    await Promise.all(done.slice(0, slots.length));
    return slots.length;
  }

  /**
   * The fetcher's destination: verifies and writes fetched chunks into the cache file (under cachefiles,
   * the kernel's object), on the thread pool (under fanotify such a write raises an event of its own, which the event loop must
   * stay free to answer); background fetches with the CPU the node leaves idle. Room is reserved, and
   * punches of the same chunks awaited, first; a chunk present already is left as it is.
   */
  async place(
    bytes: Buffer,
    start: number,
    chunks: readonly ChunkEntry[],
    priority: Priority,
  ): Promise<Array<Error | null>> {
    const faults: Array<Error | null> = chunks.map(() => null);
    const todo = chunks.flatMap((c, k) => {
      const [i] = chunkIndexRange(this.index.chunks, c.uncompressedOffset, c.uncompressedOffset + 1);
      if (this.index.chunks[i] !== c) {
        faults[k] = new Error(`${this.what}: chunk at ${c.uncompressedOffset} is not in this blob's table`);
        return [];
      }
      return this.state.isPresent(i) ? [] : [{ k, i, c }];
    });
    if (todo.length === 0) return faults;
    const object = this.object;
    const written = object
      ? await object.use((fd) =>
          decodeChunksInto(
            fd,
            bytes,
            start,
            todo.map((t) => t.c),
            this.what,
            { background: priority === 'background', direct: true },
          ),
        )
      : await this.writeToFile(bytes, start, todo, priority);
    todo.forEach((t, j) => {
      faults[t.k] = written[j];
      if (written[j] === null) this.nowPresent(t.i);
    });
    return faults;
  }

  /** Writes chunks that passed into the cache file, room reserved and punches awaited first. */
  private async writeToFile(
    bytes: Buffer,
    start: number,
    todo: ReadonlyArray<{ i: number; c: ChunkEntry }>,
    priority: Priority,
  ): Promise<Array<Error | null>> {
    await this.space?.reserve(
      todo.reduce((n, t) => n + alignedEnd(t.c) - t.c.uncompressedOffset, 0),
      this,
    );
    await Promise.all(todo.map((t) => this.punching.get(t.i)?.catch(() => undefined)));
    return this.io(() =>
      decodeChunksInto(
        this.fd,
        bytes,
        start,
        todo.map((t) => t.c),
        this.what,
        { background: priority === 'background' },
      ),
    );
  }

  /**
   * Re-reads every cached chunk and checks its SHA-256: the chunks that do not match. Reads go through
   * the thread pool, never blocking the event loop: under fanotify a read of a marked file may raise
   * an event that this process's event loop has to answer (a blocking read would deadlock).
   */
  async verify(): Promise<Array<{ offset: number; expected: string; got: string }>> {
    if (this.object)
      throw new Error(`${this.what}: held in the kernel's cachefiles object, which the daemon cannot read back`);
    const bad: Array<{ offset: number; expected: string; got: string }> = [];
    for (const [i, c] of this.index.chunks.entries()) {
      if (!this.state.isPresent(i)) continue;
      const buf = Buffer.alloc(c.uncompressedSize);
      await this.io(() =>
        readAt(this.fd, buf, 0, buf.length, c.uncompressedOffset, `cache file ${this.path}`, () => !this.closed),
      );
      const got = createHash('sha256').update(buf).digest();
      if (!got.equals(c.digest))
        bad.push({ offset: c.uncompressedOffset, expected: c.digest.toString('hex'), got: got.toString('hex') });
    }
    return bad;
  }

  /**
   * Ranges of chunks not yet cached, for background prefetch: neighbouring missing chunks are grouped
   * up to `span` bytes so that one Range GET brings many small chunks.
   */
  missingRanges(span = 4 << 20): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    this.index.chunks.forEach((c, i) => {
      if (this.state.isPresent(i)) return;
      const end = c.uncompressedOffset + c.uncompressedSize;
      const last = out[out.length - 1];
      if (last && i > 0 && !this.state.isPresent(i - 1) && end - last[0] <= span) last[1] = end;
      else out.push([c.uncompressedOffset, end]);
    });
    return out;
  }

  /** Write time of the oldest chunk that could be evicted now, or Infinity. */
  oldestEvictable(): number {
    return this.object ? Infinity : this.state.oldestEvictable();
  }

  /**
   * Punches out the oldest chunks not in use by a reader until at least `bytes` are freed: a later
   * read of them is a miss again. Resolves to the bytes freed.
   */
  async evictOldest(bytes: number): Promise<number> {
    let freed = 0;
    if (this.object) return freed;
    for (const i of this.state.evictionOrder()) {
      if (freed >= bytes) break;
      if (!this.state.evictable(i)) continue; // pinned by a reader that arrived during an earlier punch
      const c = this.index.chunks[i];
      this.nowAbsent(i); // first: a reader arriving meanwhile fetches it again rather than trusting it
      const punch = this.io(() =>
        native.punchHole(this.fd, c.uncompressedOffset, alignedEnd(c) - c.uncompressedOffset),
      );
      this.punching.set(i, punch);
      try {
        await punch;
      } finally {
        this.punching.delete(i);
      }
      freed += alignedEnd(c) - c.uncompressedOffset;
      this.evictedChunks++;
    }
    return freed;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.busy === 0) fs.closeSync(this.fd);
  }

  /**
   * Runs an operation on the fd, counted: a closed fd's number may be given to another file at once,
   * and a read or write still queued on the thread pool would then reach that file.
   */
  private async io<T>(op: () => Promise<T>): Promise<T> {
    if (this.closed) throw new Error(`cache file ${this.path} is closed`);
    this.busy++;
    try {
      return await op();
    } finally {
      if (--this.busy === 0 && this.closed) fs.closeSync(this.fd);
    }
  }
}
