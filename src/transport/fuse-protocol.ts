// The FUSE wire protocol, as far as a read-only filesystem of flat regular files needs it: request
// parsing and reply building, with the struct layouts of the kernel's include/uapi/linux/fuse.h.
//
// Version: we speak 7.31 (every struct below has its 7.31 layout, unchanged since) and answer INIT
// with minor = min(kernel's, 31), so the kernel never sends what came later (STATX, extensions).
// Kernels older than 7.23 are refused: their fuse_init_out is shorter. 7.28+ gives max_pages (1 MiB
// requests); with 7.23-7.27 requests stay at 128 KiB. Integers are little-endian (x86-64, arm64).
//
// Every parse checks lengths first: a malformed request is a ProtocolError, never a crash or an
// out-of-bounds read.

export const KERNEL_MAJOR = 7;
export const OUR_MINOR = 31;
export const MIN_KERNEL_MINOR = 23;
export const ROOT_ID = 1;

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  GETXATTR: 22,
  LISTXATTR: 23,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  READDIRPLUS: 44,
  LSEEK: 46,
} as const;

/** fuse_init_in/out flags we use. */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
} as const;

/** fuse_open_out.open_flags. */
export const OpenFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  CACHE_DIR: 1 << 3,
  NOFLUSH: 1 << 5,
} as const;

export const Errno = {
  ENOENT: 2,
  EIO: 5,
  EBADF: 9,
  EACCES: 13,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ENODATA: 61,
  EPROTO: 71,
} as const;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
const ATTR_SIZE = 88;
const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
const INIT_OUT_SIZE = 64;
const DIRENT_HEADER = 24;

export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
const DT_DIR = 4;
const DT_REG = 8;

export class ProtocolError extends Error {
  /** Set once the header was readable: the request can still be answered (EINVAL). */
  constructor(
    message: string,
    readonly header?: RequestHeader,
  ) {
    super(message);
  }
}

export interface RequestHeader {
  len: number;
  opcode: number;
  unique: bigint;
  /** Numbers above 2^53 lose precision; no node of ours is that large, so they stay unknown. */
  nodeid: number;
  uid: number;
  gid: number;
  pid: number;
}

export type Request =
  | { op: 'init'; major: number; minor: number; maxReadahead: number; flags: number }
  | { op: 'lookup'; name: Buffer }
  | { op: 'forget'; nlookup: bigint }
  | { op: 'batchForget'; items: Array<{ nodeid: number; nlookup: bigint }> }
  | { op: 'getattr' }
  | { op: 'open'; flags: number }
  | { op: 'read'; fh: bigint; offset: number; size: number }
  | { op: 'release'; fh: bigint }
  | { op: 'opendir'; flags: number }
  | { op: 'readdir'; fh: bigint; offset: number; size: number }
  | { op: 'releasedir'; fh: bigint }
  | { op: 'statfs' }
  | { op: 'getxattr'; size: number; name: Buffer }
  | { op: 'listxattr'; size: number }
  | { op: 'access'; mask: number }
  | { op: 'flush'; fh: bigint }
  | { op: 'interrupt'; unique: bigint }
  | { op: 'destroy' }
  | { op: 'unknown'; opcode: number };

export function parseHeader(buf: Buffer): RequestHeader {
  if (buf.length < IN_HEADER_SIZE) throw new ProtocolError(`request of ${buf.length} bytes is shorter than its header`);
  const header: RequestHeader = {
    len: buf.readUInt32LE(0),
    opcode: buf.readUInt32LE(4),
    unique: buf.readBigUInt64LE(8),
    nodeid: Number(buf.readBigUInt64LE(16)),
    uid: buf.readUInt32LE(24),
    gid: buf.readUInt32LE(28),
    pid: buf.readUInt32LE(32),
  };
  if (header.len !== buf.length)
    throw new ProtocolError(`header says ${header.len} bytes, request has ${buf.length}`, header);
  return header;
}

/** Offsets past 2^53 are clamped to 2^53: far beyond any file here, so they read as end of file. */
function u64(buf: Buffer, at: number): number {
  const v = buf.readBigUInt64LE(at);
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

/** A NUL-terminated name: the bytes before the first NUL, which must be there. */
function cString(body: Buffer, header: RequestHeader): Buffer {
  const nul = body.indexOf(0);
  if (nul < 0) throw new ProtocolError('name without its terminating NUL', header);
  return body.subarray(0, nul);
}

export function parseRequest(buf: Buffer): { header: RequestHeader; req: Request } {
  const header = parseHeader(buf);
  const body = buf.subarray(IN_HEADER_SIZE);
  const need = (n: number, what: string) => {
    if (body.length < n) throw new ProtocolError(`${what} body of ${body.length} bytes, need ${n}`, header);
  };
  let req: Request;
  switch (header.opcode) {
    case Op.INIT:
      need(16, 'INIT');
      req = {
        op: 'init',
        major: body.readUInt32LE(0),
        minor: body.readUInt32LE(4),
        maxReadahead: body.readUInt32LE(8),
        flags: body.readUInt32LE(12),
      };
      break;
    case Op.LOOKUP:
      req = { op: 'lookup', name: cString(body, header) };
      break;
    case Op.FORGET:
      need(8, 'FORGET');
      req = { op: 'forget', nlookup: body.readBigUInt64LE(0) };
      break;
    case Op.BATCH_FORGET: {
      need(8, 'BATCH_FORGET');
      const count = body.readUInt32LE(0);
      need(8 + count * 16, 'BATCH_FORGET');
      const items = [];
      for (let i = 0; i < count; i++)
        items.push({ nodeid: u64(body, 8 + i * 16), nlookup: body.readBigUInt64LE(16 + i * 16) });
      req = { op: 'batchForget', items };
      break;
    }
    case Op.GETATTR:
      req = { op: 'getattr' };
      break;
    case Op.OPEN:
    case Op.OPENDIR:
      need(4, 'OPEN');
      req = { op: header.opcode === Op.OPEN ? 'open' : 'opendir', flags: body.readUInt32LE(0) };
      break;
    case Op.READ:
    case Op.READDIR:
      need(24, 'READ');
      req = {
        op: header.opcode === Op.READ ? 'read' : 'readdir',
        fh: body.readBigUInt64LE(0),
        offset: u64(body, 8),
        size: body.readUInt32LE(16),
      };
      break;
    case Op.RELEASE:
    case Op.RELEASEDIR:
      need(8, 'RELEASE');
      req = { op: header.opcode === Op.RELEASE ? 'release' : 'releasedir', fh: body.readBigUInt64LE(0) };
      break;
    case Op.STATFS:
      req = { op: 'statfs' };
      break;
    case Op.GETXATTR:
      need(8, 'GETXATTR');
      req = { op: 'getxattr', size: body.readUInt32LE(0), name: cString(body.subarray(8), header) };
      break;
    case Op.LISTXATTR:
      need(8, 'LISTXATTR');
      req = { op: 'listxattr', size: body.readUInt32LE(0) };
      break;
    case Op.ACCESS:
      need(4, 'ACCESS');
      req = { op: 'access', mask: body.readUInt32LE(0) };
      break;
    case Op.FLUSH:
      need(8, 'FLUSH');
      req = { op: 'flush', fh: body.readBigUInt64LE(0) };
      break;
    case Op.INTERRUPT:
      need(8, 'INTERRUPT');
      req = { op: 'interrupt', unique: body.readBigUInt64LE(0) };
      break;
    case Op.DESTROY:
      req = { op: 'destroy' };
      break;
    default:
      req = { op: 'unknown', opcode: header.opcode };
  }
  return { header, req };
}

/** Requests the kernel expects no reply to. */
export function expectsNoReply(req: Request): boolean {
  return req.op === 'forget' || req.op === 'batchForget' || req.op === 'interrupt';
}

/** A reply: fuse_out_header, then the body. `errno` is positive (sent negated). */
export function reply(unique: bigint, errno: number, body?: Buffer): Buffer {
  const out = Buffer.alloc(OUT_HEADER_SIZE + (errno === 0 && body ? body.length : 0));
  out.writeUInt32LE(out.length, 0);
  out.writeInt32LE(errno === 0 ? 0 : -errno, 4);
  out.writeBigUInt64LE(unique, 8);
  if (errno === 0 && body) body.copy(out, OUT_HEADER_SIZE);
  return out;
}

/**
 * A data reply written in place: the caller reads into `buf` after OUT_HEADER_SIZE, then calls
 * `finish(bytes)`. Saves a copy of up to 1 MiB per READ; `reuse` (when large enough) saves the
 * allocation too.
 */
export function dataReply(
  unique: bigint,
  capacity: number,
  reuse?: Buffer,
): { buf: Buffer; finish(bytes: number): Buffer } {
  const buf =
    reuse && reuse.length >= OUT_HEADER_SIZE + capacity ? reuse : Buffer.allocUnsafe(OUT_HEADER_SIZE + capacity);
  return {
    buf,
    finish(bytes: number): Buffer {
      const out = buf.subarray(0, OUT_HEADER_SIZE + bytes);
      out.writeUInt32LE(out.length, 0);
      out.writeInt32LE(0, 4);
      out.writeBigUInt64LE(unique, 8);
      return out;
    },
  };
}

export interface Attr {
  ino: number;
  size: number;
  mode: number;
  nlink: number;
  /** Seconds since the epoch, for atime, mtime and ctime alike. */
  time: number;
}

function writeAttr(out: Buffer, at: number, a: Attr): void {
  out.writeBigUInt64LE(BigInt(a.ino), at);
  out.writeBigUInt64LE(BigInt(a.size), at + 8);
  out.writeBigUInt64LE(BigInt(Math.ceil(a.size / 512)), at + 16);
  for (const k of [24, 32, 40]) out.writeBigUInt64LE(BigInt(a.time), at + k);
  // atimensec, mtimensec, ctimensec stay 0
  out.writeUInt32LE(a.mode, at + 60);
  out.writeUInt32LE(a.nlink, at + 64);
  // uid, gid, rdev: 0
  out.writeUInt32LE(4096, at + 80); // blksize
}

export function entryOut(a: Attr, validSeconds: number): Buffer {
  const out = Buffer.alloc(ENTRY_OUT_SIZE);
  out.writeBigUInt64LE(BigInt(a.ino), 0); // nodeid
  // generation 0: node ids are never reused within a session
  out.writeBigUInt64LE(BigInt(validSeconds), 16); // entry_valid
  out.writeBigUInt64LE(BigInt(validSeconds), 24); // attr_valid
  writeAttr(out, 40, a);
  return out;
}

export function attrOut(a: Attr, validSeconds: number): Buffer {
  const out = Buffer.alloc(ATTR_OUT_SIZE);
  out.writeBigUInt64LE(BigInt(validSeconds), 0);
  writeAttr(out, 16, a);
  return out;
}

export interface InitReply {
  minor: number;
  maxReadahead: number;
  flags: number;
  maxBackground: number;
  congestionThreshold: number;
  maxWrite: number;
  maxPages: number;
}

export function initOut(r: InitReply): Buffer {
  const out = Buffer.alloc(INIT_OUT_SIZE);
  out.writeUInt32LE(KERNEL_MAJOR, 0);
  out.writeUInt32LE(r.minor, 4);
  out.writeUInt32LE(r.maxReadahead, 8);
  out.writeUInt32LE(r.flags >>> 0, 12);
  out.writeUInt16LE(r.maxBackground, 16);
  out.writeUInt16LE(r.congestionThreshold, 18);
  out.writeUInt32LE(r.maxWrite, 20);
  out.writeUInt32LE(1, 24); // time_gran: 1 ns
  out.writeUInt16LE(r.maxPages, 28);
  return out;
}

export function openOut(fh: bigint, openFlags: number): Buffer {
  const out = Buffer.alloc(16);
  out.writeBigUInt64LE(fh, 0);
  out.writeUInt32LE(openFlags, 8);
  return out;
}

export function statfsOut(s: { blocks: number; files: number; bsize: number; namelen: number }): Buffer {
  const out = Buffer.alloc(80);
  out.writeBigUInt64LE(BigInt(s.blocks), 0);
  // bfree, bavail, ffree: 0 (read-only, full)
  out.writeBigUInt64LE(BigInt(s.files), 24);
  out.writeUInt32LE(s.bsize, 40);
  out.writeUInt32LE(s.namelen, 44);
  out.writeUInt32LE(s.bsize, 48); // frsize
  return out;
}

export function getxattrOut(size: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeUInt32LE(size, 0);
  return out;
}

export interface DirEntry {
  ino: number;
  name: Buffer;
  dir: boolean;
}

/**
 * READDIR reply: the entries from index `offset` on that fit in `size` bytes; each entry's `off`
 * is the index of the next one, which the kernel sends back as the next request's offset.
 */
export function dirents(entries: readonly DirEntry[], offset: number, size: number): Buffer {
  const parts: Buffer[] = [];
  let used = 0;
  for (let i = offset; i < entries.length; i++) {
    const e = entries[i];
    const recLen = (DIRENT_HEADER + e.name.length + 7) & ~7;
    if (used + recLen > size) break;
    const rec = Buffer.alloc(recLen);
    rec.writeBigUInt64LE(BigInt(e.ino), 0);
    rec.writeBigUInt64LE(BigInt(i + 1), 8);
    rec.writeUInt32LE(e.name.length, 16);
    rec.writeUInt32LE(e.dir ? DT_DIR : DT_REG, 20);
    e.name.copy(rec, DIRENT_HEADER);
    parts.push(rec);
    used += recLen;
  }
  return Buffer.concat(parts);
}

/** A request, for tests and tools: fuse_in_header followed by `body`. */
export function encodeRequest(
  h: { opcode: number; unique: bigint; nodeid?: number; uid?: number; gid?: number; pid?: number },
  body: Buffer = Buffer.alloc(0),
): Buffer {
  const out = Buffer.alloc(IN_HEADER_SIZE + body.length);
  out.writeUInt32LE(out.length, 0);
  out.writeUInt32LE(h.opcode, 4);
  out.writeBigUInt64LE(h.unique, 8);
  out.writeBigUInt64LE(BigInt(h.nodeid ?? 0), 16);
  out.writeUInt32LE(h.uid ?? 0, 24);
  out.writeUInt32LE(h.gid ?? 0, 28);
  out.writeUInt32LE(h.pid ?? 0, 32);
  body.copy(out, IN_HEADER_SIZE);
  return out;
}
