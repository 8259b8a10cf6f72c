// Typed face of the N-API addon (native/): the syscalls Node.js does not offer.
import { loadAddon } from './addon-path';

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
  /**
   * Denies with EIO every event an earlier reader of an adopted group read and left unanswered, trying
   * each fd number in 0..maxFd (default: the hard RLIMIT_NOFILE); returns how many it answered. Only
   * before `start`: the kernel matches a response by fd number alone, and a new event may reuse one.
   */
  sweep(maxFd?: number): number;
  /**
   * Events on the file at `path` for a range whose chunks are all present are allowed by the reader
   * thread, never reaching JS: `extents` holds each chunk's [start, end) (sorted), `present` a byte per
   * chunk, 1 once it is verified and written; both are kept and read as they change. Watching a file
   * again replaces its watch.
   */
  watch(path: PathLike, extents: Float64Array, present: Uint8Array): void;
  /**
   * What the reader thread allowed since the last call: `touches` pairs (inode, chunk) of chunks read
   * for the first time, in order; `hits` pairs (inode, events allowed). The inode is the file's `ino`.
   */
  drain(): { touches: Float64Array; hits: Float64Array };
  /** The group's fd (-1 once closed): what the fd keeper holds a copy of. */
  readonly fd: number;
  close(): void;
}

/** A request read from /dev/cachefiles (see native/cachefiles.cc for the wire format). */
export type CachefilesMessage =
  | {
      opcode: 'open';
      msgId: number;
      objectId: number;
      /** Anonymous fd of the cache object, already open in this process: keep it until CLOSE. */
      fd: number;
      flags: number;
      /** "erofs,<domain_id or fsid>", without the kernel's trailing NUL. */
      volumeKey: Buffer;
      /** The cookie: the fsid for the bootstrap, the device tag (or device= string) for a blob. */
      cookieKey: Buffer;
    }
  | { opcode: 'read'; msgId: number; objectId: number; offset: number; length: number }
  | { opcode: 'close'; msgId: number; objectId: number }
  | {
      /** A message whose lengths do not add up. With `fd` (a malformed OPEN): refuse it and close the fd. */
      opcode: 'invalid';
      reason: string;
      raw: Buffer;
      msgId?: number;
      objectId?: number;
      rawOpcode?: number;
      fd?: number;
    }
  | {
      /** read() of the device failed (EIO once the cache is dead); the reader thread has stopped. */
      opcode: 'error';
      reason: string;
      code: string;
      errno: number;
    };

/** The daemon end of cachefiles on-demand mode. Errors are Node-style (`code`, `errno`, `syscall`). */
export interface CachefilesDevice {
  /** Opens the device read-write (CAP_SYS_ADMIN; EBUSY while another daemon holds it). */
  open(path?: string): void;
  /** Takes over a still-bound device fd inherited from an earlier daemon (then send `restore`). */
  adopt(fd: number): void;
  /** One setup command per call: dir, tag, brun/bcull/bstop/frun/fcull/fstop, bind ondemand, restore,
   * inuse, cull. `bind ondemand` gives EINVAL without CONFIG_CACHEFILES_ONDEMAND and EOPNOTSUPP when
   * the cache directory is on a file system that cannot back a cache (tmpfs). The error has `command`. */
  command(text: string): void;
  /** Starts the reader thread; `onMessage` runs on the JS thread for each request, in order. */
  start(onMessage: (msg: CachefilesMessage) => void): void;
  /** Answers an OPEN: the object's size in bytes (deterministic per object), or -errno to refuse it. */
  copen(msgId: number, size: number): void;
  /** pwrite through page-aligned memory. `offset` must be 4 KiB-aligned; a length that is not a
   * multiple of 4 KiB is zero-padded, allowed only when offset + data.length === objectSize (the final
   * block). Returns the bytes written (padded). */
  writeAligned(fd: number, offset: number, data: Buffer, objectSize?: number): number;
  /** ioctl CACHEFILES_IOC_READ_COMPLETE: the READ `msgId` is done (unfilled ranges then read as EIO). */
  readComplete(fd: number, msgId: number): void;
  /** Closes an anon fd (on CLOSE of its object). */
  closeFd(fd: number): void;
  /** Stops and joins the reader thread and closes the device: the cache is then dead (mounts get EIO). */
  close(): void;
  /** The device fd, -1 when not open. */
  readonly fd: number;
}

/** One FUSE connection (/dev/fuse) and the filesystem it serves; the protocol is spoken in JS. */
export interface FuseSession {
  /** mount(2) of this connection's filesystem: read-only, root-owned, allow_other, default_permissions. */
  mount(target: PathLike, fstype: string, flags: number, extraOptions?: string): void;
  /**
   * Takes over the /dev/fuse fd of a connection an earlier daemon mounted on `target` (no mount, no
   * INIT): its mount and the files open on it keep working. `close` detaches `target`.
   */
  adopt(fd: number, target: PathLike): void;
  /**
   * FUSE_NOTIFY_RESEND: the kernel queues again every request read and not answered (Linux 6.9+).
   * Returns 0 or the write's errno (EINVAL on older kernels).
   */
  resend(): number;
  /** The /dev/fuse fd, -1 once closed. */
  readonly fd: number;
  /** `onRequest(request)` for each request read from /dev/fuse; `onRequest(null)` when the connection ends. */
  start(onRequest: (request: Buffer | null) => void): void;
  /** Writes one reply; returns 0 or the write's errno (ENOENT: the request is gone, e.g. interrupted). */
  reply(reply: Buffer): number;
  /** Stops reading, detaches the mount (MNT_DETACH), closes /dev/fuse: what is still pending fails. */
  close(): void;
}

/** One packet received with `recvPacket`; its fds are this process's own (close-on-exec). */
export interface Packet {
  text: string;
  fds: number[];
}

interface NativeAddon {
  /** A new FAN_CLASS_PRE_CONTENT group, or the one whose fd an earlier daemon left (checked to be one). */
  FanotifyGroup: new (inheritedFd?: number) => FanotifyGroup;
  CachefilesDevice: new () => CachefilesDevice;
  /** The message CachefilesDevice.start would deliver for these bytes (for tests of the parser). */
  parseCachefilesMessage(message: Buffer): CachefilesMessage;
  FuseSession: new () => FuseSession;
  /**
   * A read-only EROFS through the new mount API: `source` the bootstrap, one `device` option per
   * entry of `devices` (no bound on their number), attached to `target` resolved without following
   * any symbolic link (ELOOP). Each of `options` is one more string option (fscache mode: `fsid`,
   * `domain_id`, with source "none"). The error's `syscall` names the step; the kernel's log is in its message.
   */
  mountErofs(
    source: PathLike,
    devices: readonly PathLike[],
    target: PathLike,
    options?: Readonly<Record<string, string>>,
  ): void;
  /** The same on the thread pool: for mounts whose devices or objects this process serves (FUSE, cachefiles). */
  mountErofsAsync(
    source: PathLike,
    devices: readonly PathLike[],
    target: PathLike,
    options?: Readonly<Record<string, string>>,
  ): Promise<void>;
  /** An O_PATH fd of a directory whose path holds no symbolic link (ELOOP if it does, ENOTDIR). */
  openDirNoSymlinks(path: PathLike): number;
  umountAsync(target: PathLike, flags?: number): Promise<void>;
  /**
   * Replaces `file` with `data` durably (written beside it, synced, renamed, its directory synced), on
   * a thread of its own rather than the thread pool the chunk decodes share.
   */
  replaceFile(file: PathLike, data: Buffer): Promise<void>;
  mount(source: PathLike, target: PathLike, fstype: string, flags: number, data?: string): void;
  umount(target: PathLike, flags?: number): void;
  listXattrs(path: PathLike): Buffer[];
  getXattr(path: PathLike, name: PathLike): Buffer;
  setXattr(path: PathLike, name: PathLike, value: Buffer): void;
  /** mknod(2): `mode` includes the file type bits (S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK). */
  mknod(path: PathLike, mode: number, major: number, minor: number): void;
  /** Sends a sd_notify message (READY=1, STOPPING=1, STATUS=...); false when there is no NOTIFY_SOCKET. */
  sdNotify(message: string, fds?: number[]): boolean;
  /** utimensat(2) without following symlinks: atime = mtime = sec + nsec. */
  setTimes(path: PathLike, sec: bigint, nsec: number): void;
  /** Next offset holding data at or after `offset`, or -1 if none (ENXIO). */
  seekData(fd: number, offset: number): number;
  /** Next hole at or after `offset`, or -1 if `offset` is past the end (ENXIO). */
  seekHole(fd: number, offset: number): number;
  /** Deallocates [offset, offset+length) keeping the size (fallocate PUNCH_HOLE), on the thread pool. */
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  /**
   * On the thread pool, for each chunk i: decompresses the zstd frame at `bytes[layout[4i]]` of
   * `layout[4i+1]` bytes, checks that it is `layout[4i+2]` bytes whose SHA-256 is `digests[32i..]`, and
   * only then writes it to `fd` at `layout[4i+3]`. One result per chunk: null when written, else the fault.
   * `idle`: the pool thread runs it at the lowest priority (nice 19). `direct`: `fd` takes only direct
   * I/O (a cachefiles object): offsets must be page-aligned; each chunk is written from page-aligned
   * memory, zero-padded to whole pages.
   */
  decodeChunks(
    fd: number,
    bytes: Buffer,
    layout: Float64Array,
    digests: Buffer,
    idle?: boolean,
    direct?: boolean,
  ): Promise<Array<string | null>>;
  /**
   * decodeChunks for chunks decoded already in another file: for each chunk i, reads `layout[4i+2]`
   * bytes of `source` at `layout[4i]` (`layout[4i+1]` is unused), checks their SHA-256, and only then
   * writes those very bytes to `fd` at `layout[4i+3]`. Results, `idle` and `direct` as decodeChunks'.
   */
  copyChunks(
    source: number,
    fd: number,
    layout: Float64Array,
    digests: Buffer,
    idle?: boolean,
    direct?: boolean,
  ): Promise<Array<string | null>>;
  /**
   * mallopt(M_MMAP_THRESHOLD): allocations of `bytes` or more get their own mapping, returned to the
   * kernel when freed (false if glibc refused the value).
   */
  mapLargeAllocations(bytes: number): boolean;
  /**
   * Gives the memory of the whole pages inside `buf` back to the kernel at once (madvise MADV_DONTNEED);
   * those pages read as zeros from then on. Only for a buffer that owns its memory and is read no more.
   * Returns the bytes released.
   */
  releasePages(buf: Buffer): number;
  /**
   * `bytes` of memory of their own (a mapping, unmapped when the buffer is collected), for a body read
   * once and then given back with releasePages: aligned and advised for huge pages (whole ones only),
   * so that filling it costs a page fault per 2 MiB rather than per 4 KiB.
   */
  allocBody(bytes: number): ArrayBuffer;
  /** flock(2) exclusive without waiting: false when another open file holds it. The lock goes with the fd. */
  tryLock(fd: number): boolean;
  /** A connected close-on-exec SOCK_SEQPACKET unix socket (ENOENT, ECONNREFUSED when nobody listens). */
  seqpacketConnect(path: PathLike): number;
  /** Sends one packet: `text`, and copies of `fds` (SCM_RIGHTS, at most 8). */
  sendPacket(fd: number, text: string, fds?: readonly number[]): void;
  /** Waits up to `timeoutMs` (0: only what is there; -1: forever) for one packet, or says why none came. */
  recvPacket(fd: number, timeoutMs: number): Packet | 'timeout' | 'closed';
}

export const native: NativeAddon = loadAddon<NativeAddon>('erofs_ondemand_native');

export const MS_RDONLY = 1;
export const MS_NOSUID = 2;
export const MS_NODEV = 4;
export const MS_NOEXEC = 8;
export const MNT_DETACH = 2;
/** umount2(2): do not follow a final symbolic link. */
export const UMOUNT_NOFOLLOW = 8;
