// FUSE transport (any Linux with FUSE): this daemon serves one read-only FUSE filesystem in which each
// attached blob is a regular file named by its digest's hex, of the blob's uncompressed size. EROFS
// is mounted on top: file-backed with `device=<FUSE file>` (Linux 6.12+), or on older kernels through
// loop devices over those files. Every read EROFS makes of a blob becomes a FUSE READ: the missing
// chunks are fetched, verified and written to the blob's cache file, then the range is read from the
// cache file and sent back. A failure is EIO, never other bytes; a dead daemon means EIO, not zeros.
//
// Surviving a daemon crash: the /dev/fuse fd is handed to the fd keeper (systemd's fd store) and the
// session's node ids and INIT settings to a state file in the cache directory. While the keeper holds
// the fd the connection lives on without a daemon: requests queue and readers wait. The next daemon
// takes the fd over (no mount, no INIT), keeps the same node ids and handles, resumes the EROFS mounts
// on top as they are, and sends FUSE_NOTIFY_RESEND so that the requests the dead daemon had read and
// not answered come again (Linux 6.9+). On an older kernel those stay unanswered until the connection
// is aborted (/sys/fs/fuse/connections/<minor>/abort, which fails every request of the mount): their
// ids are not known to the new daemon, so it cannot answer them.
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { attachLoop, detachLoop, loopDirectIo } from '../mount/loop';
import { mountErofsAsync } from '../mount/file-backed';
import { mounts } from '../mount/mountinfo';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, MS_RDONLY, UMOUNT_NOFOLLOW, native, type FuseSession } from '../native';
import type { BlobCache } from '../storage/blob-cache';
import { LocalFileSource, type RangeSource } from '../storage/range-source';
import * as P from './fuse-protocol';
import { kernelHasFileBackedErofs, type FuseBacking } from './fuse-backing';
import {
  loadFuseSessionState,
  saveFuseSessionState,
  type BlobFsState,
  type FuseSessionState,
  type NegotiatedInit,
} from './fuse-session-state';
import { MissRequests, type MissOptions } from './miss-requests';
import type { CacheMissTransport, FdKeeper, MountableImage, MountState, Probe, TransportModule } from './transport';

export const FUSE_FSTYPE = 'fuse.erofs-ondemand';
/** The /dev/fuse fd's name in the fd keeper. */
export const FDNAME = 'fuse';
/** Next to the FUSE mount point in the cache directory: what a daemon taking the session over needs. */
export const SESSION_STATE_FILE = 'fuse-session.json';
/** Names and attributes never change while a blob is attached: the kernel may cache them long. */
const ENTRY_TTL_SECONDS = 3600;
const O_ACCMODE = 3;
/** The largest READ reply: 256 pages (max_pages) and the header. */
const REPLY_BUFFER_SIZE = P.OUT_HEADER_SIZE + 256 * 4096;
const MAX_POOLED_BUFFERS = 64;
const NO_REPLY_OPCODES = new Set<number>([P.Op.FORGET, P.Op.BATCH_FORGET, P.Op.INTERRUPT]);
const W_OK = 2;
/** Set by the kernel in `unique` on a request sent again after FUSE_NOTIFY_RESEND. */
const UNIQUE_RESEND = 1n << 63n;

interface Node {
  ino: number;
  name: Buffer;
  /** null: known from the session state of an earlier daemon, not attached since. */
  file: RangeSource | null;
  size: number;
  /** Mounts using this blob; 0: not listed, not found by lookup, not opened. */
  refs: number;
}

export interface BlobFsOptions extends MissOptions {
  /** FOPEN_DIRECT_IO on blob files (the default): no second copy of the data in the FUSE file's page cache. */
  directIo?: boolean;
  /** The state of a session taken over from an earlier daemon: its node ids and INIT settings stay. */
  restore?: BlobFsState;
  /**
   * Called with the new state whenever a node id or the INIT settings are settled, before the kernel
   * can learn them: what the next daemon needs to take the session over.
   */
  persist?: (state: BlobFsState) => void;
}

/**
 * The filesystem behind the FUSE connection: requests in, replies out through `send`. Knows nothing
 * of /dev/fuse, so the protocol handling is testable with any bytes.
 */
export class BlobFs {
  /** By node id, in increasing order (restored sorted, then appended): the order directories list. */
  private readonly nodes = new Map<number, Node>();
  private readonly byName = new Map<string, Node>();
  private nextIno = P.ROOT_ID + 1;
  private readonly dirHandles = new Map<bigint, P.DirEntry[]>();
  /** Directory handles: this daemon's generation in the high 32 bits, a counter in the low ones. */
  private readonly generation: number;
  private nextDirHandle: bigint;
  private readonly persist?: (state: BlobFsState) => void;
  /** READs taken and not answered yet, by unique id. */
  private readonly misses: MissRequests<bigint>;
  private closed = false;
  private malformed = 0;
  /** Requests the kernel sent again (FUSE_NOTIFY_RESEND): taken by a daemon that died before answering. */
  resent = 0;
  private readonly started = Math.floor(Date.now() / 1000);
  readonly directIo: boolean;
  /** What INIT settled (by this daemon or, restored, by the one whose session it took over). */
  negotiated: NegotiatedInit | null = null;

  constructor(
    private readonly send: (reply: Buffer) => void,
    opts: BlobFsOptions = {},
  ) {
    this.directIo = opts.directIo ?? true;
    this.misses = new MissRequests('fuse', opts);
    this.persist = opts.persist;
    const restore = opts.restore;
    this.generation = restore?.generation ?? 0;
    this.nextDirHandle = (BigInt(this.generation) << 32n) + 1n;
    if (restore) {
      this.negotiated = restore.init ?? null;
      for (const [name, ino] of Object.entries(restore.nodes).sort((a, b) => a[1] - b[1])) {
        const node: Node = { ino, name: Buffer.from(name), file: null, size: 0, refs: 0 };
        this.nodes.set(ino, node);
        this.byName.set(name, node);
        this.nextIno = Math.max(this.nextIno, ino + 1);
      }
    }
  }

  /** What the next daemon needs to take this session over. */
  state(): BlobFsState {
    return {
      ...(this.negotiated ? { init: this.negotiated } : {}),
      generation: this.generation,
      nodes: Object.fromEntries([...this.byName].map(([name, n]) => [name, n.ino])),
    };
  }

  /** Whether `name` has a node id in this session (attached now or before, by this daemon or an earlier one). */
  knows(name: string): boolean {
    return this.byName.has(name);
  }

  /** READ requests received. */
  get reads(): number {
    return this.misses.requests;
  }

  get pendingCount(): number {
    return this.misses.size;
  }

  /** Lists `file` as `name` (or counts one more user of it); its inode number stays for the session. */
  attach(name: string, file: RangeSource): void {
    let node = this.byName.get(name);
    if (!node) {
      node = { ino: this.nextIno++, name: Buffer.from(name), file, size: file.size, refs: 0 };
      this.nodes.set(node.ino, node);
      this.byName.set(name, node);
      this.persist?.(this.state());
    }
    node.file = file; // after an eviction the same blob comes back as a new BlobCache
    node.size = file.size;
    node.refs++;
  }

  /** One user less; at none the name is no longer listed, found or opened. */
  detach(name: string): void {
    const node = this.byName.get(name);
    if (node && node.refs > 0) node.refs--;
  }

  /** Handles one request from the kernel; never throws. */
  handle(buf: Buffer): void {
    let parsed: ReturnType<typeof P.parseRequest>;
    try {
      parsed = P.parseRequest(buf);
    } catch (err) {
      const header = err instanceof P.ProtocolError ? err.header : undefined;
      // Loud for the first few only: a broken peer must not flood the log.
      log.log(this.malformed++ < 10 ? 'warn' : 'debug', 'malformed FUSE request', {
        error: (err as Error).message,
        opcode: header?.opcode,
      });
      // Answerable when its header was readable, unless it is of a kind that takes no answer.
      if (header && !NO_REPLY_OPCODES.has(header.opcode)) this.reply(P.reply(header.unique, P.Errno.EINVAL));
      return;
    }
    const { header, req } = parsed;
    if (header.unique & UNIQUE_RESEND && this.resent++ === 0)
      log.info('FUSE requests the previous daemon left unanswered are sent again', { opcode: header.opcode });
    if (P.expectsNoReply(req)) return; // FORGET/BATCH_FORGET: nodes live for the session; INTERRUPT: reads finish anyway
    if (req.op === 'read') return this.read(header, req);
    let out: Buffer;
    try {
      out = this.dispatch(header, req);
    } catch (err) {
      log.error('FUSE request failed', { opcode: header.opcode, error: (err as Error).message });
      out = P.reply(header.unique, P.Errno.EIO);
    }
    this.reply(out);
  }

  private reply(out: Buffer): void {
    if (!this.closed) this.send(out);
  }

  /** Answers every pending READ with EIO; later completions are dropped. */
  close(): void {
    this.misses.failAll();
    this.closed = true;
  }

  private rootAttr(): P.Attr {
    return { ino: P.ROOT_ID, size: 0, mode: P.S_IFDIR | 0o555, nlink: 2, time: this.started };
  }

  private nodeAttr(n: Node): P.Attr {
    return { ino: n.ino, size: n.size, mode: P.S_IFREG | 0o444, nlink: 1, time: this.started };
  }

  private attached(ino: number): (Node & { file: RangeSource }) | undefined {
    const n = this.nodes.get(ino);
    return n && n.refs > 0 && n.file ? (n as Node & { file: RangeSource }) : undefined;
  }

  /** The listing an OPENDIR snapshots: the attached files in node id order. */
  private listing(): P.DirEntry[] {
    return [
      { ino: P.ROOT_ID, name: Buffer.from('.'), dir: true },
      { ino: P.ROOT_ID, name: Buffer.from('..'), dir: true },
      ...[...this.nodes.values()].filter((n) => n.refs > 0).map((n) => ({ ino: n.ino, name: n.name, dir: false })),
    ];
  }

  private dispatch(h: P.RequestHeader, req: Exclude<P.Request, { op: 'read' }>): Buffer {
    const u = h.unique;
    const err = (errno: number) => P.reply(u, errno);
    switch (req.op) {
      case 'init':
        return this.init(u, req);
      case 'lookup': {
        if (h.nodeid !== P.ROOT_ID) return err(this.nodes.has(h.nodeid) ? P.Errno.ENOTDIR : P.Errno.ENOENT);
        const n = this.byName.get(req.name.toString('latin1'));
        if (!n || n.refs === 0) return err(P.Errno.ENOENT);
        return P.reply(u, 0, P.entryOut(this.nodeAttr(n), ENTRY_TTL_SECONDS));
      }
      case 'getattr': {
        if (h.nodeid === P.ROOT_ID) return P.reply(u, 0, P.attrOut(this.rootAttr(), ENTRY_TTL_SECONDS));
        const n = this.nodes.get(h.nodeid);
        return n?.file ? P.reply(u, 0, P.attrOut(this.nodeAttr(n), ENTRY_TTL_SECONDS)) : err(P.Errno.ENOENT);
      }
      case 'open': {
        if (h.nodeid === P.ROOT_ID) return err(P.Errno.EISDIR);
        if (!this.attached(h.nodeid)) return err(P.Errno.ENOENT);
        if ((req.flags & O_ACCMODE) !== 0) return err(P.Errno.EROFS);
        // NOFLUSH: a close sends no FLUSH (nothing to flush; losetup's close would wait on it).
        return P.reply(
          u,
          0,
          P.openOut(0n, (this.directIo ? P.OpenFlag.DIRECT_IO : P.OpenFlag.KEEP_CACHE) | P.OpenFlag.NOFLUSH),
        );
      }
      case 'release':
      case 'flush':
      case 'destroy':
        return P.reply(u, 0);
      case 'opendir': {
        if (h.nodeid !== P.ROOT_ID) return err(this.nodes.has(h.nodeid) ? P.Errno.ENOTDIR : P.Errno.ENOENT);
        // A snapshot per open directory: offsets stay meaningful however attachments change.
        const fh = this.nextDirHandle++;
        this.dirHandles.set(fh, this.listing());
        return P.reply(u, 0, P.openOut(fh, 0));
      }
      case 'readdir': {
        let entries = this.dirHandles.get(req.fh);
        // A handle an earlier daemon gave out: its snapshot died with it; the listing now, in the same order.
        if (!entries && req.fh >> 32n < BigInt(this.generation)) {
          entries = this.listing();
          this.dirHandles.set(req.fh, entries);
        }
        if (!entries) return err(P.Errno.EBADF);
        return P.reply(u, 0, P.dirents(entries, Math.min(req.offset, entries.length), req.size));
      }
      case 'releasedir':
        this.dirHandles.delete(req.fh);
        return P.reply(u, 0);
      case 'statfs': {
        const live = [...this.nodes.values()].filter((n) => n.refs > 0);
        return P.reply(
          u,
          0,
          P.statfsOut({
            blocks: live.reduce((s, n) => s + Math.ceil(n.size / 4096), 0),
            files: live.length + 1,
            bsize: 4096,
            namelen: 255,
          }),
        );
      }
      case 'getxattr':
        return err(P.Errno.ENODATA);
      case 'listxattr':
        return req.size === 0 ? P.reply(u, 0, P.getxattrOut(0)) : P.reply(u, 0);
      case 'access':
        return err(req.mask & W_OK ? P.Errno.EROFS : 0);
      default:
        return err(P.Errno.ENOSYS);
    }
  }

  private init(u: bigint, req: Extract<P.Request, { op: 'init' }>): Buffer {
    if (req.major < P.KERNEL_MAJOR || (req.major === P.KERNEL_MAJOR && req.minor < P.MIN_KERNEL_MINOR)) {
      log.error('FUSE protocol of this kernel is too old', {
        kernel: `${req.major}.${req.minor}`,
        needed: `${P.KERNEL_MAJOR}.${P.MIN_KERNEL_MINOR}`,
      });
      return P.reply(u, P.Errno.EPROTO);
    }
    const minor = req.major > P.KERNEL_MAJOR ? P.OUR_MINOR : Math.min(req.minor, P.OUR_MINOR);
    // Async reads: many READs of one file in flight. ASYNC_DIO: a direct read is split into
    // parallel requests. MAX_PAGES: requests up to 1 MiB (256 pages, the kernel's default ceiling).
    const wanted = P.InitFlag.ASYNC_READ | P.InitFlag.ASYNC_DIO | P.InitFlag.PARALLEL_DIROPS | P.InitFlag.MAX_PAGES;
    const flags = req.flags & wanted;
    const maxPages = flags & P.InitFlag.MAX_PAGES ? 256 : 32;
    this.negotiated = { minor, maxPages, flags };
    try {
      this.persist?.(this.state());
    } catch (err) {
      // Not fatal to the session: nothing a daemon taking it over serves depends on these settings.
      log.error('FUSE session state not saved after INIT', { error: (err as Error).message });
    }
    log.debug('FUSE session initialised', {
      kernel: `${req.major}.${req.minor}`,
      minor,
      flags,
      maxReadahead: req.maxReadahead,
    });
    return P.reply(
      u,
      0,
      P.initOut({
        minor,
        maxReadahead: req.maxReadahead, // the kernel only ever lowers its own value with this
        flags,
        // Async READs are "background" requests: allow many in flight (the default is 12).
        maxBackground: 64,
        congestionThreshold: 48,
        maxWrite: 4096, // read-only: the minimum
        maxPages,
      }),
    );
  }

  /** READ data goes out from pooled buffers: a fresh 1 MiB buffer per request costs page faults and GC. */
  private readonly buffers: Buffer[] = [];

  private read(h: P.RequestHeader, req: Extract<P.Request, { op: 'read' }>): void {
    const u = h.unique;
    const answer = (errno: number) => this.reply(P.reply(u, errno));
    if (h.nodeid === P.ROOT_ID) return answer(P.Errno.EISDIR);
    const node = this.attached(h.nodeid);
    if (!node)
      return this.misses.refuse(answer, 'READ of a blob file no mount uses', {
        nodeid: h.nodeid.toString(),
        pid: h.pid,
      });
    // The kernel sends at most max_pages (256) pages; anything larger is not from it.
    if (req.size > REPLY_BUFFER_SIZE - P.OUT_HEADER_SIZE) return answer(P.Errno.EINVAL);
    const start = Math.min(req.offset, node.size);
    const end = Math.min(node.size, start + req.size);
    const pooled = this.buffers.pop() ?? Buffer.allocUnsafeSlow(REPLY_BUFFER_SIZE);
    const out = P.dataReply(u, end - start, pooled);
    const served = this.misses.serve(u, {
      source: node.file,
      start,
      end,
      sink: { kind: 'buffer', buf: out.buf, offset: P.OUT_HEADER_SIZE },
      // The reply is written synchronously: the buffer is free again once it is sent.
      answer: (errno) => this.reply(errno === 0 ? out.finish(end - start) : P.reply(u, errno)),
      pid: h.pid,
    });
    // Back to the pool only once serving is over: a request answered at its deadline may still be filling it.
    void served.then(() => {
      if (this.buffers.length < MAX_POOLED_BUFFERS) this.buffers.push(pooled);
    });
  }
}

export interface FuseTransportOptions extends MissOptions {
  /** Mount point of the FUSE filesystem; the daemon uses <cacheDir>/fuse. */
  dir: string;
  backing?: FuseBacking;
  directIo?: boolean;
  /** EROFS read-ahead in KiB set on each mount (0: leave the kernel's default). */
  readAheadKb?: number;
  /**
   * Where the /dev/fuse fd outlives the daemon, and the fd an earlier daemon left there. Needs
   * `stateFile`; without both, the session ends with the daemon.
   */
  fds?: FdKeeper;
  /** The session's state (node ids, INIT settings) for a daemon taking it over. */
  stateFile?: string;
}

/** The FUSE files one mount uses: blob names, and local files served for it alone. */
interface MountedImage {
  names: string[];
  /** Names of local files served through FUSE for it (bootstraps on tmpfs). */
  local: string[];
}

/** What `resume` needs of a mount: the FUSE files EROFS was mounted on, by name. */
function mountState(used: MountedImage): MountState {
  return { fuseFiles: used.names.join(','), ...(used.local.length > 0 ? { fuseBootstrap: used.local.join(',') } : {}) };
}

/** Detaches whatever is mounted on `dir` (a FUSE mount left by a daemon that died: its reads fail). */
export function detachStale(dir: string): number {
  let n = 0;
  while (mounts().some((m) => m.target === dir) && n < 16) {
    native.umount(dir, MNT_DETACH);
    n++;
  }
  return n;
}

export class FuseTransport implements CacheMissTransport {
  readonly name = 'fuse' as const;
  readonly dir: string;
  get requests(): number {
    return this.fs.reads;
  }
  readonly backing: 'file' | 'loop';
  private readonly readAheadKb: number;
  private readonly session: FuseSession;
  readonly fs: BlobFs;
  private readonly mounted = new Map<string, MountedImage>();
  private closed = false;
  private reading = false;
  private readonly fds?: FdKeeper;
  private readonly stateFile?: string;
  /** The FUSE filesystem's major:minor once mounted or taken over: the connection the state file names. */
  private dev: string | null = null;
  /** Taken over from an earlier daemon: reading starts in `begin`, after FUSE_NOTIFY_RESEND. */
  readonly inherited: boolean;
  /** A copy of the fd is kept outside this process: the connection must outlive an unplanned exit. */
  private kept = false;
  private mounting: Promise<void> = Promise.resolve();
  private readonly localFiles = new Map<string, { file: LocalFileSource; refs: number }>();
  /** bdi directory of each mount whose read-ahead was raised (for tests and benchmarks). */
  readonly bdis = new Map<string, string>();

  constructor(opts: FuseTransportOptions) {
    this.dir = path.resolve(opts.dir);
    const backing = opts.backing ?? 'auto';
    this.backing = backing === 'auto' ? (kernelHasFileBackedErofs() ? 'file' : 'loop') : backing;
    this.readAheadKb = opts.readAheadKb ?? 4096;
    this.fds = opts.fds;
    this.stateFile = opts.stateFile;
    const fsOptions: BlobFsOptions = {
      directIo: opts.directIo,
      onMiss: opts.onMiss,
      deadlineMs: opts.deadlineMs,
      persist: (state) => this.saveState(state),
    };
    const taken = this.takeOver();
    this.inherited = taken !== null;
    this.session = new native.FuseSession();
    if (taken) {
      this.session.adopt(taken.fd, this.dir);
      this.dev = taken.state.dev;
      this.kept = true;
      this.fs = new BlobFs((reply) => this.send(reply), {
        ...fsOptions,
        restore: { ...taken.state, generation: taken.state.generation + 1 },
      });
      this.saveState(this.fs.state()); // the new generation: handles given out from now on are new ones
      log.info('FUSE session inherited from the previous daemon', {
        fd: taken.fd,
        dev: taken.state.dev,
        nodes: Object.keys(taken.state.nodes).length,
      });
    } else {
      // First: a dead FUSE mount fails even a stat of its mount point (ENOTCONN).
      const stale = detachStale(this.dir);
      if (stale > 0) log.warn('detached a FUSE mount left by a daemon that is gone', { dir: this.dir });
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      this.fs = new BlobFs((reply) => this.send(reply), fsOptions);
      try {
        this.session.mount(this.dir, FUSE_FSTYPE, MS_RDONLY | MS_NOSUID | MS_NODEV);
        this.dev = fuseMountDev(this.dir);
        this.saveState(this.fs.state());
      } catch (err) {
        this.session.close();
        throw err;
      }
      // The state is saved first: a kept fd is always one the state file describes.
      if (this.stateFile && this.fds?.keep(FDNAME, this.session.fd)) {
        this.kept = true;
        log.info('FUSE session handed to the fd keeper', { keeper: this.fds.kind });
      }
      this.startReading();
    }
    // A daemon that exits without close() (an uncaught error) still detaches its FUSE mount, unless the
    // fd keeper holds the connection for the next daemon; SIGKILL leaves it, which the next daemon
    // takes over, or detaches at start.
    process.on('exit', this.detachAtExit);
  }

  /**
   * The fd an earlier daemon left with the keeper, with the state of its session, when both are there
   * and agree with what is mounted on `dir`; otherwise that fd is closed and dropped from the keeper
   * (its connection ends: readers of its mounts get errors, never wrong bytes) and null is returned.
   */
  private takeOver(): { fd: number; state: FuseSessionState } | null {
    const fd = this.fds?.inherited(FDNAME);
    if (fd === undefined) return null;
    let why: string;
    try {
      if (!this.stateFile) throw new Error('no state file to take it over with');
      const state = loadFuseSessionState(this.stateFile);
      const dev = fuseMountDev(this.dir);
      if (dev === state.dev) return { fd, state };
      why = `${this.dir} holds ${dev ? `FUSE filesystem ${dev}` : 'no FUSE mount'}, the state file describes ${state.dev}`;
    } catch (err) {
      why = (err as Error).message;
    }
    log.warn('inherited FUSE session not taken over: its mounts are mounted again', { fd, reason: why });
    try {
      fs.closeSync(fd);
    } catch {
      // not ours after all: nothing to close
    }
    this.fds?.drop(FDNAME);
    return null;
  }

  private saveState(state: BlobFsState): void {
    if (!this.stateFile || !this.dev) return; // before the mount: saved once it exists
    saveFuseSessionState(this.stateFile, { dev: this.dev, ...state });
  }

  private startReading(): void {
    if (this.reading) return;
    this.reading = true;
    this.session.start((req) => {
      if (req) this.fs.handle(req);
      else if (!this.closed)
        log.error('FUSE connection ended while the daemon runs (unmounted or aborted)', { dir: this.dir });
    });
  }

  /**
   * After a takeover, once the mounts are resumed: FUSE_NOTIFY_RESEND puts the requests the dead
   * daemon had read and not answered back in the queue, ahead of the new ones; then reading starts.
   */
  begin(): void {
    if (this.closed || this.reading) return;
    const errno = this.session.resend();
    if (errno !== 0)
      log.error(
        'FUSE_NOTIFY_RESEND refused (a kernel before 6.9): reads the previous daemon had taken wait until the FUSE connection is aborted',
        { errno, abort: this.dev ? `/sys/fs/fuse/connections/${this.dev.split(':')[1]}/abort` : undefined },
      );
    this.startReading();
  }

  /**
   * Takes over a mount the previous daemon made on this session: the blob files it was mounted on
   * are attached again under the node ids that daemon gave them (from the state file). False (the
   * daemon then mounts again) when the session was not taken over or the image is no longer the one
   * the mount uses.
   */
  resume(image: MountableImage, target: string, state: MountState): boolean {
    if (!this.inherited || this.closed) return false;
    const names = image.blobs.map((b) => path.basename(b.path));
    const local = `bootstrap-${path.basename(image.bootstrapPath)}`;
    const withLocal = state.fuseBootstrap !== undefined;
    const unknown = [...names, ...(withLocal ? [local] : [])].find((n) => !this.fs.knows(n));
    const problem =
      state.fuseFiles !== names.join(',')
        ? `mounted on FUSE files ${state.fuseFiles ?? '(none saved)'}, the image now has ${names.join(',')}`
        : withLocal && state.fuseBootstrap !== local
          ? `its bootstrap was served as ${state.fuseBootstrap}, the image's is ${local}`
          : unknown !== undefined
            ? `FUSE file ${unknown} has no node id in the session state`
            : null;
    if (problem) {
      log.warn('FUSE mount not resumed', { target, image: image.ref, reason: problem });
      return false;
    }
    const used: MountedImage = { names, local: [] };
    names.forEach((n, i) => this.fs.attach(n, image.blobs[i]));
    if (withLocal) this.attachLocal(local, image.bootstrapPath, used);
    this.mounted.set(target, used);
    return true;
  }

  settings(): Record<string, unknown> {
    return { fuseBacking: this.backing, fuseDir: this.dir, inherited: this.inherited, fuseResent: this.fs.resent };
  }

  private send(reply: Buffer): void {
    const errno = this.session.reply(reply);
    // ENOENT: the request was interrupted or aborted meanwhile; nobody waits for the answer.
    if (errno !== 0 && errno !== 2)
      log.warn('FUSE reply not written', { errno, unique: reply.readBigUInt64LE(8).toString() });
  }

  /** The FUSE file of a blob, as EROFS sees it: named by the blob digest's hex. */
  blobFile(blob: BlobCache): string {
    return path.join(this.dir, path.basename(blob.path));
  }

  async mount(image: MountableImage, target: string): Promise<MountState> {
    if (this.closed) throw new Error('FUSE transport is closed');
    // One mount at a time: the file-backed EROFS bdi is found as the one that appears during the mount.
    const previous = this.mounting;
    let done = () => undefined as void;
    this.mounting = new Promise<void>((r) => (done = r));
    await previous;
    const names = image.blobs.map((b) => path.basename(b.path));
    image.blobs.forEach((b, i) => this.fs.attach(names[i], b));
    const used: MountedImage = { names, local: [] };
    try {
      const bdisBefore = erofsBdiNames();
      const files = names.map((n) => path.join(this.dir, n));
      // Never stat or open anything on these mounts from this thread: it answers their FUSE requests.
      let bdi: string | null;
      if (this.backing === 'file') {
        await this.mountFileBacked(image.bootstrapPath, files, target, used);
        bdi = newErofsBdi(bdisBefore);
      } else {
        bdi = blockDeviceBdi(await this.mountThroughLoops(image.bootstrapPath, files, target));
      }
      this.mounted.set(target, used);
      this.raiseReadAhead(target, bdi);
      return mountState(used);
    } catch (err) {
      this.release(used);
      throw err;
    } finally {
      done();
    }
  }

  /**
   * File-backed EROFS over the FUSE files, the bootstrap read from the cache directory. A bootstrap on
   * a filesystem that cannot back a mount (tmpfs has no read_folio: ENOTBLK) is served through FUSE too.
   */
  private async mountFileBacked(bootstrap: string, files: string[], target: string, used: MountedImage): Promise<void> {
    try {
      await mountErofsAsync({ bootstrap, blobs: files, target });
      return;
    } catch (err) {
      if ((err as { cause?: { code?: string } }).cause?.code !== 'ENOTBLK') throw err;
    }
    const name = `bootstrap-${path.basename(bootstrap)}`;
    this.attachLocal(name, bootstrap, used);
    log.info('bootstrap served through FUSE: its filesystem cannot back an EROFS mount', { bootstrap });
    await mountErofsAsync({ bootstrap: path.join(this.dir, name), blobs: files, target });
  }

  /** Serves the local file `file` as `name` for the mount `used`: one open file however many mounts use it. */
  private attachLocal(name: string, file: string, used: MountedImage): void {
    let local = this.localFiles.get(name);
    if (!local) {
      local = { file: new LocalFileSource(file), refs: 0 };
      this.localFiles.set(name, local);
    }
    local.refs++;
    this.fs.attach(name, local.file);
    used.local.push(name);
  }

  private release(used: MountedImage): void {
    for (const n of used.names) this.fs.detach(n);
    for (const name of used.local) {
      this.fs.detach(name);
      const local = this.localFiles.get(name);
      if (local && --local.refs === 0) {
        local.file.close();
        this.localFiles.delete(name);
      }
    }
  }

  /**
   * Kernels before 6.12: loop devices (read-only, direct I/O: no second page cache) over the FUSE
   * files and the bootstrap, EROFS on the bootstrap's device with `device=` the blobs' devices (files
   * and devices cannot be mixed). The devices are detached right after the mount: still in use, the
   * kernel marks them autoclear, so they go away with the mount, even if this daemon dies.
   */
  private async mountThroughLoops(bootstrap: string, files: readonly string[], target: string): Promise<string> {
    const devices: string[] = [];
    try {
      for (const f of files) devices.push(await attachLoop(f));
      const boot = await attachLoop(bootstrap);
      devices.push(boot);
      for (const d of devices)
        if (!loopDirectIo(d)) log.warn('loop device without direct I/O: data is cached twice', { device: d });
      try {
        await mountErofsAsync({ bootstrap: boot, blobs: devices.slice(0, -1), target });
        return boot;
      } catch (err) {
        throw new Error(`${(err as Error).message} (bootstrap ${bootstrap})`, { cause: err });
      }
    } finally {
      for (const d of devices)
        await detachLoop(d).catch((e: Error) => log.warn('loop device not detached', { device: d, error: e.message }));
    }
  }

  /**
   * EROFS reads ahead 128 KiB by default: each miss is then a 128 KiB FUSE READ. A larger window
   * gives requests up to 1 MiB (the FUSE ceiling), which pays whenever a read waits on the network.
   */
  private raiseReadAhead(target: string, bdi: string | null): void {
    if (this.readAheadKb <= 0) return;
    if (!bdi) {
      log.warn('EROFS read-ahead left at its default: its bdi is not known (another EROFS mounted at the same time?)', {
        target,
      });
      return;
    }
    try {
      fs.writeFileSync(path.join(bdi, 'read_ahead_kb'), String(this.readAheadKb));
      this.bdis.set(target, bdi);
    } catch (err) {
      log.warn('EROFS read-ahead not raised', { target, bdi, error: (err as Error).message });
    }
  }

  async unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
    await native.umountAsync(target, UMOUNT_NOFOLLOW | (opts.lazy ? MNT_DETACH : 0));
    const used = this.mounted.get(target);
    this.mounted.delete(target);
    this.bdis.delete(target);
    if (used) this.release(used);
  }

  /**
   * Stopping on purpose (mounts are gone): answers whatever is pending with EIO, drops the keeper's
   * copy of the fd (nothing to resume), detaches the FUSE mount, closes the connection.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    process.off('exit', this.detachAtExit);
    this.fs.close();
    if (this.kept) this.fds?.drop(FDNAME);
    this.session.close();
  }

  private readonly detachAtExit = (): void => {
    if (!this.closed && !this.kept) this.session.close();
  };
}

/** major:minor of the FUSE filesystem of this transport mounted on `dir` (the topmost), or null. */
function fuseMountDev(dir: string): string | null {
  return (
    mounts()
      .filter((m) => m.target === dir && m.fstype === FUSE_FSTYPE)
      .pop()?.dev ?? null
  );
}

/** bdi names of file-backed EROFS superblocks (erofs-<sequence number>). */
export function erofsBdiNames(): Set<string> {
  return new Set(fs.readdirSync('/sys/class/bdi').filter((n) => n.startsWith('erofs-')));
}

/** The bdi of a block device (read-ahead of a filesystem on it): /sys/class/bdi/<major:minor>. */
export function blockDeviceBdi(dev: string): string | null {
  try {
    const dir = `/sys/class/bdi/${fs.readFileSync(`/sys/class/block/${path.basename(dev)}/dev`, 'utf8').trim()}`;
    return fs.existsSync(dir) ? dir : null;
  } catch {
    return null;
  }
}

/**
 * A file-backed EROFS superblock gets a bdi of its own named by a global counter (erofs-N), which
 * nothing maps back to the mount: it is the one that appeared during the mount (`before`: the names
 * just before it), when exactly one did.
 */
export function newErofsBdi(before: Set<string>): string | null {
  const appeared = [...erofsBdiNames()].filter((n) => !before.has(n));
  return appeared.length === 1 ? `/sys/class/bdi/${appeared[0]}` : null;
}

/**
 * FUSE: /dev/fuse opens read-write and the kernel knows the filesystem type. The cache filesystem does
 * not matter: the FUSE files are served from the cache files, whatever holds them (tmpfs included; a
 * bootstrap there is served through FUSE too).
 */
function probe(): Probe {
  let filesystems = '';
  try {
    filesystems = fs.readFileSync('/proc/filesystems', 'utf8');
  } catch {
    // treated as "fuse not listed"
  }
  if (!/\tfuse\n/.test(filesystems)) return { ok: false, detail: 'fuse is not in /proc/filesystems' };
  try {
    fs.closeSync(fs.openSync('/dev/fuse', 'r+'));
    const backing = kernelHasFileBackedErofs()
      ? 'EROFS file-backed on its files (6.12+)'
      : 'EROFS through loop devices (kernel before 6.12)';
    return { ok: true, detail: `/dev/fuse opens read-write; fuse in /proc/filesystems; ${backing}` };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

export const fuseTransport: TransportModule = {
  name: 'fuse',
  feature: 'FUSE',
  zerosWithoutDaemon: false,
  kernelReadsAfterAnswer: false,
  storesFromMount: false,
  describe: () =>
    'FUSE READs of blob files that EROFS is mounted on (any kernel with FUSE); every miss of the page cache reaches the daemon; a restarted daemon takes the /dev/fuse session over (READs in flight are resent: Linux 6.9+)',
  probe,
  // Inside the cache directory (root-only, 0700): one FUSE mount per daemon, found again at the same
  // place after a crash, and its files reachable by no one else.
  create: (ctx) =>
    new FuseTransport({
      dir: path.join(ctx.cacheDir, 'fuse'),
      backing: ctx.fuseBacking,
      ...ctx.misses,
      fds: ctx.fds,
      stateFile: path.join(ctx.cacheDir, SESSION_STATE_FILE),
    }),
};
