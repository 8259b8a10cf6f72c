// Typed face of the N-API addon (native/): the syscalls Node.js does not offer.
import fs from 'node:fs';
import path from 'node:path';

export type PathLike = string | Buffer;

/** A FAN_PRE_ACCESS event: the reader is blocked until `respond` is called with the event fd. */
export interface PreAccessEvent {
  /** Fd of the marked file, open read-write: fill the range through it (other fds raise events). */
  fd: number;
  pid: number;
  mask: number;
  /** Byte range being read, or -1 when the kernel sent no range. */
  offset: number;
  count: number;
}

export interface FanotifyGroup {
  /** Adds (or removes) a FAN_PRE_ACCESS mark on one file. Mark before mounting: later marks see nothing. */
  mark(path: PathLike, remove?: boolean): void;
  start(onEvent: (e: PreAccessEvent) => void): void;
  /** errno 0 allows the access; any other value denies it with that errno. Closes the event fd. */
  respond(eventFd: number, errno: number): void;
  close(): void;
}

interface NativeAddon {
  FanotifyGroup: new () => FanotifyGroup;
  mount(source: PathLike, target: PathLike, fstype: string, flags: number, data?: string): void;
  umount(target: PathLike, flags?: number): void;
  listXattrs(path: PathLike): Buffer[];
  getXattr(path: PathLike, name: PathLike): Buffer;
  setXattr(path: PathLike, name: PathLike, value: Buffer): void;
  /** mknod(2): `mode` includes the file type bits (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK). */
  mknod(path: PathLike, mode: number, major: number, minor: number): void;
  /** Sends a sd_notify message (READY=1, STOPPING=1, STATUS=...); false when there is no NOTIFY_SOCKET. */
  sdNotify(message: string): boolean;
  /** utimensat(2) without following symlinks: atime = mtime = sec + nsec. */
  setTimes(path: PathLike, sec: bigint, nsec: number): void;
  /** Next offset holding data at or after `offset`, or -1 if none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** Next hole at or after `offset`, or -1 if `offset` is past the end (ENXIO). */
  seekHole(fd: number, offset: number): number;
  /** Deallocates [offset, offset+length) keeping the size (fallocate PUNCH_HOLE), on the thread pool. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
}

function packageRoot(): string {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (path.dirname(dir) === dir) throw new Error(`no package.json above ${__dirname}`);
  }
}

export const native: NativeAddon = require(
  path.join(packageRoot(), 'build', 'Release', 'erofs_ondemand_native.node'),
) as NativeAddon;

export const MS_RDONLY = 1;
export const MNT_DETACH = 2;
