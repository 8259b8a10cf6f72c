// Writes one data blob: unique chunks appended at 4 KiB-aligned offsets of its uncompressed address space.
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { BLOCK_SIZE } from '../erofs/format';
import type { ChunkLocation } from '../tree/node';
import type { ChunkDictionary } from './chunk-dict';

export interface ChunkRecord {
  /** Offset in the blob's uncompressed address space, a multiple of 4 KiB. */
  offset: number;
  size: number;
  digest: Buffer;
}

export interface BlobSummary {
  /** SHA-256 of the uncompressed blob bytes (padding included): the device tag and file name. */
  id: string;
  /** Uncompressed size, a multiple of 4 KiB. */
  size: number;
  chunks: ChunkRecord[];
}

export interface AddResult {
  location: ChunkLocation;
  /** False when an identical chunk was already stored (in this blob or an earlier one). */
  stored: boolean;
}

const ZERO_PAD = Buffer.alloc(BLOCK_SIZE);

export class BlobWriter {
  private offset = 0;
  private readonly hash: Hash = createHash('sha256');
  private readonly chunks: ChunkRecord[] = [];

  constructor(
    private readonly fd: number,
    /** 1-based device number of this blob in the bootstrap. */
    private readonly device: number,
    private readonly dict: ChunkDictionary,
  ) {}

  add(data: Buffer): AddResult {
    const digest = createHash('sha256').update(data).digest();
    const known = this.dict.get(digest);
    if (known) return { location: known, stored: false };

    const location = { device: this.device, blkaddr: this.offset / BLOCK_SIZE };
    fs.writeSync(this.fd, data, 0, data.length, this.offset);
    this.hash.update(data);
    const padded = Math.ceil(data.length / BLOCK_SIZE) * BLOCK_SIZE;
    if (padded > data.length) this.hash.update(ZERO_PAD.subarray(0, padded - data.length));
    this.chunks.push({ offset: this.offset, size: data.length, digest });
    this.offset += padded;
    this.dict.set(digest, location);
    return { location, stored: true };
  }

  finish(): BlobSummary {
    fs.ftruncateSync(this.fd, this.offset);
    return { id: this.hash.digest('hex'), size: this.offset, chunks: this.chunks };
  }
}
