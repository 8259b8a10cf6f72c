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
const MIN_I64 = -(1n << 63n);
const MAX_I64 = (1n << 63n) - 1n;
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');
const NO_XATTRS: EncodedXattr[] = [];
const NO_CHILDREN: Planned['children'] = [];

interface Planned {
  inode: Inode;
  /** The name under `parent` where the inode was first met (null for the root): its path in messages. */
  name: Buffer | null;
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

// Paths are put together only for messages: one array per inode was a fifth of the writer's time.
function pathOf(p: Planned | null): Buffer[] {
  const names: Buffer[] = [];
  for (let at = p; at?.name; at = at.parent) names.push(at.name);
  return names.reverse();
}

/** Fails naming the path of `p`, or of the entry `name` in directory `p`. */
function fail(p: Planned, message: string, name?: Buffer): never {
  const path = pathOf(p);
  if (name) path.push(name);
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

function typeOf(inode: Inode, p: Planned): { ifmt: number; dirent: DirentType } {
  const t = Object.hasOwn(TYPES, inode.type) ? TYPES[inode.type] : undefined;
  if (!t) fail(p, `unsupported file type ${String((inode as { type: unknown }).type)}`);
  return t;
}

function validateName(parent: Planned, name: Buffer): void {
  if (name.length === 0) fail(parent, 'empty file name in directory');
  if (name.length > MAX_NAME_LEN) fail(parent, `file name of ${name.length} bytes exceeds ${MAX_NAME_LEN}`, name);
  if (name.includes(0x2f)) fail(parent, "file name contains '/'", name);
  if (name.includes(0)) fail(parent, 'file name contains a NUL byte', name);
  if (name.equals(DOT) || name.equals(DOTDOT))
    fail(parent, `file name ${JSON.stringify(name.toString())} is reserved`, name);
}

const isU32 = (n: number) => Number.isInteger(n) && n >= 0 && n <= MAX_U32;

function validateMeta(p: Planned, meta: Metadata): void {
  if (!Number.isInteger(meta.perm) || meta.perm < 0 || meta.perm > 0o7777)
    fail(p, `mode ${meta.perm} is not a permission mask`);
  if (!isU32(meta.uid)) fail(p, `uid ${meta.uid} does not fit in 32 bits`);
  if (!isU32(meta.gid)) fail(p, `gid ${meta.gid} does not fit in 32 bits`);
  if (!Number.isInteger(meta.mtimeNsec) || meta.mtimeNsec < 0 || meta.mtimeNsec >= 1e9)
    fail(p, `mtime nanoseconds ${meta.mtimeNsec} out of range`);
  if (meta.mtimeSec < MIN_I64 || meta.mtimeSec > MAX_I64) fail(p, `mtime ${meta.mtimeSec} does not fit in 64 bits`);
}

/** Visits every inode once, directories breadth-first with entries in bytewise order. */
function collect(root: Directory): Planned[] {
  const make = (inode: Inode, name: Buffer | null, parent: Planned | null): Planned => ({
    inode,
    name,
    parent,
    links: 1,
    nlink: 0,
    mode: 0,
    extended: false,
    xattrs: NO_XATTRS,
    xattrSize: 0,
    // rawBlkaddr starts as a value beyond small integers, as NULL_ADDR is: changing a field's
    // representation later would migrate every object of this shape.
    layout: DataLayout.FlatPlain,
    data: null,
    dataLen: 0,
    fullBlocks: 0,
    tailLen: 0,
    rawBlkaddr: NULL_ADDR,
    nid: 0,
    ino: 0,
    children: inode.type === 'dir' ? [] : NO_CHILDREN,
  });
  const rootPlan = make(root, null, null);
  const order: Planned[] = [rootPlan];
  const seen = new Map<Inode, Planned>([[root, rootPlan]]);
  for (let i = 0; i < order.length; i++) {
    const dir = order[i];
    if (dir.inode.type !== 'dir') continue;
    const keys = [...dir.inode.entries.keys()].sort();
    for (const key of keys) {
      const child = dir.inode.entries.get(key)!;
      const name = keyName(key);
      validateName(dir, name);
      let plan = seen.get(child);
      if (plan) {
        if (child.type === 'dir') fail(dir, `directory is also linked at ${displayPath(pathOf(plan))}`, name);
        plan.links++;
      } else {
        plan = make(child, name, dir);
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

function rdevField(p: Planned, major: number, minor: number): number {
  if (!Number.isInteger(major) || major < 0 || major > 0xfff) fail(p, `device major ${major} does not fit in 12 bits`);
  if (!Number.isInteger(minor) || minor < 0 || minor > 0xfffff)
    fail(p, `device minor ${minor} does not fit in 20 bits`);
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

function plan(p: Planned, opts: BootstrapOptions, buildTime: { sec: bigint; nsec: number }): void {
  const { inode } = p;
  validateMeta(p, inode.meta);
  try {
    p.xattrs = prepareXattrs(inode.meta.xattrs);
  } catch (err) {
    if (err instanceof XattrError) fail(p, err.message);
    throw err;
  }
  p.xattrSize = xattrAreaSize(p.xattrs);
  if (xattrICount(p.xattrSize) > 0xffff) fail(p, `xattrs take ${p.xattrSize} bytes, more than an inode can hold`);
  p.mode = typeOf(inode, p).ifmt | inode.meta.perm;
  p.nlink = inode.type === 'dir' ? 2 + p.children.filter((c) => c.node.inode.type === 'dir').length : p.links;

  let size = 0;
  if (inode.type === 'file') {
    size = inode.size;
    const chunkSize = 2 ** opts.chunkBits;
    if (!Number.isSafeInteger(size) || size < 0) fail(p, `file size ${size} is not representable`);
    const expected = Math.ceil(size / chunkSize);
    if (inode.chunks.length !== expected)
      fail(p, `file of ${size} bytes has ${inode.chunks.length} chunks, expected ${expected}`);
    for (let i = 0; i < inode.chunks.length; i++) {
      const c = inode.chunks[i];
      if (c === null) continue;
      if (!Number.isInteger(c.device) || c.device < 1 || c.device > opts.devices.length)
        fail(p, `chunk ${i} names device ${c.device}, image has ${opts.devices.length}`);
      if (!Number.isInteger(c.blkaddr) || c.blkaddr < 0 || c.blkaddr >= NULL_ADDR)
        fail(p, `chunk ${i} block address ${c.blkaddr} does not fit in 32 bits`);
    }
    p.layout = size === 0 ? DataLayout.FlatPlain : DataLayout.ChunkBased;
  } else if (inode.type === 'dir') {
    const nameLengths = [DOT.length, DOTDOT.length];
    for (const c of p.children) nameLengths.push(c.name.length);
    p.dataLen = dirDataSize(nameLengths);
  } else if (inode.type === 'symlink') {
    if (inode.target.length === 0) fail(p, 'symlink has an empty target');
    if (inode.target.length > MAX_SYMLINK_LEN)
      fail(p, `symlink target of ${inode.target.length} bytes exceeds ${MAX_SYMLINK_LEN}`);
    if (inode.target.includes(0)) fail(p, 'symlink target contains a NUL byte');
    p.data = inode.target;
    p.dataLen = inode.target.length;
  } else if (inode.type === 'chardev' || inode.type === 'blockdev') {
    rdevField(p, inode.major, inode.minor);
  }
  if (inode.type === 'dir' || inode.type === 'symlink') size = p.dataLen;

  p.extended =
    inode.meta.uid > 0xffff ||
    inode.meta.gid > 0xffff ||
    p.nlink > 0xffff ||
    size > MAX_U32 ||
    inode.meta.mtimeSec !== buildTime.sec ||
    inode.meta.mtimeNsec !== buildTime.nsec;
  if (p.nlink > MAX_U32) fail(p, `${p.nlink} links do not fit in 32 bits`);

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
    if (d.size % BLOCK_SIZE !== 0 || d.size / BLOCK_SIZE > MAX_U32)
      throw new InputError(`blob ${d.id}: size ${d.size} is not a 4 KiB multiple below 16 TiB`);
  }

  const order = collect(root);
  const buildTime = commonMtime(order);
  for (const p of order) plan(p, opts, buildTime);

  // Inodes are placed back to back on 32-byte slots; a record with an inline tail is moved to the
  // next block when its tail would otherwise cross a block boundary (the kernel rejects that).
  let cursor = align(deviceTableEnd(opts.devices.length), INODE_SLOT_SIZE);
  for (let i = 0; i < order.length; i++) {
    const p = order[i];
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
  // DataView's setters are builtins, fast before the optimizing compiler has seen this code (it runs
  // once per image); Buffer's write methods are JavaScript with range checks.
  const view = new DataView(image.buffer, image.byteOffset, image.length);
  for (const p of order) writeInode(image, view, p, opts.chunkBits);

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

function writeInode(image: Buffer, view: DataView, p: Planned, chunkBits: number): void {
  const { inode } = p;
  const at = p.nid * INODE_SLOT_SIZE;
  const data = inode.type === 'dir' ? dirData(p) : p.data;
  if (data && data.length !== p.dataLen) throw new Error(`internal: ${displayPath(pathOf(p))} data size changed`);

  let iU = 0;
  let size = 0;
  if (inode.type === 'file') {
    size = inode.size;
    if (p.layout === DataLayout.ChunkBased) iU = (chunkBits - BLOCK_SIZE_BITS) | CHUNK_FORMAT_INDEXES;
  } else if (inode.type === 'dir' || inode.type === 'symlink') {
    size = p.dataLen;
    iU = p.rawBlkaddr;
  } else if (inode.type === 'chardev' || inode.type === 'blockdev') {
    iU = rdevField(p, inode.major, inode.minor);
  }

  const format = (p.layout << 1) | (p.extended ? 1 : 0);
  const icount = xattrICount(p.xattrSize);
  if (p.extended) {
    view.setUint16(at, format, true);
    view.setUint16(at + 2, icount, true);
    view.setUint16(at + 4, p.mode, true);
    view.setBigUint64(at + 8, BigInt(size), true);
    view.setUint32(at + 16, iU, true);
    view.setUint32(at + 20, p.ino, true);
    view.setUint32(at + 24, inode.meta.uid, true);
    view.setUint32(at + 28, inode.meta.gid, true);
    view.setBigUint64(at + 32, BigInt.asUintN(64, inode.meta.mtimeSec), true);
    view.setUint32(at + 40, inode.meta.mtimeNsec, true);
    view.setUint32(at + 44, p.nlink, true);
  } else {
    view.setUint16(at, format, true);
    view.setUint16(at + 2, icount, true);
    view.setUint16(at + 4, p.mode, true);
    view.setUint16(at + 6, p.nlink, true);
    view.setUint32(at + 8, size, true);
    view.setUint32(at + 16, iU, true);
    view.setUint32(at + 20, p.ino, true);
    view.setUint16(at + 24, inode.meta.uid, true);
    view.setUint16(at + 26, inode.meta.gid, true);
  }
  const xattrAt = at + inodeSize(p);
  writeXattrArea(image, xattrAt, p.xattrs);
  const after = xattrAt + p.xattrSize;

  if (inode.type === 'file' && p.layout === DataLayout.ChunkBased) {
    let idx = align(after, CHUNK_INDEX_SIZE);
    for (const c of inode.chunks) {
      view.setUint16(idx, 0, true);
      view.setUint16(idx + 2, c ? c.device : 0, true);
      view.setUint32(idx + 4, c ? c.blkaddr : NULL_ADDR, true);
      idx += CHUNK_INDEX_SIZE;
    }
  } else if (data) {
    const fullBytes = p.fullBlocks * BLOCK_SIZE;
    data.copy(image, p.rawBlkaddr * BLOCK_SIZE, 0, Math.min(fullBytes, data.length));
    if (p.tailLen > 0) data.copy(image, after, fullBytes);
  }
}
