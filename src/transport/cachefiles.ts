// cachefiles on-demand transport (kernels 5.19-7.1 built with CONFIG_CACHEFILES_ONDEMAND and
// CONFIG_EROFS_FS_ONDEMAND): EROFS is mounted in fscache mode (`fsid=`, `domain_id=`), the kernel's
// cachefiles backend keeps the data, and every miss arrives here as a READ on /dev/cachefiles. The
// kernel's cache object of a blob is the blob's cache: chunks are fetched, verified and written straight
// into it through its anonymous fd (stored once: the daemon's own cache file stays empty); a bootstrap
// object is copied from the local bootstrap. Then the READ is completed; a READ that cannot be served
// is completed unfilled, which the reader sees as EIO. Cache hits never leave the kernel.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE } from '../erofs/format';
import { log } from '../log';
import { mountFscache } from '../mount/fscache';
import { MNT_DETACH, UMOUNT_NOFOLLOW, native, type CachefilesDevice, type CachefilesMessage } from '../native';
import { digestHex } from '../oci/digest';
import type { BlobCache, KernelObject } from '../storage/blob-cache';
import { LocalFileSource, type RangeSink } from '../storage/range-source';
import { MissRequests, type MissOptions } from './miss-requests';
import type { CacheMissTransport, FdKeeper, MountableImage, MountState, Probe, TransportModule } from './transport';

const { ENOENT, EIO } = os.constants.errno;

/** Images sharing blobs share their cache files: one domain for everything this daemon mounts. */
export const DOMAIN_ID = 'erofs-ondemand';
/** The device fd's name in systemd's fd store (LISTEN_FDNAMES when it is handed back). */
export const FDNAME = 'cachefiles';
/** The kernel's culling limits, written out so that they are the daemon's choice, not an accident. */
const CULLING = ['brun 10%', 'bcull 7%', 'bstop 3%', 'frun 10%', 'fcull 7%', 'fstop 3%'];
/** Longest cookie key accepted: fsids we hand out are shorter, device tags are 64 hex digits. */
const MAX_KEY = 256;

/** What a cookie key names: a mount's bootstrap, copied from the local file, or a blob, fetched. */
type Named = { kind: 'bootstrap'; source: LocalFileSource } | { kind: 'blob'; source: BlobCache };

interface CacheObject {
  key: string;
  named: Named;
  /** Anonymous fds the kernel handed over for this object (one per OPEN); written through the newest. */
  fds: number[];
  /** Writes into it under way on the thread pool: its fds are closed only once they are done. */
  busy: number;
  /** The kernel sent CLOSE: no new write starts. */
  closed: boolean;
}

/** `bind ondemand` on a throwaway cache directory: the one definitive test of kernel support. */
export function probeCachefiles(cacheDir: string): Probe {
  if (!fs.existsSync('/dev/cachefiles')) return { ok: false, detail: 'no /dev/cachefiles (CONFIG_CACHEFILES off)' };
  const dir = path.join(cacheDir, `.probe-cachefiles-${process.pid}`);
  const dev = new native.CachefilesDevice();
  try {
    fs.mkdirSync(dir, { recursive: true });
    dev.open();
    dev.command(`dir ${dir}`);
    dev.command('tag erofs-ondemand-probe');
    dev.command('bind ondemand');
    return { ok: true, detail: '`bind ondemand` accepted on /dev/cachefiles' };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why =
      e.code === 'EINVAL'
        ? ' (kernel without CONFIG_CACHEFILES_ONDEMAND)'
        : e.code === 'EBUSY'
          ? ' (another cachefiles daemon holds the device)'
          : '';
    return { ok: false, detail: `${e.message}${why}` };
  } finally {
    dev.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

export class CachefilesTransport implements CacheMissTransport {
  readonly name = 'cachefiles' as const;
  private readonly dev: CachefilesDevice;
  /** What each cookie key names: a mount's bootstrap (by fsid) or a data blob (by device tag). */
  private readonly byKey = new Map<string, Named>();
  private readonly objects = new Map<number, CacheObject>();
  /** The open object of each cookie key. */
  private readonly openByKey = new Map<string, CacheObject>();
  /** Each blob's kernel object as its BlobCache writes it (one per device tag, for the daemon's life). */
  private readonly kernelObjects = new Map<string, KernelObject>();
  /** Per mount target: the fsid it was mounted with. */
  private readonly fsids = new Map<string, string>();
  /** Pending READs by message id. */
  private readonly misses: MissRequests<number>;
  private closed = false;

  /** Set when the device came from an earlier daemon: `restore` is sent once its mounts are resumed. */
  private readonly inherited: boolean;

  /**
   * Binds the cache, or takes over the still-bound device of a daemon that died (its copy kept by the
   * fd keeper). A fresh binding is handed to the keeper, when there is one, so that the next daemon can
   * resume without breaking mounts.
   */
  constructor(
    cacheDir: string,
    opts: MissOptions,
    private readonly fds: FdKeeper,
  ) {
    const inheritedFd = fds.inherited(FDNAME);
    this.misses = new MissRequests('cachefiles', opts);
    const dir = path.join(cacheDir, 'fscache');
    this.dev = new native.CachefilesDevice();
    this.inherited = inheritedFd !== undefined;
    if (inheritedFd !== undefined) {
      this.dev.adopt(inheritedFd);
      log.info('cachefiles device inherited from the previous daemon', { fd: inheritedFd });
      return;
    }
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.dev.open();
    try {
      this.dev.command(`dir ${dir}`);
      this.dev.command('tag erofs-ondemand');
      // Culling by free space and files on the cache filesystem: cull below 7%, stop caching below 3%.
      for (const c of CULLING) this.dev.command(c);
      this.dev.command('bind ondemand');
    } catch (err) {
      this.dev.close();
      throw new Error(`cachefiles on-demand mode on ${dir}: ${(err as Error).message}`, { cause: err });
    }
    if (fds.keep(FDNAME, this.dev.fd)) log.info('cachefiles device handed to the fd keeper', { keeper: fds.kind });
  }

  get requests(): number {
    return this.misses.requests;
  }

  settings(): Record<string, unknown> {
    return { inherited: this.inherited };
  }

  begin(): void {
    // After `restore` the kernel sends again what the dead daemon left unanswered, reopening objects first.
    if (this.inherited) this.dev.command('restore');
    this.dev.start((m) => this.onMessage(m));
  }

  resume(image: MountableImage, target: string, state: MountState): boolean {
    if (!this.inherited || !state.fsid) return false;
    this.register(image, state.fsid);
    this.fsids.set(target, state.fsid);
    return true;
  }

  private register(image: MountableImage, fsid: string): void {
    this.byKey.set(fsid, { kind: 'bootstrap', source: new LocalFileSource(image.bootstrapPath) });
    for (const blob of image.blobs) {
      const key = digestHex(blob.remote.digest);
      blob.keepInKernelObject(this.kernelObject(key));
      this.byKey.set(key, { kind: 'blob', source: blob });
    }
  }

  /** The object of cookie `key` as a blob cache writes it: through the newest fd of the open object. */
  private kernelObject(key: string): KernelObject {
    let object = this.kernelObjects.get(key);
    if (!object) {
      object = {
        use: async (op) => {
          const obj = this.openByKey.get(key);
          if (!obj || obj.closed || obj.fds.length === 0)
            throw new Error(`cachefiles object ${key} is not open (no mount reads it now)`);
          obj.busy++;
          try {
            return await op(obj.fds[obj.fds.length - 1]);
          } finally {
            if (--obj.busy === 0 && obj.closed) this.closeFds(obj);
          }
        },
      };
      this.kernelObjects.set(key, object);
    }
    return object;
  }

  private forgetFsid(fsid: string): void {
    const named = this.byKey.get(fsid);
    if (named?.kind === 'bootstrap') named.source.close();
    this.byKey.delete(fsid);
  }
  async mount(image: MountableImage, target: string): Promise<MountState> {
    // One fsid per bootstrap, so a remount finds its cached bootstrap; a second mount of the same
    // image at once needs another (the kernel refuses a duplicate fsid within a domain).
    const base = `eo-${digestHex(image.bootstrapDigest).slice(0, 32)}`;
    const taken = new Set(this.fsids.values());
    let fsid = base;
    for (let n = 2; taken.has(fsid); n++) fsid = `${base}-${n}`;
    this.register(image, fsid);
    try {
      await mountFscache({ fsid, domainId: DOMAIN_ID, target });
    } catch (err) {
      this.forgetFsid(fsid);
      throw err;
    }
    this.fsids.set(target, fsid);
    return { fsid };
  }

  async unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
    native.umount(target, UMOUNT_NOFOLLOW | (opts.lazy ? MNT_DETACH : 0));
    const fsid = this.fsids.get(target);
    this.fsids.delete(target);
    if (fsid) this.forgetFsid(fsid);
  }

  private onMessage(m: CachefilesMessage): void {
    if (this.closed) return;
    try {
      switch (m.opcode) {
        case 'open':
          return this.onOpen(m);
        case 'read':
          return void this.onRead(m);
        case 'close':
          return this.onClose(m.objectId);
        case 'invalid':
          log.error('malformed message from /dev/cachefiles refused', {
            reason: m.reason,
            msgId: m.msgId,
            bytes: m.raw.length,
          });
          if (m.fd !== undefined) {
            if (m.msgId !== undefined) this.dev.copen(m.msgId, -EIO);
            this.dev.closeFd(m.fd);
          }
          return;
        case 'error':
          log.error('/dev/cachefiles read failed: cache-miss service stopped', { error: m.reason, code: m.code });
          return;
      }
    } catch (err) {
      log.error('cachefiles message not handled', { opcode: m.opcode, error: (err as Error).message });
    }
  }

  private onOpen(m: Extract<CachefilesMessage, { opcode: 'open' }>): void {
    const key = m.cookieKey.toString('latin1');
    const named = key.length <= MAX_KEY ? this.byKey.get(key) : undefined;
    if (!named) {
      log.warn('cachefiles OPEN of an object no mount of this daemon names: refused', {
        volume: m.volumeKey.toString('latin1').slice(0, MAX_KEY),
        key: key.slice(0, MAX_KEY),
      });
      this.dev.copen(m.msgId, -ENOENT);
      this.dev.closeFd(m.fd);
      return;
    }
    const obj = this.objects.get(m.objectId) ?? { key, named, fds: [], busy: 0, closed: false };
    obj.fds.push(m.fd);
    this.objects.set(m.objectId, obj);
    this.openByKey.set(key, obj);
    const { size } = named.source;
    this.dev.copen(m.msgId, size);
    log.debug('cachefiles object opened', { objectId: m.objectId, key, size });
    // What the object holds is what is cached: the kernel may have culled it while it was closed.
    if (named.kind === 'blob')
      named.source
        .syncWithObject()
        .catch((err: Error) => log.warn('cachefiles object not read', { key, error: err.message }));
  }

  private onClose(objectId: number): void {
    const obj = this.objects.get(objectId);
    if (!obj) return;
    obj.closed = true;
    this.objects.delete(objectId);
    if (this.openByKey.get(obj.key) === obj) this.openByKey.delete(obj.key);
    if (obj.busy === 0) this.closeFds(obj);
  }

  /** Closes an object's fds, once: a closed fd's number may name another file at once. */
  private closeFds(obj: CacheObject): void {
    for (const fd of obj.fds.splice(0)) this.dev.closeFd(fd);
  }

  private onRead(m: Extract<CachefilesMessage, { opcode: 'read' }>): void {
    const obj = this.objects.get(m.objectId);
    if (!obj || obj.fds.length === 0) {
      // No fd to complete it through; the kernel fails the read when the object goes.
      return this.misses.refuse(() => undefined, 'READ for an unknown object', { objectId: m.objectId });
    }
    const fd = obj.fds[obj.fds.length - 1];
    const { source } = obj.named;
    // Whole blocks: writes into the anonymous fd are direct I/O (the addon pads the object's last one).
    const start = Math.floor(m.offset / BLOCK_SIZE) * BLOCK_SIZE;
    const end = Math.min(source.size, Math.ceil((m.offset + m.length) / BLOCK_SIZE) * BLOCK_SIZE);
    // A blob's chunks go straight into its object (its blob cache writes them there); a bootstrap's
    // bytes are copied out of the local file.
    const buf = obj.named.kind === 'bootstrap' ? Buffer.alloc(Math.max(0, end - start)) : undefined;
    const sink: RangeSink = buf ? { kind: 'buffer', buf, offset: 0 } : { kind: 'cache' };
    const answer = (errno: number) => {
      // An object closed meanwhile took its fds with it: their numbers may name other files by now.
      if (this.objects.get(m.objectId) !== obj || !obj.fds.includes(fd)) return;
      if (errno === 0 && buf && buf.length > 0) this.dev.writeAligned(fd, start, buf, source.size);
      this.dev.readComplete(fd, m.msgId);
    };
    void this.misses.serve(m.msgId, { source, start, end, sink, answer });
  }

  /** Stopping on purpose (mounts are gone): the fd store's copy is dropped too, so the cache is unbound. */
  async close(): Promise<void> {
    // Complete what is pending (unfilled: EIO) so no reader waits on a daemon that is leaving.
    this.closed = true;
    this.misses.failAll();
    for (const id of [...this.objects.keys()]) this.onClose(id);
    for (const fsid of [...this.fsids.values()]) this.forgetFsid(fsid);
    this.fds.drop(FDNAME); // stopped on purpose: nothing to resume
    this.dev.close();
  }
}

export const cachefilesTransport: TransportModule = {
  name: 'cachefiles',
  feature: 'cachefiles on-demand',
  zerosWithoutDaemon: false,
  kernelReadsAfterAnswer: false,
  storesFromMount: true,
  describe: () =>
    "READs on /dev/cachefiles for EROFS in fscache mode; hits never leave the kernel; verified chunks are written into the kernel's cache objects, stored once",
  probe: ({ cacheDir, fds }) =>
    fds.inherited(FDNAME) !== undefined
      ? { ok: true, detail: 'bound /dev/cachefiles inherited from the previous daemon' }
      : probeCachefiles(cacheDir),
  create: (ctx) => new CachefilesTransport(ctx.cacheDir, ctx.misses, ctx.fds),
};
