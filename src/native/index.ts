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

/** One FUSE connection (/dev/fuse) and the filesystem it serves; the protocol is spoken in JS. */
export interface FuseSession {
  /** mount(2) of this connection's filesystem: read-only, root-owned, allow_other, default_permissions. */
  mount(target: PathLike, fstype: string, flags: number, extraOptions?: string): void;
  /** `onRequest(request)` for each request read from /dev/fuse; `onRequest(null)` when the connection ends. */
  start(onRequest: (request: Buffer | null) => void): void;
  /** Writes one reply; returns 0 or the write's errno (ENOENT: the request is gone, e.g. interrupted). */
  reply(reply: Buffer): number;
  /** Stops reading, detaches the mount (MNT_DETACH), closes /dev/fuse: what is still pending fails. */
  close(): void;
}

interface NativeAddon {
  FanotifyGroup: new () => FanotifyGroup;
  FuseSession: new () => FuseSession;
  /** mount(2) on the thread pool: for mounts whose devices this process serves (FUSE). */
  mountAsync(source: PathLike, target: PathLike, fstype: string, flags: number, data?: string): Promise<void>;
  umountAsync(target: PathLike, flags?: number): Promise<void>;
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
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MNT_DETACH = 2;
