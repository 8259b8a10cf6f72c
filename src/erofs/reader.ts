// Reads back what other parts need from a bootstrap: the superblock and the device table.
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
  S_IFDIR,
  S_IFMT,
  SUPERBLOCK_OFFSET,
  SUPERBLOCK_SIZE,
  XATTR_HEADER_SIZE,
} from './format';

export interface SuperblockInfo {
  rootNid: number;
  inodeCount: bigint;
  blocks: number;
  featureIncompat: number;
  devices: Array<{ tag: string; blocks: number; mappedBlkaddr: number }>;
}

export function readSuperblock(image: Buffer, what = 'bootstrap'): SuperblockInfo {
  if (image.length < SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) throw new Error(`${what}: too short for an EROFS superblock`);
  const sb = image.subarray(SUPERBLOCK_OFFSET);
  if (sb.readUInt32LE(0) !== EROFS_MAGIC) throw new Error(`${what}: not an EROFS image (bad magic)`);
  const count = sb.readUInt16LE(86);
  const slotoff = sb.readUInt16LE(88);
  const devices: SuperblockInfo['devices'] = [];
  for (let i = 0; i < count; i++) {
    const at = slotoff * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE;
    if (at + DEVICE_SLOT_SIZE > image.length) throw new Error(`${what}: device table runs past the end`);
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

export interface DirEntryInfo {
  name: Buffer;
  nid: number;
  type: number;
}

/** Walks a bootstrap written by this project (or by mkfs.erofs, uncompressed): inodes, directories, chunk maps. */
export class BootstrapReader {
  readonly sb: SuperblockInfo;
  private readonly metaBase: number;

  constructor(
    private readonly image: Buffer,
    private readonly what = 'bootstrap',
  ) {
    this.sb = readSuperblock(image, what);
    this.metaBase = image.readUInt32LE(SUPERBLOCK_OFFSET + 40) * BLOCK_SIZE;
  }

  inode(nid: number): InodeInfo {
    const at = this.metaBase + nid * INODE_SLOT_SIZE;
    if (at + COMPACT_INODE_SIZE > this.image.length)
      throw new Error(`${this.what}: inode ${nid} lies beyond the image`);
    const format = this.image.readUInt16LE(at);
    const extended = (format & 1) === 1;
    const icount = this.image.readUInt16LE(at + 2);
    const xattrSize = icount === 0 ? 0 : XATTR_HEADER_SIZE + 4 * (icount - 1);
    const i = this.image;
    return extended
      ? {
          nid,
          mode: i.readUInt16LE(at + 4),
          size: Number(i.readBigUInt64LE(at + 8)),
          iU: i.readUInt32LE(at + 16),
          uid: i.readUInt32LE(at + 24),
          gid: i.readUInt32LE(at + 28),
          nlink: i.readUInt32LE(at + 44),
          layout: (format >> 1) & 7,
          bodyStart: at + EXTENDED_INODE_SIZE,
          xattrSize,
        }
      : {
          nid,
          mode: i.readUInt16LE(at + 4),
          size: i.readUInt32LE(at + 8),
          iU: i.readUInt32LE(at + 16),
          uid: i.readUInt16LE(at + 24),
          gid: i.readUInt16LE(at + 26),
          nlink: i.readUInt16LE(at + 6),
          layout: (format >> 1) & 7,
          bodyStart: at + COMPACT_INODE_SIZE,
          xattrSize,
        };
  }

  /** The bytes of a directory or symlink (FLAT_PLAIN or FLAT_INLINE). */
  data(ino: InodeInfo): Buffer {
    const inline = ino.layout === DataLayout.FlatInline;
    const full = inline ? Math.floor(ino.size / BLOCK_SIZE) * BLOCK_SIZE : ino.size;
    const parts: Buffer[] = [];
    if (full > 0) parts.push(this.image.subarray(ino.iU * BLOCK_SIZE, ino.iU * BLOCK_SIZE + full));
    if (inline) {
      const tailAt = ino.bodyStart + ino.xattrSize;
      parts.push(this.image.subarray(tailAt, tailAt + (ino.size - full)));
    }
    return Buffer.concat(parts);
  }

  readDir(ino: InodeInfo): DirEntryInfo[] {
    const data = this.data(ino);
    const out: DirEntryInfo[] = [];
    for (let block = 0; block < data.length; block += BLOCK_SIZE) {
      const end = Math.min(block + BLOCK_SIZE, data.length);
      const count = data.readUInt16LE(block + 8) / DIRENT_SIZE;
      for (let k = 0; k < count; k++) {
        const at = block + k * DIRENT_SIZE;
        const nameoff = data.readUInt16LE(at + 8);
        let nameEnd = k + 1 < count ? data.readUInt16LE(at + DIRENT_SIZE + 8) : end - block;
        const name = data.subarray(block + nameoff, block + nameEnd);
        const nul = name.indexOf(0);
        if (nul !== -1) nameEnd = nameoff + nul;
        out.push({
          name: data.subarray(block + nameoff, block + nameEnd),
          nid: Number(data.readBigUInt64LE(at)),
          type: data[at + 10],
        });
      }
    }
    return out;
  }

  /** Chunk map of a chunk-based regular file: device (1-based) and block, or null for a hole. */
  chunks(ino: InodeInfo): Array<{ device: number; blkaddr: number } | null> {
    if (ino.layout !== DataLayout.ChunkBased) return [];
    const chunkBits = (ino.iU & CHUNK_FORMAT_BLKBITS_MASK) + BLOCK_SIZE_BITS;
    const count = Math.ceil(ino.size / 2 ** chunkBits);
    let at = Math.ceil((ino.bodyStart + ino.xattrSize) / CHUNK_INDEX_SIZE) * CHUNK_INDEX_SIZE;
    const out: Array<{ device: number; blkaddr: number } | null> = [];
    for (let k = 0; k < count; k++, at += CHUNK_INDEX_SIZE) {
      const blkaddr = this.image.readUInt32LE(at + 4);
      out.push(blkaddr === NULL_ADDR ? null : { device: this.image.readUInt16LE(at + 2), blkaddr });
    }
    return out;
  }

  /** Every path once per directory entry, parents before children. */
  *walk(): Generator<{ path: Buffer; inode: InodeInfo }> {
    const stack: Array<{ path: Buffer; nid: number }> = [{ path: Buffer.from('/'), nid: this.sb.rootNid }];
    while (stack.length > 0) {
      const { path, nid } = stack.pop()!;
      const inode = this.inode(nid);
      yield { path, inode };
      if ((inode.mode & S_IFMT) !== S_IFDIR) continue;
      const children = this.readDir(inode).filter((e) => !(e.name.equals(DOT) || e.name.equals(DOTDOT)));
      for (let k = children.length - 1; k >= 0; k--) {
        const prefix = path.length === 1 ? path : Buffer.concat([path, Buffer.from('/')]);
        stack.push({ path: Buffer.concat([prefix, children[k].name]), nid: children[k].nid });
      }
    }
  }
}

const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
