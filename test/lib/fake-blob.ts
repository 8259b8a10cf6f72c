// An in-memory lazy blob, written by the project's own CompressedBlobWriter (zstd chunks, chunk
// table, trailer), and range readers over it that count what they are asked for and fail on request:
// the registry's part of a cache miss, in process, with no registry, no root and no mounts.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BlobIndex, ExpectedTable, RangeReader } from '../../src/blob/blob-index';
import { ChunkDictionary } from '../../src/blob/chunk-dict';
import type { ChunkEntry } from '../../src/blob/chunk-table';
import { CompressedBlobWriter, type ChunkSlot, type CompressedBlob } from '../../src/blob/compressed-blob-writer';
import { decodeChunksInto } from '../../src/blob/chunk-codec';
import type { ChunkDestination, ChunkFetcher, RemoteBlob } from '../../src/storage/chunk-fetcher';
import type { Priority } from '../../src/storage/limiter';
import type { ChunkLocation } from '../../src/tree/node';

export interface FakeBlobOptions {
  /** The uncompressed bytes (default: `size` random bytes, which do not compress). */
  content?: Buffer;
  /** Bytes of random content when `content` is not given (default: 8 chunks and a bit). */
  size?: number;
  /** A power of two, at least 4096 (default 64 KiB). */
  chunkSize?: number;
  /** zstd level (the writer's default when not given). */
  level?: number;
}

export interface FakeBlob {
  /** `sha256:<hex>` of `bytes`: the blob's registry digest. */
  digest: string;
  /** The whole blob as a registry serves it: compressed chunks, chunk table, trailer. */
  bytes: Buffer;
  /** The uncompressed content the blob was written from. */
  content: Buffer;
  chunkSize: number;
  /** The chunk table and trailer, as `loadBlobIndex` reads them. */
  index: BlobIndex;
  chunks: ChunkEntry[];
  /** Where the table starts and its digest, as the image manifest gives them. */
  expectedTable: ExpectedTable;
  /** The uncompressed bytes of a chunk of this blob. */
  chunkData(chunk: ChunkEntry): Buffer;
  /** A new counting, fault-injecting reader of `bytes`. */
  reader(): FakeRangeReader;
  /** A `RemoteBlob` (what ChunkFetcher and BlobCache read through) over `read`. */
  remote(read?: RangeReader, what?: string): RemoteBlob;
}

/** What a request does instead of (or before) answering with the blob's bytes. */
export type Fault =
  /** The request rejects with this error. */
  | { kind: 'error'; error?: Error }
  /** The request answers with the right length but a flipped byte in the middle. */
  | { kind: 'corrupt' }
  /** The request answers with the bytes of another range of the blob (shifted by `by`, default one byte). */
  | { kind: 'shifted'; by?: number }
  /** The request answers only after `ms` milliseconds. */
  | { kind: 'delay'; ms: number };

export interface RangeRequest {
  offset: number;
  length: number;
}

/**
 * Serves a fake blob's bytes by range. Faults queued with `inject` apply to the next requests, in
 * order; `hold` makes requests wait until released, so a test can tell when they overlap.
 */
export class FakeRangeReader {
  readonly requests: RangeRequest[] = [];
  /** Bytes answered (faulty answers included). */
  bytes = 0;
  /** Requests started and not yet answered. */
  active = 0;
  /** The most requests ever active at once. */
  maxActive = 0;
  private readonly faults: Array<{ fault: Fault; left: number }> = [];
  private gate: Promise<void> | null = null;
  private readonly waiters = new Set<() => void>();

  constructor(private readonly blob: Buffer) {}

  /** Applies `fault` to the next `times` requests (after the faults queued before it). */
  inject(fault: Fault, times = 1): this {
    this.faults.push({ fault, left: times });
    return this;
  }

  /** Requests from now on wait until the returned function is called. */
  hold(): () => void {
    let open!: () => void;
    this.gate = new Promise<void>((resolve) => (open = resolve));
    return () => {
      this.gate = null;
      open();
    };
  }

  /** Resolves once `n` requests in all have been started (held ones included). */
  async started(n: number): Promise<void> {
    while (this.requests.length < n) await new Promise<void>((resolve) => this.waiters.add(resolve));
  }

  /** A plain reader: one source, so it never calls `verify`. */
  readonly read: RangeReader = async (offset, length) => {
    this.requests.push({ offset, length });
    for (const w of this.waiters) w();
    this.waiters.clear();
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.gate) await this.gate;
      const fault = this.nextFault();
      if (fault?.kind === 'delay') await new Promise((resolve) => setTimeout(resolve, fault.ms));
      if (fault?.kind === 'error')
        throw fault.error ?? new Error(`fake blob: injected failure of bytes ${offset}-${offset + length - 1}`);
      if (offset < 0 || length < 0 || offset + length > this.blob.length) {
        throw new Error(`fake blob: range ${offset}+${length} is outside the blob of ${this.blob.length} bytes`);
      }
      let data: Buffer;
      if (fault?.kind === 'shifted') {
        const from = Math.min(Math.max(0, offset + (fault.by ?? 1)), this.blob.length - length);
        data = Buffer.from(this.blob.subarray(from, from + length));
      } else {
        data = Buffer.from(this.blob.subarray(offset, offset + length));
      }
      if (fault?.kind === 'corrupt' && data.length > 0) data[data.length >> 1] ^= 0xff;
      this.bytes += data.length;
      return data;
    } finally {
      this.active--;
    }
  };

  private nextFault(): Fault | undefined {
    const head = this.faults[0];
    if (!head) return undefined;
    if (--head.left <= 0) this.faults.shift();
    return head.fault;
  }
}

/**
 * A reader with several sources, as a registry client with mirrors is: each source in turn until
 * one answers and `verify` accepts its bytes; failing that, the last bytes got (or the last error).
 */
/** The entries as plain objects, to compare a decoded table (read in place) with what was written. */
export function plainChunks(chunks: readonly ChunkEntry[] | null | undefined): ChunkEntry[] | undefined {
  return chunks?.map(({ uncompressedOffset, uncompressedSize, compressedOffset, compressedSize, digest }) => ({
    uncompressedOffset,
    uncompressedSize,
    compressedOffset,
    compressedSize,
    digest,
  }));
}

export function mirrored(...sources: RangeReader[]): RangeReader {
  return async (offset, length, verify) => {
    let last: { data: Buffer } | { error: unknown } = { error: new Error('no sources') };
    for (const read of sources) {
      try {
        const data = await read(offset, length);
        last = { data };
        if (!verify || !(await verify(data))) return data;
      } catch (error) {
        last = { error };
      }
    }
    if ('data' in last) return last.data;
    throw last.error;
  };
}

/** Writes `content` as a blob with CompressedBlobWriter (through a temporary file) and keeps it in memory. */
export async function makeFakeBlob(opts: FakeBlobOptions = {}): Promise<FakeBlob> {
  const chunkSize = opts.chunkSize ?? 64 << 10;
  const content = opts.content ?? randomBytes(opts.size ?? 8 * chunkSize + 1234);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-fake-blob-'));
  const file = path.join(dir, 'blob');
  const fd = fs.openSync(file, 'w+');
  let bytes: Buffer;
  let blob: CompressedBlob;
  try {
    const writer = new CompressedBlobWriter(fd, 1, new ChunkDictionary(), chunkSize, opts.level);
    const locations: Array<ChunkLocation | null> = [];
    for (let at = 0, i = 0; at < content.length; at += chunkSize, i++) {
      const slot: ChunkSlot = { chunks: locations, index: i };
      await writer.add([content.subarray(at, at + chunkSize)], slot, at);
    }
    blob = await writer.finish();
    bytes = fs.readFileSync(file);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  // Stored chunks by digest: a chunk repeated in `content` is stored once.
  const byDigest = new Map<string, Buffer>();
  for (let at = 0; at < content.length; at += chunkSize) {
    const piece = content.subarray(at, at + chunkSize);
    byDigest.set(createHash('sha256').update(piece).digest('hex'), piece);
  }
  const digest = `sha256:${blob.id}`;
  const remote = (
    read: RangeReader = new FakeRangeReader(bytes).read,
    what = `fake blob ${digest.slice(7, 19)}`,
  ): RemoteBlob => ({ digest, what, read });
  return {
    digest,
    bytes,
    content,
    chunkSize,
    index: {
      trailer: {
        chunkSize,
        tableOffset: blob.tableOffset,
        chunkCount: blob.chunks.length,
        uncompressedSize: blob.uncompressedSize,
      },
      chunks: blob.chunks,
    },
    chunks: blob.chunks,
    expectedTable: { offset: blob.tableOffset, digest: blob.tableDigest },
    chunkData(chunk) {
      const data = byDigest.get(chunk.digest.toString('hex'));
      if (!data) throw new Error(`fake blob: no chunk with digest ${chunk.digest.toString('hex')}`);
      return data;
    },
    reader: () => new FakeRangeReader(bytes),
    remote,
  };
}

/**
 * Where a test's fetcher puts chunks, as a blob cache does: an unlinked temporary file each chunk is
 * verified into, read back by `chunk`. One per blob digest (`destinationFor`): a chunk in flight is
 * written by its first asker's destination only.
 */
export class FileDestination implements ChunkDestination {
  private readonly fd: number;

  constructor(readonly what = 'test destination') {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-dest-'));
    this.fd = fs.openSync(path.join(dir, 'chunks'), 'w+');
    fs.rmSync(dir, { recursive: true, force: true });
  }

  place(bytes: Buffer, start: number, chunks: readonly ChunkEntry[]): Promise<Array<Error | null>> {
    return decodeChunksInto(this.fd, bytes, start, chunks, this.what);
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  /** The bytes written for `c` (zeros where nothing was). */
  chunk(c: ChunkEntry): Buffer {
    const buf = Buffer.alloc(c.uncompressedSize);
    fs.readSync(this.fd, buf, 0, buf.length, c.uncompressedOffset);
    return buf;
  }
}

const destinations = new WeakMap<ChunkFetcher, Map<string, FileDestination>>();

/** The destination of `remote`'s chunks for `fetcher`, made on first use. */
export function destinationFor(fetcher: ChunkFetcher, remote: RemoteBlob): FileDestination {
  let byDigest = destinations.get(fetcher);
  if (!byDigest) destinations.set(fetcher, (byDigest = new Map()));
  let dest = byDigest.get(remote.digest);
  if (!dest) byDigest.set(remote.digest, (dest = new FileDestination(remote.what)));
  return dest;
}

/** Fetches `wanted` through `fetcher` into the blob's destination; the verified bytes of each, in order. */
export async function fetchChunkBytes(
  fetcher: ChunkFetcher,
  remote: RemoteBlob,
  wanted: readonly ChunkEntry[],
  priority: Priority = 'demand',
): Promise<Buffer[]> {
  const dest = destinationFor(fetcher, remote);
  await Promise.all(fetcher.getEachChunk(remote, wanted, dest, priority));
  return wanted.map((c) => dest.chunk(c));
}

/** One chunk's verified bytes from its compressed bytes, decoded as a cache decodes it. */
export async function decodeChunk(entry: ChunkEntry, compressed: Buffer): Promise<Buffer> {
  const dest = new FileDestination();
  try {
    const [fault] = await dest.place(compressed, entry.compressedOffset, [entry]);
    if (fault) throw fault;
    return dest.chunk(entry);
  } finally {
    dest.close();
  }
}
