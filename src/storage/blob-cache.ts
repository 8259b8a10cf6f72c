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

/** Writes verified chunk bytes at an offset of the cache file (transports may need their own fd). */
export type ChunkWriter = (offset: number, data: Buffer) => void | Promise<void>;

function alignedEnd(c: ChunkEntry): number {
  return c.uncompressedOffset + Math.ceil(c.uncompressedSize / BLOCK_SIZE) * BLOCK_SIZE;
}

export class BlobCache {
  private readonly present: Uint8Array;
  private closed = false;
  /** Reads answered from the cache file alone / that needed chunks fetched. */
  hits = 0;
  misses = 0;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly remote: RemoteBlob,
    readonly index: BlobIndex,
    private readonly fetcher: ChunkFetcher,
  ) {
    this.present = new Uint8Array(index.chunks.length);
    index.chunks.forEach((c, i) => {
      this.present[i] = native.seekData(fd, c.uncompressedOffset) === c.uncompressedOffset && native.seekHole(fd, c.uncompressedOffset) >= alignedEnd(c) ? 1 : 0;
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
    const data = await this.fetcher.getChunks(this.remote, missing, priority);
    for (const [k, d] of data.entries()) {
      if (this.present[slots[k]]) continue; // another reader's fetch wrote it meanwhile
      await write(missing[k].uncompressedOffset, d);
      this.present[slots[k]] = 1;
    }
    return missing.length;
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
   * Reads `length` bytes at `position` of the cache file into `buf` on the thread pool (the caller has
   * made the range present with `ensure`). Throws rather than return fewer bytes.
   */
  async read(buf: Buffer, bufOffset: number, length: number, position: number): Promise<void> {
    for (let done = 0; done < length; ) {
      // Checked on every step: after close() the fd number may belong to another file.
      if (this.closed) throw new Error(`cache file ${this.path} is closed`);
      const n = await new Promise<number>((resolve, reject) =>
        fs.read(this.fd, buf, bufOffset + done, length - done, position + done, (err, bytes) => (err ? reject(err) : resolve(bytes))),
      );
      if (n === 0) throw new Error(`cache file ${this.path} ends at ${position + done}, before ${position + length}`);
      done += n;
    }
  }

  close(): void {
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
