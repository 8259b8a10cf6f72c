// Reads a bootstrap's parts: the superblock, the device table, inodes, directory entries and chunk
// indexes. Every read is bounded by the image: a field that points outside it is a BootstrapError,
// never a RangeError or a short buffer. The tree walk and the rules a bootstrap must follow are in
// validate.ts.
import { InputError, type ErrorContext } from '../errors';
import { reserveDirColumns, type DirColumns } from './dirent';
import {
  BLOCK_SIZE,
  BLOCK_SIZE_BITS,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_INDEX_SIZE,
  COMPACT_INODE_SIZE,
  DataLayout,
  DEVICE_SLOT_SIZE,
  DEVICE_TAG_SIZE,
  DIRENT_SIZE,
  EROFS_MAGIC,
  EXTENDED_INODE_SIZE,
  INODE_SLOT_SIZE,
  NULL_ADDR,
  SUPERBLOCK_OFFSET,
  SUPERBLOCK_SIZE,
  XATTR_HEADER_SIZE,
} from './format';

/** A bootstrap the kernel must not be given: the context names it and, from the walk, the inode and path. */
export class BootstrapError extends InputError {
  constructor(message: string, context: ErrorContext) {
    super(message, context);
    this.name = 'BootstrapError';
  }
}

export interface SuperblockInfo {
  rootNid: number;
  inodeCount: bigint;
  blocks: number;
  featureIncompat: number;
  devices: Array<{ tag: string; blocks: number; mappedBlkaddr: number }>;
}

export function readSuperblock(image: Buffer, what = 'bootstrap'): SuperblockInfo {
  const fail = (message: string) => new BootstrapError(message, { bootstrap: what });
  if (image.length < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) throw fail('too short for an EROFS superblock');
  const sb = image.subarray(SUPERBLOCK_OFFSET);
  if (sb.readUInt32LE(0) !== EROFS_MAGIC) throw fail('not an EROFS image (bad magic)');
  const count = sb.readUInt16LE(86);
  const slotoff = sb.readUInt16LE(88);
  const devices: SuperblockInfo['devices'] = [];
  for (let i = 0; i < count; i++) {
    const at = slotoff * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE;
    if (at + DEVICE_SLOT_SIZE > image.length) throw fail('device table runs past the end');
    const raw = image.subarray(at, at + DEVICE_TAG_SIZE);
    const end = raw.indexOf(0);
    devices.push({
      tag: raw.subarray(0, end === -1 ? DEVICE_TAG_SIZE : end).toString('latin1'),
      blocks: image.readUInt32LE(at + 64),
      mappedBlkaddr: image.readUInt32LE(at + 68),
    });
  }
  return {
    rootNid: sb.readUInt16LE(14),
    inodeCount: sb.readBigUInt64LE(16),
    blocks: sb.readUInt32LE(36),
    featureIncompat: sb.readUInt32LE(80),
    devices,
  };
}

export interface InodeInfo {
  nid: number;
  /** Byte offset of the inode in the image. */
  at: number;
  /** i_format: bit 0 extended, bits 1-3 the data layout; the kernel refuses other bits. */
  format: number;
  extended: boolean;
  mode: number;
  size: number;
  nlink: number;
  uid: number;
  gid: number;
  layout: number;
  /** i_u: raw block address, rdev, or chunk format, by layout and type. */
  iU: number;
  /** Where the data after the inode (xattrs, then tail or chunk indexes) begins. */
  bodyStart: number;
  xattrSize: number;
}

export interface ChunkIndex {
  advise: number;
  /** 1-based data blob; 0 for a hole as the writer writes it. */
  device: number;
  /** NULL_ADDR for a hole. */
  blkaddr: number;
}

/** By i_u's block bits: `2 **` per file was a visible part of the walk. */
const CHUNK_SIZES = Array.from({ length: CHUNK_FORMAT_BLKBITS_MASK + 1 }, (_, bits) => 2 ** (bits + BLOCK_SIZE_BITS));

/** Largest high half of a dirent's nid read as it is: beyond it (no image is that large) nids saturate. */
const MAX_NID_HIGH = 0x1fffff;

/** Parses a bootstrap written by this project; validate.ts decides whether what it reads is acceptable. */
export class BootstrapReader {
  readonly sb: SuperblockInfo;
  private readonly metaBase: number;
  /**
   * The image's fields, for readers and the validator: DataView's getters are builtins, fast before the
   * optimizing compiler has seen this code (the daemon validates each bootstrap once, in a cold process).
   */
  readonly view: DataView;

  constructor(
    private readonly image: Buffer,
    readonly what = 'bootstrap',
  ) {
    this.sb = readSuperblock(image, what);
    this.view = new DataView(image.buffer, image.byteOffset, image.length);
    this.metaBase = image.readUInt32LE(SUPERBLOCK_OFFSET + 40) * BLOCK_SIZE;
  }

  private fail(message: string): BootstrapError {
    return new BootstrapError(message, { bootstrap: this.what });
  }

  /** Throws unless [start, start + length) lies inside the image. */
  within(start: number, length: number, what: string): void {
    if (!(start >= 0 && length >= 0 && start + length <= this.image.length))
      throw this.fail(`${what} at byte ${start} (${length} bytes) lies beyond the image's ${this.image.length}`);
  }

  inode(nid: number): InodeInfo {
    const at = this.metaBase + nid * INODE_SLOT_SIZE;
    this.within(at, COMPACT_INODE_SIZE, 'inode');
    const v = this.view;
    const format = v.getUint16(at, true);
    const extended = (format & 1) === 1;
    if (extended) this.within(at, EXTENDED_INODE_SIZE, 'extended inode');
    const icount = v.getUint16(at + 2, true);
    const xattrSize = icount === 0 ? 0 : XATTR_HEADER_SIZE + 4 * (icount - 1);
    // One object shape for both inode formats: a spread of shared fields made this the walk's hot spot.
    return {
      nid,
      at,
      format,
      extended,
      layout: (format >> 1) & 7,
      mode: v.getUint16(at + 4, true),
      // The two halves rounded once, as Number(BigInt) rounds: the same value, without a BigInt per inode.
      size: extended ? v.getUint32(at + 12, true) * 2 ** 32 + v.getUint32(at + 8, true) : v.getUint32(at + 8, true),
      nlink: extended ? v.getUint32(at + 44, true) : v.getUint16(at + 6, true),
      uid: extended ? v.getUint32(at + 24, true) : v.getUint16(at + 24, true),
      gid: extended ? v.getUint32(at + 28, true) : v.getUint16(at + 26, true),
      iU: v.getUint32(at + 16, true),
      bodyStart: at + (extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE),
      xattrSize,
    };
  }

  /** Where FLAT_PLAIN / FLAT_INLINE data lies: whole blocks from i_u, then (inline) the tail after the xattrs. */
  extents(ino: InodeInfo): { blocksAt: number; blocksLen: number; tailAt: number; tailLen: number } {
    const inline = ino.layout === DataLayout.FlatInline;
    const blocksLen = inline
      ? Math.floor(ino.size / BLOCK_SIZE) * BLOCK_SIZE
      : Math.ceil(ino.size / BLOCK_SIZE) * BLOCK_SIZE;
    const tailLen = inline ? ino.size - blocksLen : 0;
    return { blocksAt: ino.iU * BLOCK_SIZE, blocksLen, tailAt: ino.bodyStart + ino.xattrSize, tailLen };
  }

  /** The bytes of a directory or symlink (FLAT_PLAIN or FLAT_INLINE): a view of the image when in one extent. */
  data(ino: InodeInfo): Buffer {
    if (!Number.isSafeInteger(ino.size)) throw this.fail(`size ${ino.size} is not representable`);
    const e = this.extents(ino);
    const dataLen = Math.min(ino.size, e.blocksLen);
    if (dataLen > 0) this.within(e.blocksAt, e.blocksLen, 'data blocks');
    if (e.tailLen > 0) this.within(e.tailAt, e.tailLen, 'inline data');
    const blocks = this.image.subarray(e.blocksAt, e.blocksAt + dataLen);
    const tail = this.image.subarray(e.tailAt, e.tailAt + e.tailLen);
    if (e.tailLen === 0) return blocks;
    return dataLen === 0 ? tail : Buffer.concat([blocks, tail]);
  }

  /**
   * Entries of a directory into `cols` (names as ranges of `data(ino)`), block by block as the kernel
   * reads them; offsets that leave a block are refused.
   */
  readDir(ino: InodeInfo, cols: DirColumns): DirColumns {
    const data = this.data(ino);
    // Read through the image's view where the data is a view of the image (all but split directories).
    const shared = data.buffer === this.image.buffer;
    const view = shared ? this.view : new DataView(data.buffer, data.byteOffset, data.length);
    const d = shared ? data.byteOffset - this.image.byteOffset : 0;
    let n = 0;
    for (let block = 0; block < data.length; block += BLOCK_SIZE) {
      const len = Math.min(BLOCK_SIZE, data.length - block);
      if (len < DIRENT_SIZE)
        throw this.fail(`directory block ${block / BLOCK_SIZE} holds ${len} bytes, less than one entry`);
      const first = view.getUint16(d + block + 8, true);
      if (first < DIRENT_SIZE || first % DIRENT_SIZE !== 0 || first > len)
        throw this.fail(
          `directory block ${block / BLOCK_SIZE}: first name offset ${first} is not a whole number of entries inside the block`,
        );
      const count = first / DIRENT_SIZE;
      for (let k = 0; k < count; k++) {
        const at = block + k * DIRENT_SIZE;
        const nameoff = view.getUint16(d + at + 8, true);
        const last = k + 1 === count;
        let nameEnd = last ? len : view.getUint16(d + at + DIRENT_SIZE + 8, true);
        if (nameoff < first || nameEnd < nameoff || nameEnd > len)
          throw this.fail(
            `directory block ${block / BLOCK_SIZE}, entry ${k}: name at ${nameoff}..${nameEnd} lies outside the block's names`,
          );
        if (last) {
          // The kernel reads the last name of a block up to the first NUL: the rest is padding.
          for (let b = nameoff; b < nameEnd; b++) {
            if (data[block + b] === 0) {
              nameEnd = b;
              break;
            }
          }
        }
        const hi = view.getUint32(d + at + 4, true);
        reserveDirColumns(cols, n);
        cols.nameStart[n] = block + nameoff;
        cols.nameEnd[n] = block + nameEnd;
        cols.nids[n] = hi > MAX_NID_HIGH ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + view.getUint32(d + at, true);
        cols.types[n] = data[at + 10];
        n++;
      }
    }
    cols.names = data;
    cols.count = n;
    return cols;
  }

  /** Chunk size in bytes of a chunk-based file (from i_u's block bits). */
  chunkSize(ino: InodeInfo): number {
    return CHUNK_SIZES[ino.iU & CHUNK_FORMAT_BLKBITS_MASK];
  }

  /** Byte offset of a chunk-based file's index array: after the xattrs, 8-byte aligned. */
  chunkIndexesAt(ino: InodeInfo): number {
    return Math.ceil((ino.bodyStart + ino.xattrSize) / CHUNK_INDEX_SIZE) * CHUNK_INDEX_SIZE;
  }

  /** The raw chunk indexes of a chunk-based regular file, one per chunk of its size. */
  chunkIndexes(ino: InodeInfo): ChunkIndex[] {
    if (ino.layout !== DataLayout.ChunkBased) return [];
    const count = Math.ceil(ino.size / this.chunkSize(ino));
    let at = this.chunkIndexesAt(ino);
    this.within(at, count * CHUNK_INDEX_SIZE, `index of ${count} chunks`);
    const out: ChunkIndex[] = [];
    for (let k = 0; k < count; k++, at += CHUNK_INDEX_SIZE) {
      out.push({
        advise: this.image.readUInt16LE(at),
        device: this.image.readUInt16LE(at + 2),
        blkaddr: this.image.readUInt32LE(at + 4),
      });
    }
    return out;
  }

  /** Chunk map of a chunk-based regular file: device (1-based) and block, or null for a hole. */
  chunks(ino: InodeInfo): Array<{ device: number; blkaddr: number } | null> {
    return this.chunkIndexes(ino).map((c) =>
      c.blkaddr === NULL_ADDR ? null : { device: c.device, blkaddr: c.blkaddr },
    );
  }
}
