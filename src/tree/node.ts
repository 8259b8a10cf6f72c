// The filesystem tree the bootstrap writer consumes. Names are raw bytes (not necessarily UTF-8).
// A hard link is the same Inode object reachable through several directory entries.

export interface Xattr {
  /** Full name, e.g. `security.capability`. */
  name: Buffer;
  value: Buffer;
}

export interface Metadata {
  /** Permission bits, including setuid/setgid/sticky (mode & 0o7777). */
  perm: number;
  uid: number;
  gid: number;
  mtimeSec: bigint;
  mtimeNsec: number;
  xattrs: Xattr[];
}

/** Where one chunk of a regular file lives: device 1..n is data blob n; blkaddr in 4 KiB blocks. */
export interface ChunkLocation {
  device: number;
  blkaddr: number;
}

/** A chunk whose place is not settled yet (see CompressedBlobWriter); never in a finished tree. */
export const PENDING_CHUNK: ChunkLocation = Object.freeze({ device: -1, blkaddr: -1 });

export interface RegularFile {
  type: 'file';
  meta: Metadata;
  size: number;
  /** One entry per chunk of the file; null is a hole (reads as zeros). */
  chunks: Array<ChunkLocation | null>;
}

export interface Directory {
  type: 'dir';
  meta: Metadata;
  /** Keyed by the name's bytes as a latin1 string, which keeps bytes intact and sorts bytewise. */
  entries: Map<string, Inode>;
}

export interface Symlink {
  type: 'symlink';
  meta: Metadata;
  target: Buffer;
}

export interface Device {
  type: 'chardev' | 'blockdev';
  meta: Metadata;
  major: number;
  minor: number;
}

export interface Special {
  type: 'fifo' | 'socket';
  meta: Metadata;
}

export type Inode = RegularFile | Directory | Symlink | Device | Special;
export function nameKey(name: Buffer): string {
  return name.toString('latin1');
}

export function keyName(key: string): Buffer {
  return Buffer.from(key, 'latin1');
}

/**
 * A path for messages and listings: UTF-8 where valid and free of control characters (C0, DEL, C1:
 * what a terminal acts on), otherwise bytes outside printable ASCII as \xNN.
 */
export function displayPath(parts: readonly Buffer[] | Buffer): string {
  const raw = Buffer.isBuffer(parts) ? parts : Buffer.concat(parts.flatMap((p) => [Buffer.from('/'), p]));
  if (raw.length === 0) return '/';
  const decoded = raw.toString('utf8');
  // eslint-disable-next-line no-control-regex
  if (Buffer.from(decoded, 'utf8').equals(raw) && !/[\x00-\x1f\x7f-\x9f]/.test(decoded)) return decoded;
  let out = '';
  for (const byte of raw)
    out += byte >= 0x20 && byte < 0x7f ? String.fromCharCode(byte) : `\\x${byte.toString(16).padStart(2, '0')}`;
  return out;
}
