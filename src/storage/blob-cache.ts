// The persistent cache of one data blob: a sparse file of the blob's uncompressed size holding each
// chunk at its offset. What is present is whatever is allocated (SEEK_DATA/SEEK_HOLE), so a restarted
// daemon reuses it without fetching again.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { BlobIndex } from '../blob/blob-index';
import { chunkIndexRange, type ChunkEntry } from '../blob/chunk-table';
import { BLOCK_SIZE } from '../erofs/format';
import { native } from '../native';
import type { ChunkFetcher, RemoteBlob } from './chunk-fetcher';
import type { Priority } from './limiter';
import { readAt } from '../read-at';

/** Writes verified chunk bytes at an offset of the cache file (transports may need their own fd). */
export type ChunkWriter = (offset: number, data: Buffer) => void | Promise<void>;

/** Room on disk for new chunks: `reserve` may evict other chunks or blobs first (cache-budget.ts). */
export interface SpaceReserver {
  reserve(bytes: number, forBlob: BlobCache): Promise<void>;
}

function alignedEnd(c: ChunkEntry): number {
  return c.uncompressedOffset + Math.ceil(c.uncompressedSize / BLOCK_SIZE) * BLOCK_SIZE;
}

export class BlobCache {
  private readonly present: Uint8Array;
  /** When each present chunk was written (a daemon-wide counter): eviction takes the oldest first. */
  private readonly writtenAt: Float64Array;
  /** Readers using each chunk right now (fetching, writing or reading it): pinned chunks are never evicted. */
  private readonly pins: Uint16Array;
  /** Chunk writes under way, so that concurrent readers of one chunk write (and reserve room for) it once. */
  private readonly writing = new Map<number, Promise<void>>();
  /** Hole punches under way: a chunk fetched again meanwhile is written only after its punch. */
  private readonly punching = new Map<number, Promise<void>>();
  private closed = false;
  /** Reads answered from the cache file alone / that needed chunks fetched. */
  hits = 0;
  misses = 0;
  evictedChunks = 0;
  space: SpaceReserver | null = null;
  private static clock = 0;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly remote: RemoteBlob,
    readonly index: BlobIndex,
    private readonly fetcher: ChunkFetcher,
  ) {
    this.present = new Uint8Array(index.chunks.length);
    this.writtenAt = new Float64Array(index.chunks.length);
    this.pins = new Uint16Array(index.chunks.length);
    index.chunks.forEach((c, i) => {
      this.present[i] = native.seekData(fd, c.uncompressedOffset) === c.uncompressedOffset && native.seekHole(fd, c.uncompressedOffset) >= alignedEnd(c) ? 1 : 0;
      if (this.present[i]) this.writtenAt[i] = ++BlobCache.clock; // found at start: older than anything written now
    });
  }

  /** Opens (or creates, sparse) the cache file; one of another size is started afresh. */
  static open(path: string, remote: RemoteBlob, index: BlobIndex, fetcher: ChunkFetcher): BlobCache {
    const size = index.trailer.uncompressedSize;
    const fd = fs.openSync(path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    if (fs.fstatSync(fd).size !== size) {
      fs.ftruncateSync(fd, 0);
      fs.ftruncateSync(fd, size);
    }
    return new BlobCache(path, fd, remote, index, fetcher);
  }

  get presentChunks(): number {
    return this.present.reduce((n, p) => n + p, 0);
  }

  get presentBytes(): number {
    return this.index.chunks.reduce((n, c, i) => n + (this.present[i] ? c.uncompressedSize : 0), 0);
  }

  /** Bytes the cache file takes on disk. */
  get allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  /**
   * Re-reads every cached chunk and checks its SHA-256: the chunks that do not match. Reads go through
   * the thread pool, never blocking the event loop: under fanotify a read of a marked file may raise
   * an event that this process's event loop has to answer (FACTS.md: such reads can deadlock).
   */
  async verify(): Promise<Array<{ offset: number; expected: string; got: string }>> {
    const bad: Array<{ offset: number; expected: string; got: string }> = [];
    for (const [i, c] of this.index.chunks.entries()) {
      if (!this.present[i]) continue;
      const buf = Buffer.alloc(c.uncompressedSize);
      await new Promise<void>((resolve, reject) => fs.read(this.fd, buf, 0, buf.length, c.uncompressedOffset, (err) => (err ? reject(err) : resolve())));
      const got = createHash('sha256').update(buf).digest();
      if (!got.equals(c.digest)) bad.push({ offset: c.uncompressedOffset, expected: c.digest.toString('hex'), got: got.toString('hex') });
    }
    return bad;
  }

  get totalChunks(): number {
    return this.present.length;
  }

  /**
   * Makes [start, end) of the uncompressed space present: chunks not cached yet are fetched,
   * verified and written. Resolves to the number of chunks that had to be fetched.
   */
  async ensure(start: number, end: number, priority: Priority = 'demand', write: ChunkWriter = this.writeOwn): Promise<number> {
    const [first, last] = chunkIndexRange(this.index.chunks, start, end);
    const missing: ChunkEntry[] = [];
    const slots: number[] = [];
    for (let i = first; i < last; i++) {
      if (!this.present[i]) {
        missing.push(this.index.chunks[i]);
        slots.push(i);
      }
    }
    if (missing.length === 0) {
      this.hits++;
      return 0;
    }
    if (priority === 'demand') this.misses++;
    for (const i of slots) this.pins[i]++;
    try {
      const data = await this.fetcher.getChunks(this.remote, missing, priority);
      for (const [k, d] of data.entries()) {
        const i = slots[k];
        if (this.present[i]) continue; // another reader's fetch wrote it meanwhile
        const other = this.writing.get(i);
        if (other) {
          // Another reader is writing this chunk: wait for it rather than reserve room and write twice.
          await other;
          if (this.present[i]) continue;
        }
        const writing = (async () => {
          await this.space?.reserve(alignedEnd(missing[k]) - missing[k].uncompressedOffset, this);
          await this.punching.get(i)?.catch(() => undefined);
          await write(missing[k].uncompressedOffset, d);
          this.present[i] = 1;
          this.writtenAt[i] = ++BlobCache.clock;
        })();
        this.writing.set(i, writing.catch(() => undefined));
        try {
          await writing;
        } finally {
          this.writing.delete(i);
        }
      }
    } finally {
      for (const i of slots) this.pins[i]--;
    }
    return missing.length;
  }

  /** The verified bytes of [start, end), fetching what is missing (see readInto). */
  async read(start: number, end: number, priority: Priority = 'demand'): Promise<{ data: Buffer; fetched: number }> {
    const data = Buffer.alloc(end - start);
    const fetched = await this.readInto(data, 0, end - start, start, priority);
    return { data, fetched };
  }

  /** Write time of the oldest chunk that could be evicted now, or Infinity. */
  oldestEvictable(): number {
    let oldest = Infinity;
    for (let i = 0; i < this.present.length; i++) if (this.present[i] && this.pins[i] === 0 && this.writtenAt[i] < oldest) oldest = this.writtenAt[i];
    return oldest;
  }

  /**
   * Punches out the oldest chunks not in use by a reader until at least `bytes` are freed: a later
   * read of them is a miss again. Resolves to the bytes freed.
   */
  async evictOldest(bytes: number): Promise<number> {
    const order = [...this.present.keys()].filter((i) => this.present[i] && this.pins[i] === 0).sort((a, b) => this.writtenAt[a] - this.writtenAt[b]);
    let freed = 0;
    for (const i of order) {
      if (freed >= bytes) break;
      const c = this.index.chunks[i];
      this.present[i] = 0; // first: a reader arriving meanwhile fetches it again rather than trusting it
      const punch = native.punchHole(this.fd, c.uncompressedOffset, alignedEnd(c) - c.uncompressedOffset);
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

  /**
   * Writes through the cache's own fd on the thread pool: under fanotify such a write raises an event
   * of its own, which the event loop must stay free to answer.
   */
  private readonly writeOwn: ChunkWriter = async (offset, data) => {
    await new Promise<void>((resolve, reject) => fs.write(this.fd, data, 0, data.length, offset, (err) => (err ? reject(err) : resolve())));
  };

  /**
   * Ranges of chunks not yet cached, for background prefetch: neighbouring missing chunks are grouped
   * up to `span` bytes so that one Range GET brings many small chunks.
   */
  missingRanges(span = 4 << 20): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    this.index.chunks.forEach((c, i) => {
      if (this.present[i]) return;
      const end = c.uncompressedOffset + c.uncompressedSize;
      const last = out[out.length - 1];
      if (last && i > 0 && !this.present[i - 1] && end - last[0] <= span) last[1] = end;
      else out.push([c.uncompressedOffset, end]);
    });
    return out;
  }

  /**
   * Makes [position, position + length) present (fetching and verifying what is missing) and reads it
   * into `buf` on the thread pool, its chunks pinned throughout so that an eviction cannot turn them
   * into zeros in between. Throws rather than return fewer bytes. Resolves to the chunks fetched.
   */
  async readInto(buf: Buffer, bufOffset: number, length: number, position: number, priority: Priority = 'demand'): Promise<number> {
    const [first, last] = chunkIndexRange(this.index.chunks, position, position + length);
    for (let i = first; i < last; i++) this.pins[i]++;
    try {
      const fetched = await this.ensure(position, position + length, priority);
      await readAt(this.fd, buf, bufOffset, length, position, `cache file ${this.path}`, () => !this.closed);
      return fetched;
    } finally {
      for (let i = first; i < last; i++) this.pins[i]--;
    }
  }

  close(): void {
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
