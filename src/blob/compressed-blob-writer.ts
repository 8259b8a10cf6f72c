// Writes one data blob of a converted layer: each new chunk zstd-compressed on its own, then the
// chunk table and its trailer. Chunks are placed in the uncompressed address space as in the
// uncompressed blob (4 KiB aligned), so a cache file of that size can hold them at the same offsets.
import { createHash, type Hash } from 'node:crypto';
import fs from 'node:fs';
import { BLOCK_SIZE } from '../erofs/format';
import { compressBound, convertAddon, type CompressedChunks, type DigestSet } from '../native/convert-addon';
import { PENDING_CHUNK, type ChunkLocation } from '../tree/node';
import { tableDigest } from './blob-index';
import type { ChunkDictionary } from './chunk-dict';
import { encodeTable, encodeTrailer, type ChunkEntry } from './chunk-table';
import { DEFAULT_ZSTD_LEVEL } from './zstd-level';

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

// Chunks go to the thread pool in batches of about this many bytes (or chunks): one trip per chunk
// cost more than compressing a small file, and most chunks of a root file system are small files.
const BATCH_BYTES = 1 << 20;
const BATCH_CHUNKS = 512;
// Batches in flight: enough to keep every pool thread busy while the tar is parsed.
const IN_FLIGHT = 4;
const DIGEST_SIZE = 32;

/** Where `add` puts a chunk's location once its batch is done: `chunks[index]` of a file's chunk map. */
export interface ChunkSlot {
  chunks: Array<ChunkLocation | null>;
  index: number;
}

interface Batch {
  /** Where the first chunk starts in the layer's stream (see `unsettledFrom`). */
  from: number;
  chunks: Buffer[][];
  slots: ChunkSlot[];
  lengths: number[];
  bytes: number;
}

// The digests an image's blobs hold, for the pool to skip: one set per dictionary (shared by its layers).
const storedDigests = new WeakMap<ChunkDictionary, DigestSet>();

function knownDigests(dict: ChunkDictionary): DigestSet {
  let known = storedDigests.get(dict);
  if (!known) storedDigests.set(dict, (known = new (convertAddon().DigestSet)()));
  return known;
}

/**
 * Takes the chunks another blob stores (device `device` of the image being written, e.g. a blob of an
 * older image) as stored: chunks with these digests are neither compressed nor stored again, they
 * point into that blob. The first location given for a digest stands.
 */
export function addStoredChunks(dict: ChunkDictionary, device: number, chunks: readonly ChunkEntry[]): void {
  const added: Buffer[] = [];
  for (const c of chunks) {
    if (dict.get(c.digest)) continue;
    dict.set(c.digest, { device, blkaddr: c.uncompressedOffset / BLOCK_SIZE });
    added.push(c.digest);
  }
  if (added.length > 0) knownDigests(dict).add(Buffer.concat(added));
}

function newBatch(): Batch {
  return { from: Infinity, chunks: [], slots: [], lengths: [], bytes: 0 };
}

/**
 * Chunks are hashed and compressed on the thread pool, a batch at a time, while the event loop reads
 * on; a chunk's place is settled when its batch comes back, in the order chunks were added, so the
 * blob is the same whatever the timing. Until then its slot holds PENDING_CHUNK.
 */
export class CompressedBlobWriter {
  private uncompressedOffset = 0;
  private compressedOffset = 0;
  private readonly hash: Hash = createHash('sha256');
  private readonly entries: ChunkEntry[] = [];
  private pending: Batch = newBatch();
  private readonly inFlight: Array<{ batch: Batch; output: Buffer; done: Promise<CompressedChunks> }> = [];
  /** Output buffers whose frames are written: reused, so that memory is not faulted in again. */
  private readonly spare: Buffer[] = [];
  private readonly known: DigestSet;
  /** Told how many bytes the file holds after each batch is written (an upload may follow the file). */
  onWritten?: (bytes: number) => void;

  constructor(
    private readonly fd: number,
    private readonly device: number,
    private readonly dict: ChunkDictionary,
    private readonly chunkSize: number,
    private readonly level: number = DEFAULT_ZSTD_LEVEL,
  ) {
    this.known = knownDigests(dict);
  }

  /**
   * Adds a chunk given as the pieces it arrived in, from `streamOffset` of the layer's stream (they
   * must stay unchanged until `unsettledFrom` has passed that offset, or `finish` is done). Its
   * location lands in `slot` by the time `finish` resolves: a new place in this blob, or the first
   * copy of identical bytes. Waits only while enough batches are in flight.
   */
  async add(parts: Buffer[], slot: ChunkSlot, streamOffset: number): Promise<void> {
    slot.chunks[slot.index] = PENDING_CHUNK;
    const batch = this.pending;
    if (batch.chunks.length === 0) batch.from = streamOffset;
    let length = 0;
    for (const p of parts) length += p.length;
    batch.chunks.push(parts);
    batch.slots.push(slot);
    batch.lengths.push(length);
    batch.bytes += length;
    if (batch.bytes >= BATCH_BYTES || batch.chunks.length >= BATCH_CHUNKS) await this.submit();
  }

  /** Stream offset of the oldest chunk still held (Infinity if none): bytes before it are no longer read. */
  get unsettledFrom(): number {
    return this.inFlight.length > 0 ? this.inFlight[0].batch.from : this.pending.from;
  }

  /** Sends the pending batch and places every chunk added so far: afterwards nothing of the stream is held. */
  async settle(): Promise<void> {
    await this.submit();
    while (this.inFlight.length > 0) await this.placeOldest();
  }

  private async submit(): Promise<void> {
    const batch = this.pending;
    this.pending = newBatch();
    if (batch.chunks.length > 0) {
      const bound = compressBound(batch.bytes, batch.chunks.length);
      const reusable = this.spare.findIndex((b) => b.length >= bound);
      // Sized for any batch of chunks up to BATCH_BYTES each; larger chunks get buffers of their own size.
      const output =
        reusable >= 0
          ? this.spare.splice(reusable, 1)[0]
          : Buffer.allocUnsafeSlow(Math.max(bound, compressBound(2 * BATCH_BYTES, BATCH_CHUNKS)));
      const done = convertAddon().compressChunks(this.level, batch.chunks, output, this.known);
      done.catch(() => undefined); // surfaced when awaited in order; not an unhandled rejection meanwhile
      this.inFlight.push({ batch, output, done });
    }
    while (this.inFlight.length > IN_FLIGHT) await this.placeOldest();
  }

  /** Settles the oldest batch: each chunk either points at an earlier copy or is stored here. */
  private async placeOldest(): Promise<void> {
    const { batch, output, done } = this.inFlight.shift()!;
    const { sizes, digests } = await done;
    const stored: Buffer[] = [];
    const frames: Buffer[] = [];
    let framesLength = 0;
    let frameOffset = 0;
    for (let i = 0; i < batch.slots.length; i++) {
      const size = sizes[i];
      const frame = output.subarray(frameOffset, frameOffset + size);
      frameOffset += size;
      const digest = digests.subarray(i * DIGEST_SIZE, (i + 1) * DIGEST_SIZE);
      const slot = batch.slots[i];
      const known = this.dict.get(digest);
      if (known) {
        slot.chunks[slot.index] = known;
        continue;
      }
      // Size 0 (no frame) only for digests the dictionary has: the pool skips those.
      if (size === 0)
        throw new Error(`chunk ${digest.toString('hex')} was skipped as stored but is not in the dictionary`);
      const length = batch.lengths[i];
      const location: ChunkLocation = { device: this.device, blkaddr: this.uncompressedOffset / BLOCK_SIZE };
      this.entries.push({
        uncompressedOffset: this.uncompressedOffset,
        uncompressedSize: length,
        compressedOffset: this.compressedOffset + framesLength,
        compressedSize: size,
        digest,
      });
      this.uncompressedOffset += Math.ceil(length / BLOCK_SIZE) * BLOCK_SIZE;
      this.dict.set(digest, location);
      slot.chunks[slot.index] = location;
      stored.push(digest);
      frames.push(frame);
      framesLength += size;
    }
    if (stored.length > 0) this.known.add(Buffer.concat(stored));
    this.write(frames);
    this.spare.push(output);
  }

  private write(data: Buffer[]): void {
    let length = 0;
    for (const d of data) {
      this.hash.update(d);
      length += d.length;
    }
    let position = this.compressedOffset;
    const buffers = [...data];
    while (buffers.length > 0) {
      // writev may write less than asked (at most IOV_MAX buffers, or a short write): go on after it.
      let written = fs.writevSync(this.fd, buffers, position);
      position += written;
      while (buffers.length > 0 && written >= buffers[0].length) written -= buffers.shift()!.length;
      if (written > 0) buffers[0] = buffers[0].subarray(written);
    }
    this.compressedOffset += length;
    this.onWritten?.(this.compressedOffset);
  }

  async finish(): Promise<CompressedBlob> {
    await this.settle();
    const tableOffset = this.compressedOffset;
    const tail = Buffer.concat([
      encodeTable(this.entries),
      encodeTrailer({
        chunkSize: this.chunkSize,
        tableOffset,
        chunkCount: this.entries.length,
        uncompressedSize: this.uncompressedOffset,
      }),
    ]);
    this.write([tail]);
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
