// Writes one data blob of a converted layer: each new chunk zstd-compressed on its own, then the
// chunk table and its trailer. Chunks are placed in the uncompressed address space as in the
// uncompressed blob (4 KiB aligned), so a cache file of that size can hold them at the same offsets.
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { compress } from '@mongodb-js/zstd';
import { BLOCK_SIZE } from '../erofs/format';
import type { ChunkLocation } from '../tree/node';
import { tableDigest } from './blob-index';
import type { ChunkDictionary } from './chunk-dict';
import { encodeTable, encodeTrailer, type ChunkEntry } from './chunk-table';
import type { AddResult } from './blob-writer';

export interface CompressedBlob {
  /** sha256 hex of the whole blob file: its registry digest and its device tag. */
  id: string;
  size: number;
  uncompressedSize: number;
  chunkSize: number;
  tableOffset: number;
  /** SHA-256 of the chunk table and trailer: lets a reader of byte ranges verify the table. */
  tableDigest: string;
  chunks: ChunkEntry[];
}

// Compressions run on libuv's thread pool; a few in flight keep both cores busy while the tar is parsed.
const IN_FLIGHT = 8;
// Compressed chunks are mostly a few KiB (one file each): they go to the file in batches of about this
// many bytes, one writev each, instead of one write system call per chunk.
const WRITE_BATCH = 256 << 10;

export class CompressedBlobWriter {
  private uncompressedOffset = 0;
  private compressedOffset = 0;
  /** Appended but not yet written: they start at compressedOffset - unwrittenBytes. */
  private unwritten: Buffer[] = [];
  private unwrittenBytes = 0;
  private readonly hash: Hash = createHash('sha256');
  private readonly entries: ChunkEntry[] = [];
  private readonly queue: Array<{ entry: ChunkEntry; data: Promise<Buffer> }> = [];
  /** Told how many bytes the file holds after each batch is written (an upload may follow the file). */
  onWritten?: (bytes: number) => void;

  constructor(
    private readonly fd: number,
    private readonly device: number,
    private readonly dict: ChunkDictionary,
    private readonly chunkSize: number,
  ) {}

  /** Returns where the chunk lives; compression runs in the background, a few chunks at a time. */
  async add(data: Buffer): Promise<AddResult> {
    const digest = createHash('sha256').update(data).digest();
    const known = this.dict.get(digest);
    if (known) return { location: known, stored: false };
    const location: ChunkLocation = { device: this.device, blkaddr: this.uncompressedOffset / BLOCK_SIZE };
    const entry: ChunkEntry = { uncompressedOffset: this.uncompressedOffset, uncompressedSize: data.length, compressedOffset: 0, compressedSize: 0, digest };
    this.uncompressedOffset += Math.ceil(data.length / BLOCK_SIZE) * BLOCK_SIZE;
    this.dict.set(digest, location);
    this.entries.push(entry);
    const compressed = compress(data); // zstd's default level 3: the 1.x wrapper takes no level
    compressed.catch(() => undefined); // surfaced when awaited in order; not an unhandled rejection meanwhile
    this.queue.push({ entry, data: compressed });
    while (this.queue.length > IN_FLIGHT) await this.writeOldest();
    return { location, stored: true };
  }

  private async writeOldest(): Promise<void> {
    const { entry, data } = this.queue.shift()!;
    const compressed = await data;
    entry.compressedOffset = this.compressedOffset;
    entry.compressedSize = compressed.length;
    this.append(compressed);
  }

  private append(data: Buffer): void {
    this.hash.update(data);
    this.compressedOffset += data.length;
    this.unwritten.push(data);
    this.unwrittenBytes += data.length;
    if (this.unwrittenBytes >= WRITE_BATCH) this.flush();
  }

  private flush(): void {
    const buffers = this.unwritten;
    let position = this.compressedOffset - this.unwrittenBytes;
    this.unwritten = [];
    this.unwrittenBytes = 0;
    while (buffers.length > 0) {
      // writev may write less than asked (at most IOV_MAX buffers, or a short write): go on after it.
      let written = fs.writevSync(this.fd, buffers, position);
      position += written;
      while (buffers.length > 0 && written >= buffers[0].length) written -= buffers.shift()!.length;
      if (written > 0) buffers[0] = buffers[0].subarray(written);
    }
    this.onWritten?.(this.compressedOffset);
  }

  async finish(): Promise<CompressedBlob> {
    while (this.queue.length > 0) await this.writeOldest();
    const tableOffset = this.compressedOffset;
    const tail = Buffer.concat([
      encodeTable(this.entries),
      encodeTrailer({ chunkSize: this.chunkSize, tableOffset, chunkCount: this.entries.length, uncompressedSize: this.uncompressedOffset }),
    ]);
    this.append(tail);
    this.flush();
    return {
      id: this.hash.digest('hex'),
      size: this.compressedOffset,
      uncompressedSize: this.uncompressedOffset,
      chunkSize: this.chunkSize,
      tableOffset,
      tableDigest: tableDigest(tail),
      chunks: this.entries,
    };
  }
}
