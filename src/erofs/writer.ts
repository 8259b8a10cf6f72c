// Lays out and writes a metadata-only EROFS bootstrap: superblock, device table, inodes with inline
// xattrs, directory blocks, symlinks, and chunk indexes that point into the data blobs.
import { createHash } from 'node:crypto';
import { InputError } from '../errors';
import { displayPath, keyName, type Directory, type Inode, type Metadata } from '../tree/node';
import { encodeDirBlocks, dirDataSize, type DirEntry } from './dirent';
import {
  BLOCK_SIZE,
  BLOCK_SIZE_BITS,
  CHUNK_FORMAT_INDEXES,
  CHUNK_INDEX_SIZE,
  COMPACT_INODE_SIZE,
  DataLayout,
  DirentType,
  EXTENDED_INODE_SIZE,
  INODE_SLOT_SIZE,
  MAX_CHUNK_BITS,
  MAX_NAME_LEN,
  MIN_CHUNK_BITS,
  NULL_ADDR,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_IFSOCK,
} from './format';
import { deviceTableEnd, sealSuperblock, writeSuperblock, type DeviceSlot } from './superblock';
import { prepareXattrs, writeXattrArea, xattrAreaSize, xattrICount, XattrError, type EncodedXattr } from './xattr';

export interface BlobDevice {
  /** 64-hex-character blob id; becomes the device slot tag. */
  id: string;
  /** Uncompressed size of the blob in bytes. */
  size: number;
}

export interface BootstrapOptions {
  chunkBits: number;
  devices: readonly BlobDevice[];
}

export interface BootstrapResult {
  image: Buffer;
  inodeCount: number;
  rootNid: number;
}

const MAX_SYMLINK_LEN = 4095;
const MAX_U32 = 0xffffffff;
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

interface Planned {
  inode: Inode;
  path: Buffer[];
  parent: Planned | null;
  links: number;
  nlink: number;
  mode: number;
  extended: boolean;
  xattrs: EncodedXattr[];
  xattrSize: number;
  layout: DataLayout;
  /** Directory or symlink bytes; split into full blocks (data area) and an inline tail. */
  data: Buffer | null;
  dataLen: number;
  fullBlocks: number;
  tailLen: number;
  rawBlkaddr: number;
  nid: number;
  ino: number;
  children: Array<{ name: Buffer; node: Planned }>;
}

function fail(path: readonly Buffer[], message: string): never {
  throw new InputError(message, { path: displayPath(path) });
}

/** Mode type bits and directory-entry type of each kind of inode. */
const TYPES: Record<Inode['type'], { ifmt: number; dirent: DirentType }> = {
  file: { ifmt: S_IFREG, dirent: DirentType.RegFile },
  dir: { ifmt: S_IFDIR, dirent: DirentType.Dir },
  symlink: { ifmt: S_IFLNK, dirent: DirentType.Symlink },
  chardev: { ifmt: S_IFCHR, dirent: DirentType.CharDev },
  blockdev: { ifmt: S_IFBLK, dirent: DirentType.BlockDev },
  fifo: { ifmt: S_IFIFO, dirent: DirentType.Fifo },
  socket: { ifmt: S_IFSOCK, dirent: DirentType.Socket },
};

function typeOf(inode: Inode, path: readonly Buffer[]): { ifmt: number; dirent: DirentType } {
  const t = Object.hasOwn(TYPES, inode.type) ? TYPES[inode.type] : undefined;
  if (!t) fail(path, `unsupported file type ${String((inode as { type: unknown }).type)}`);
  return t;
}

function validateName(parent: readonly Buffer[], name: Buffer): void {
  const where = [...parent, name];
  if (name.length === 0) fail(parent, 'empty file name in directory');
  if (name.length > MAX_NAME_LEN) fail(where, `file name of ${name.length} bytes exceeds ${MAX_NAME_LEN}`);
  if (name.includes(0x2f)) fail(where, "file name contains '/'");
  if (name.includes(0)) fail(where, 'file name contains a NUL byte');
  if (name.equals(DOT) || name.equals(DOTDOT)) fail(where, `file name ${JSON.stringify(name.toString())} is reserved`);
}

function validateMeta(path: readonly Buffer[], meta: Metadata): void {
  if (!Number.isInteger(meta.perm) || meta.perm < 0 || meta.perm > 0o7777) fail(path, `mode ${meta.perm} is not a permission mask`);
  for (const [what, id] of [['uid', meta.uid], ['gid', meta.gid]] as const) {
    if (!Number.isInteger(id) || id < 0 || id > MAX_U32) fail(path, `${what} ${id} does not fit in 32 bits`);
  }
  if (!Number.isInteger(meta.mtimeNsec) || meta.mtimeNsec < 0 || meta.mtimeNsec >= 1e9) fail(path, `mtime nanoseconds ${meta.mtimeNsec} out of range`);
  if (meta.mtimeSec < -(1n << 63n) || meta.mtimeSec >= 1n << 63n) fail(path, `mtime ${meta.mtimeSec} does not fit in 64 bits`);
}

/** Visits every inode once, directories breadth-first with entries in bytewise order. */
function collect(root: Directory): Planned[] {
  const make = (inode: Inode, path: Buffer[], parent: Planned | null): Planned => ({
    inode, path, parent, links: 1, nlink: 0, mode: 0, extended: false, xattrs: [], xattrSize: 0,
    layout: DataLayout.FlatPlain, data: null, dataLen: 0, fullBlocks: 0, tailLen: 0, rawBlkaddr: 0,
    nid: 0, ino: 0, children: [],
  });
  const rootPlan = make(root, [], null);
  const order: Planned[] = [rootPlan];
  const seen = new Map<Inode, Planned>([[root, rootPlan]]);
  for (let i = 0; i < order.length; i++) {
    const dir = order[i];
    if (dir.inode.type !== 'dir') continue;
    const keys = [...dir.inode.entries.keys()].sort();
    for (const key of keys) {
      const child = dir.inode.entries.get(key)!;
      const name = keyName(key);
      validateName(dir.path, name);
      let plan = seen.get(child);
      if (plan) {
        if (child.type === 'dir') fail([...dir.path, name], `directory is also linked at ${displayPath(plan.path)}`);
        plan.links++;
      } else {
        plan = make(child, [...dir.path, name], dir);
        seen.set(child, plan);
        order.push(plan);
      }
      dir.children.push({ name, node: plan });
    }
  }
  return order;
}

/** The most common mtime becomes the superblock build time, so that those inodes can stay compact. */
function commonMtime(order: readonly Planned[]): { sec: bigint; nsec: number } {
  const counts = new Map<string, number>();
  let best = '';
  let bestCount = 0;
  for (const p of order) {
    const key = `${p.inode.meta.mtimeSec}.${p.inode.meta.mtimeNsec}`;
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    if (n > bestCount || (n === bestCount && key < best)) {
      best = key;
      bestCount = n;
    }
  }
  const [sec, nsec] = best.split('.');
  return { sec: BigInt(sec), nsec: Number(nsec) };
}

function rdevField(path: readonly Buffer[], major: number, minor: number): number {
  if (!Number.isInteger(major) || major < 0 || major > 0xfff) fail(path, `device major ${major} does not fit in 12 bits`);
  if (!Number.isInteger(minor) || minor < 0 || minor > 0xfffff) fail(path, `device minor ${minor} does not fit in 20 bits`);
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

function plan(p: Planned, opts: BootstrapOptions, buildTime: { sec: bigint; nsec: number }): void {
  const { inode, path } = p;
  validateMeta(path, inode.meta);
  try {
    p.xattrs = prepareXattrs(inode.meta.xattrs);
  } catch (err) {
    if (err instanceof XattrError) fail(path, err.message);
    throw err;
  }
  p.xattrSize = xattrAreaSize(p.xattrs);
  if (xattrICount(p.xattrSize) > 0xffff) fail(path, `xattrs take ${p.xattrSize} bytes, more than an inode can hold`);
  p.mode = typeOf(inode, path).ifmt | inode.meta.perm;
  p.nlink = inode.type === 'dir' ? 2 + p.children.filter((c) => c.node.inode.type === 'dir').length : p.links;

  let size = 0;
  if (inode.type === 'file') {
    size = inode.size;
    const chunkSize = 2 ** opts.chunkBits;
    if (!Number.isSafeInteger(size) || size < 0) fail(path, `file size ${size} is not representable`);
    const expected = Math.ceil(size / chunkSize);
    if (inode.chunks.length !== expected) fail(path, `file of ${size} bytes has ${inode.chunks.length} chunks, expected ${expected}`);
    inode.chunks.forEach((c, i) => {
      if (c === null) return;
      if (!Number.isInteger(c.device) || c.device < 1 || c.device > opts.devices.length) fail(path, `chunk ${i} names device ${c.device}, image has ${opts.devices.length}`);
      if (!Number.isInteger(c.blkaddr) || c.blkaddr < 0 || c.blkaddr >= NULL_ADDR) fail(path, `chunk ${i} block address ${c.blkaddr} does not fit in 32 bits`);
    });
    p.layout = size === 0 ? DataLayout.FlatPlain : DataLayout.ChunkBased;
  } else if (inode.type === 'dir') {
    const names = [DOT, DOTDOT, ...p.children.map((c) => c.name)];
    p.dataLen = dirDataSize(names.map((n) => n.length));
  } else if (inode.type === 'symlink') {
    if (inode.target.length === 0) fail(path, 'symlink has an empty target');
    if (inode.target.length > MAX_SYMLINK_LEN) fail(path, `symlink target of ${inode.target.length} bytes exceeds ${MAX_SYMLINK_LEN}`);
    if (inode.target.includes(0)) fail(path, 'symlink target contains a NUL byte');
    p.data = inode.target;
    p.dataLen = inode.target.length;
  } else if (inode.type === 'chardev' || inode.type === 'blockdev') {
    rdevField(path, inode.major, inode.minor);
  }
  if (inode.type === 'dir' || inode.type === 'symlink') size = p.dataLen;

  p.extended =
    inode.meta.uid > 0xffff ||
    inode.meta.gid > 0xffff ||
    p.nlink > 0xffff ||
    size > MAX_U32 ||
    inode.meta.mtimeSec !== buildTime.sec ||
    inode.meta.mtimeNsec !== buildTime.nsec;
  if (p.nlink > MAX_U32) fail(path, `${p.nlink} links do not fit in 32 bits`);

  if (p.dataLen > 0) {
    const inodeSize = p.extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE;
    const tail = p.dataLen % BLOCK_SIZE;
    if (tail !== 0 && inodeSize + p.xattrSize + tail <= BLOCK_SIZE) {
      p.layout = DataLayout.FlatInline;
      p.fullBlocks = Math.floor(p.dataLen / BLOCK_SIZE);
      p.tailLen = tail;
    } else {
      p.layout = DataLayout.FlatPlain;
      p.fullBlocks = Math.ceil(p.dataLen / BLOCK_SIZE);
    }
  }
}

function inodeSize(p: Planned): number {
  return p.extended ? EXTENDED_INODE_SIZE : COMPACT_INODE_SIZE;
}

/** Bytes after the inode: xattrs, then the inline tail or the 8-byte-aligned chunk index array. */
function recordSize(p: Planned, chunkBits: number): number {
  const head = inodeSize(p) + p.xattrSize;
  if (p.layout === DataLayout.ChunkBased && p.inode.type === 'file') {
    const count = Math.ceil(p.inode.size / 2 ** chunkBits);
    return align(head, CHUNK_INDEX_SIZE) + count * CHUNK_INDEX_SIZE;
  }
  return head + p.tailLen;
}

function align(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

export function writeBootstrap(root: Directory, opts: BootstrapOptions): BootstrapResult {
  if (!Number.isInteger(opts.chunkBits) || opts.chunkBits < MIN_CHUNK_BITS || opts.chunkBits > MAX_CHUNK_BITS) {
    throw new InputError(`chunk size 2^${opts.chunkBits} outside 4 KiB..64 MiB`);
  }
  if (opts.devices.length > 0xffff) throw new InputError(`${opts.devices.length} blobs exceed the device table`);
  for (const d of opts.devices) {
    if (!/^[0-9a-f]{64}$/.test(d.id)) throw new InputError(`blob id ${JSON.stringify(d.id)} is not 64 hex characters`);
    if (d.size % BLOCK_SIZE !== 0 || d.size / BLOCK_SIZE > MAX_U32) throw new InputError(`blob ${d.id}: size ${d.size} is not a 4 KiB multiple below 16 TiB`);
  }

  const order = collect(root);
  const buildTime = commonMtime(order);
  for (const p of order) plan(p, opts, buildTime);

  // Inodes are placed back to back on 32-byte slots; a record with an inline tail is moved to the
  // next block when its tail would otherwise cross a block boundary (the kernel rejects that).
  let cursor = align(deviceTableEnd(opts.devices.length), INODE_SLOT_SIZE);
  for (const [i, p] of order.entries()) {
    let start = align(cursor, INODE_SLOT_SIZE);
    if (p.tailLen > 0) {
      const tailStart = start + inodeSize(p) + p.xattrSize;
      if (Math.floor(tailStart / BLOCK_SIZE) !== Math.floor((tailStart + p.tailLen - 1) / BLOCK_SIZE)) {
        start = align(start, BLOCK_SIZE);
      }
    }
    p.nid = start / INODE_SLOT_SIZE;
    p.ino = i + 1;
    cursor = start + recordSize(p, opts.chunkBits);
  }
  if (order[0].nid > 0xffff) throw new InputError('root inode lies beyond the 16-bit root nid range');

  let nextBlock = Math.ceil(cursor / BLOCK_SIZE);
  for (const p of order) {
    if (p.fullBlocks > 0) {
      p.rawBlkaddr = nextBlock;
      nextBlock += p.fullBlocks;
    } else {
      p.rawBlkaddr = p.layout === DataLayout.FlatInline ? NULL_ADDR : 0;
    }
  }
  const totalBlocks = Math.max(nextBlock, 1);
  if (totalBlocks > MAX_U32) throw new InputError('bootstrap exceeds 2^32 blocks');

  const image = Buffer.alloc(totalBlocks * BLOCK_SIZE);
  for (const p of order) writeInode(image, p, opts.chunkBits);

  const devices: DeviceSlot[] = opts.devices.map((d) => ({ tag: d.id, blocks: d.size / BLOCK_SIZE, mappedBlkaddr: 0 }));
  const fields = {
    rootNid: order[0].nid,
    inodeCount: order.length,
    buildTimeSec: buildTime.sec,
    buildTimeNsec: buildTime.nsec,
    blocks: totalBlocks,
    uuid: Buffer.alloc(16),
    devices,
  };
  writeSuperblock(image, fields);
  // A content-derived UUID keeps the output deterministic while telling different images apart.
  const uuid = createHash('sha256').update(image).digest().subarray(0, 16);
  uuid[6] = (uuid[6] & 0x0f) | 0x80;
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
  writeSuperblock(image, { ...fields, uuid });
  sealSuperblock(image);
  return { image, inodeCount: order.length, rootNid: order[0].nid };
}

function dirData(p: Planned): Buffer {
  const self = p;
  const parent = p.parent ?? p;
  const entries: DirEntry[] = [
    { name: DOT, nid: self.nid, type: DirentType.Dir },
    { name: DOTDOT, nid: parent.nid, type: DirentType.Dir },
    ...p.children.map((c) => ({ name: c.name, nid: c.node.nid, type: TYPES[c.node.inode.type].dirent })),
  ];
  entries.sort((a, b) => Buffer.compare(a.name, b.name));
  return encodeDirBlocks(entries);
}

function writeInode(image: Buffer, p: Planned, chunkBits: number): void {
  const { inode } = p;
  const at = p.nid * INODE_SLOT_SIZE;
  const data = inode.type === 'dir' ? dirData(p) : p.data;
  if (data && data.length !== p.dataLen) throw new Error(`internal: ${displayPath(p.path)} data size changed`);

  let iU = 0;
  let size = 0;
  if (inode.type === 'file') {
    size = inode.size;
    if (p.layout === DataLayout.ChunkBased) iU = (chunkBits - BLOCK_SIZE_BITS) | CHUNK_FORMAT_INDEXES;
  } else if (inode.type === 'dir' || inode.type === 'symlink') {
    size = p.dataLen;
    iU = p.rawBlkaddr;
  } else if (inode.type === 'chardev' || inode.type === 'blockdev') {
    iU = rdevField(p.path, inode.major, inode.minor);
  }

  const format = (p.layout << 1) | (p.extended ? 1 : 0);
  const icount = xattrICount(p.xattrSize);
  if (p.extended) {
    image.writeUInt16LE(format, at);
    image.writeUInt16LE(icount, at + 2);
    image.writeUInt16LE(p.mode, at + 4);
    image.writeBigUInt64LE(BigInt(size), at + 8);
    image.writeUInt32LE(iU, at + 16);
    image.writeUInt32LE(p.ino, at + 20);
    image.writeUInt32LE(inode.meta.uid, at + 24);
    image.writeUInt32LE(inode.meta.gid, at + 28);
    image.writeBigUInt64LE(BigInt.asUintN(64, inode.meta.mtimeSec), at + 32);
    image.writeUInt32LE(inode.meta.mtimeNsec, at + 40);
    image.writeUInt32LE(p.nlink, at + 44);
  } else {
    image.writeUInt16LE(format, at);
    image.writeUInt16LE(icount, at + 2);
    image.writeUInt16LE(p.mode, at + 4);
    image.writeUInt16LE(p.nlink, at + 6);
    image.writeUInt32LE(size, at + 8);
    image.writeUInt32LE(iU, at + 16);
    image.writeUInt32LE(p.ino, at + 20);
    image.writeUInt16LE(inode.meta.uid, at + 24);
    image.writeUInt16LE(inode.meta.gid, at + 26);
  }
  const xattrAt = at + inodeSize(p);
  writeXattrArea(image, xattrAt, p.xattrs);
  const after = xattrAt + p.xattrSize;

  if (inode.type === 'file' && p.layout === DataLayout.ChunkBased) {
    let idx = align(after, CHUNK_INDEX_SIZE);
    for (const c of inode.chunks) {
      image.writeUInt16LE(0, idx);
      image.writeUInt16LE(c ? c.device : 0, idx + 2);
      image.writeUInt32LE(c ? c.blkaddr : NULL_ADDR, idx + 4);
      idx += CHUNK_INDEX_SIZE;
    }
  } else if (data) {
    const fullBytes = p.fullBlocks * BLOCK_SIZE;
    data.copy(image, p.rawBlkaddr * BLOCK_SIZE, 0, Math.min(fullBytes, data.length));
    if (p.tailLen > 0) data.copy(image, after, fullBytes);
  }
}
