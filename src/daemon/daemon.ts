// The daemon: owns the node's cache directory, the fetcher and the cache-miss transport, and serves
// mount/umount/status requests on its control socket.
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import type net from 'node:net';
import { log } from '../log';
import { unmount } from '../mount/file-backed';
import { closeRegistryClients, type OpenOptions } from '../oci/open-image';
import type { BlobCache } from '../storage/blob-cache';
import { CacheBudget } from '../storage/cache-budget';
import { ChunkFetcher } from '../storage/chunk-fetcher';
import { CachefilesTransport, FDNAME as CACHEFILES_FDNAME } from '../transport/cachefiles';
import { FanotifyTransport } from '../transport/fanotify';
import type { CacheMissTransport, MountState, TransportName } from '../transport/transport';
import { forgetListenEnv, inheritedFd } from './fd-store';
import { FuseTransport } from '../transport/fuse';
import type { FuseBacking } from '../transport/fuse-backing';
import { serveControl, type ControlRequest } from './control';
import { ImageStore, type PreparedImage } from './image-store';
import { probeKernel } from './kernel-features';
import { DaemonMetrics } from './metrics';

export interface DaemonOptions {
  cacheDir: string;
  socket: string;
  /** Background prefetch workers per mounted image (0: none). */
  prefetch: number;
  concurrency: number;
  registries?: OpenOptions;
  /** host:port for Prometheus metrics; none when undefined. */
  metricsAddress?: string;
  /** 0: unbounded. */
  cacheMaxBytes?: number;
  /** 'auto' (default): the best transport this kernel supports. */
  transport?: TransportName | 'auto';
  /** FUSE transport only: file-backed EROFS or loop devices ('auto': by kernel version). */
  fuseBacking?: FuseBacking;
}

function createTransport(name: TransportName, opts: DaemonOptions, onMiss: () => void, cachefilesFd?: number): CacheMissTransport {
  switch (name) {
    case 'cachefiles':
      return new CachefilesTransport(opts.cacheDir, onMiss, cachefilesFd);
    case 'fanotify':
      return new FanotifyTransport(onMiss);
    case 'fuse':
      // Inside the cache directory (root-only, 0700): one FUSE mount per daemon, found again at the
      // same place after a crash, and its files reachable by no one else.
      return new FuseTransport({ dir: path.join(opts.cacheDir, 'fuse'), backing: opts.fuseBacking, onMiss });
    default:
      throw new Error(`transport ${name} is not implemented`);
  }
}

export class Daemon {
  private readonly fetcher: ChunkFetcher;
  private readonly store: ImageStore;
  private readonly budget: CacheBudget;
  private readonly transport: CacheMissTransport;
  private readonly mounts = new Map<string, PreparedImage>();
  /** What the transport needs to resume each mount after a restart. */
  private readonly mountStates = new Map<string, MountState>();
  private server: net.Server | null = null;
  private metricsServer: http.Server | null = null;
  readonly metrics: DaemonMetrics;
  metricsPort: number | null = null;
  private stopping = false;

  constructor(private readonly opts: DaemonOptions) {
    // A still-bound /dev/cachefiles from the daemon before us (systemd's fd store): the kernel has
    // cachefiles on-demand, and its mounts are resumed rather than remounted.
    const requested = opts.transport ?? 'auto';
    const inherited = requested === 'auto' || requested === 'cachefiles' ? inheritedFd(CACHEFILES_FDNAME) : undefined;
    forgetListenEnv();
    // Probed for real: fanotify on a filesystem that refuses marks would serve holes as zeros.
    const features = probeKernel(opts.cacheDir, inherited !== undefined ? 'cachefiles' : requested, inherited !== undefined);
    if (!features.chosen) throw new Error(`${features.refusal} for ${opts.cacheDir} (see \`erofs-ondemand doctor\`)`);
    this.metrics = new DaemonMetrics(
      () => this.fetcher,
      () => this.store.cacheBytes(),
      () => this.budget.evictedBytes,
    );
    this.fetcher = new ChunkFetcher({ concurrency: opts.concurrency, observeLatency: (s) => this.metrics.observe(s) });
    this.budget = new CacheBudget(opts.cacheMaxBytes ?? 0, 0, {
      evictUnused: (target) => this.evictUnusedBlobs(target).freedBytes,
      mounted: () => [...new Set([...this.mounts.values()].flatMap((m) => m.blobs))],
    });
    this.store = new ImageStore(opts.cacheDir, this.fetcher, opts.registries, this.budget);
    this.budget.resync(this.evictUnusedBlobs(Infinity).cacheBytes); // measures, evicts nothing
    this.transport = createTransport(features.chosen, opts, () => this.metrics.misses.inc(), inherited);
    log.info('cache-miss transport chosen', {
      transport: features.chosen,
      requested,
      kernel: features.kernel,
      ...(features.passedOver ? { unavailable: features.passedOver } : {}),
      ...(this.transport instanceof FuseTransport ? { fuseBacking: this.transport.backing, fuseDir: this.transport.dir } : {}),
    });
  }

  private get stateFile(): string {
    return path.join(this.opts.cacheDir, 'mounts.json');
  }

  private saveState(): void {
    const state = [...this.mounts].map(([target, img]) => ({ ref: img.ref, target, state: this.mountStates.get(target) }));
    fs.writeFileSync(`${this.stateFile}.tmp`, JSON.stringify(state));
    fs.renameSync(`${this.stateFile}.tmp`, this.stateFile);
  }

  /**
   * Mounts left by a daemon that died. A transport that can take one over does (cachefiles with the
   * inherited device: readers never notice). Otherwise the mount is no longer served (fanotify would
   * read holes as zeros, FUSE gives EIO), so it is detached and mounted again. Cached chunks stay.
   */
  private async restore(): Promise<void> {
    const state = fs.existsSync(this.stateFile)
      ? (JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as Array<{ ref: string; target: string; state?: MountState }>)
      : [];
    const mounted = new Set(fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]));
    const remount: typeof state = [];
    for (const entry of state) {
      try {
        if (mounted.has(entry.target) && this.transport.resume && entry.state) {
          const image = await this.store.prepare(entry.ref);
          if (this.transport.resume(image, entry.target, entry.state)) {
            this.mounts.set(entry.target, image);
            this.mountStates.set(entry.target, entry.state);
            log.info('resumed a mount after restart', { image: entry.ref, target: entry.target, transport: this.transport.name });
            continue;
          }
        }
        remount.push(entry);
      } catch (err) {
        log.error('could not resume a mount', { image: entry.ref, target: entry.target, error: (err as Error).message });
        remount.push(entry);
      }
    }
    this.transport.begin?.();
    for (const { ref, target } of remount) {
      try {
        if (mounted.has(target)) unmount(target, { lazy: true });
        await this.mount(ref, target);
        log.info('restored a mount after restart', { image: ref, target });
      } catch (err) {
        log.error('could not restore a mount', { image: ref, target, error: (err as Error).message });
      }
    }
    this.saveState();
  }

  async start(): Promise<void> {
    await this.restore();
    if (this.opts.metricsAddress) {
      const { server, port } = await this.metrics.listen(this.opts.metricsAddress);
      this.metricsServer = server;
      this.metricsPort = port;
    }
    this.server = await serveControl(this.opts.socket, (req) => this.handle(req));
    log.info('daemon ready', { socket: this.opts.socket, cacheDir: this.opts.cacheDir, transport: this.transport.name });
  }

  private async handle(req: ControlRequest): Promise<unknown> {
    switch (req.op) {
      case 'mount':
        return this.mount(req.ref, req.target);
      case 'umount':
        return this.umount(req.target);
      case 'status':
        return this.status();
      case 'fsck':
        return this.fsck(req.target);
      case 'prefetch':
        return this.prefetchAll(req.target);
      case 'gc':
        return this.gc(req.maxBytes);
      default:
        throw new Error(`unknown request ${JSON.stringify((req as { op: unknown }).op)}`);
    }
  }

  async mount(ref: string, target: string): Promise<{ digest: string }> {
    if (this.stopping) throw new Error('daemon is stopping');
    if (this.mounts.has(target)) throw new Error(`${target} is already a mount of this daemon`);
    if (!fs.statSync(target).isDirectory()) throw new Error(`${target} is not a directory`);
    const image = await this.store.prepare(ref);
    const state = await this.transport.mount(image, target);
    this.mounts.set(target, image);
    if (state) this.mountStates.set(target, state);
    this.saveState();
    log.info('mounted', { image: ref, digest: image.digest, target, blobs: image.blobs.length });
    for (const blob of image.blobs) this.prefetch(blob);
    return { digest: image.digest };
  }

  private prefetch(blob: BlobCache): void {
    if (this.opts.prefetch <= 0) return;
    const ranges = blob.missingRanges();
    let next = 0;
    const worker = async () => {
      while (!this.stopping && next < ranges.length) {
        const [start, end] = ranges[next++];
        if (this.budget.limit > 0 && this.budget.usedBytes + (end - start) > this.budget.limit * 0.9) {
          // Beyond this, prefetch would only evict what readers fetched: they know better what they need.
          log.info('prefetch stopped at the cache bound', { blob: blob.remote.what, bound: this.budget.limit });
          next = ranges.length;
          break;
        }
        try {
          await blob.ensure(start, end, 'prefetch');
        } catch (err) {
          log.warn('prefetch failed', { blob: blob.remote.what, offset: start, error: (err as Error).message });
        }
      }
    };
    for (let i = 0; i < this.opts.prefetch; i++) void worker();
  }

  async umount(target: string): Promise<void> {
    if (!this.mounts.has(target)) throw new Error(`${target} is not mounted by this daemon`);
    await this.transport.unmount(target);
    this.mounts.delete(target);
    this.mountStates.delete(target);
    this.saveState();
    log.info('unmounted', { target });
    if (this.opts.cacheMaxBytes) await this.gc();
  }

  private image(target: string): PreparedImage {
    const img = this.mounts.get(target) ?? [...this.mounts.values()].find((m) => m.ref === target);
    if (!img) throw new Error(`${target} is neither a mount point nor an image mounted by this daemon`);
    return img;
  }

  /** Checks every cached chunk of an image against its digest. */
  async fsck(target: string): Promise<{ chunks: number; bad: Array<{ blob: string; offset: number; expected: string; got: string }> }> {
    const img = this.image(target);
    const bad: Array<{ blob: string; offset: number; expected: string; got: string }> = [];
    for (const b of img.blobs) for (const x of await b.verify()) bad.push({ blob: b.remote.digest, ...x });
    for (const b of bad) log.error('cached chunk does not match its digest', { image: img.ref, ...b });
    return { chunks: img.blobs.reduce((n, b) => n + b.presentChunks, 0), bad };
  }

  /** Removes blob cache files no mounted image uses, least recently used first, until the cache takes at most `target`. */
  private evictUnusedBlobs(target: number): { removed: string[]; freedBytes: number; cacheBytes: number } {
    const dir = this.store.blobsDir();
    const inUse = new Set([...this.mounts.values()].flatMap((m) => m.blobs.map((b) => path.basename(b.path))));
    const files = fs.readdirSync(dir).map((name) => {
      const st = fs.statSync(path.join(dir, name));
      return { name, bytes: st.blocks * 512, mtime: st.mtimeMs };
    });
    let total = files.reduce((n, f) => n + f.bytes, 0);
    const removed: string[] = [];
    let freed = 0;
    for (const f of files.filter((x) => !inUse.has(x.name)).sort((x, y) => x.mtime - y.mtime)) {
      if (total <= target) break;
      this.store.forget(`sha256:${f.name}`);
      fs.rmSync(path.join(dir, f.name), { force: true });
      total -= f.bytes;
      freed += f.bytes;
      removed.push(`sha256:${f.name}`);
    }
    if (removed.length > 0) log.info('cache evicted unused blobs', { removed, freedBytes: freed, cacheBytes: total });
    return { removed, freedBytes: freed, cacheBytes: total };
  }

  /**
   * Shrinks the cache to at most `maxBytes` (default: the configured bound; 0 with no bound evicts
   * every unused blob): blobs no mounted image uses go first, least recently used first; then, for a
   * non-zero bound, the oldest chunks of mounted blobs (read again, they are fetched again).
   */
  async gc(maxBytes = this.opts.cacheMaxBytes ?? 0): Promise<{ removed: string[]; freedBytes: number; evictedChunkBytes: number; cacheBytes: number }> {
    return this.budget.exclusive(async () => {
      const r = this.evictUnusedBlobs(maxBytes);
      this.budget.release(r.freedBytes);
      const evictedChunkBytes = maxBytes > 0 && this.budget.usedBytes > maxBytes ? await this.budget.evictChunks(maxBytes) : 0;
      if (evictedChunkBytes > 0) log.info('cache evicted chunks of mounted images', { freedBytes: evictedChunkBytes, cacheBytes: this.budget.usedBytes });
      return { removed: r.removed, freedBytes: r.freedBytes + evictedChunkBytes, evictedChunkBytes, cacheBytes: this.budget.usedBytes };
    });
  }

  /** Fetches every chunk of an image not cached yet; resolves when all are. */
  async prefetchAll(target: string): Promise<{ fetched: number }> {
    const img = this.image(target);
    let fetched = 0;
    for (const b of img.blobs) {
      for (const [start, end] of b.missingRanges()) fetched += await b.ensure(start, end, 'prefetch');
    }
    return { fetched };
  }

  status(): unknown {
    return {
      pid: process.pid,
      transport: this.transport.name,
      transportRequests: this.transport.requests,
      ...(this.transport instanceof FuseTransport ? { fuseBacking: this.transport.backing } : {}),
      fetch: { ...this.fetcher.stats, latency: this.metrics.percentiles() },
      inFlight: this.fetcher.inFlight,
      cacheBytes: this.store.cacheBytes(),
      cacheBoundBytes: this.budget.limit,
      evictedBytes: this.budget.evictedBytes,
      metricsPort: this.metricsPort,
      mounts: [...this.mounts].map(([target, img]) => {
        const hits = img.blobs.reduce((n, b) => n + b.hits, 0);
        const misses = img.blobs.reduce((n, b) => n + b.misses, 0);
        return {
          target,
          image: img.ref,
          digest: img.digest,
          cachedBytes: img.blobs.reduce((n, b) => n + b.presentBytes, 0),
          hitRatio: hits + misses === 0 ? null : hits / (hits + misses),
          blobs: img.blobs.map((b) => ({ digest: b.remote.digest, chunks: b.totalChunks, cached: b.presentChunks })),
        };
      }),
    };
  }

  /**
   * Unmounts everything, answers pending misses, closes the socket. With fanotify a hole read after
   * the daemon is gone reads as zeros, so a mount still in use is first filled completely, then
   * detached: its readers keep correct data. Other transports fail such reads with EIO: detached.
   */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    for (const [target, image] of this.mounts) {
      try {
        await this.transport.unmount(target);
      } catch (err) {
        if (!this.transport.zerosWithoutDaemon) {
          log.warn('mount busy at shutdown: detached; its readers get EIO for data not cached', { target, error: (err as Error).message });
          await this.transport.unmount(target, { lazy: true }).catch((e: Error) => log.error('detach failed', { target, error: e.message }));
          continue;
        }
        log.warn('mount busy at shutdown: filling it before detaching', { target, error: (err as Error).message });
        for (const blob of image.blobs) {
          for (const [start, end] of blob.missingRanges()) {
            await blob.ensure(start, end, 'demand').catch((e: Error) => log.error('fill at shutdown failed', { blob: blob.remote.what, error: e.message }));
          }
        }
        await this.transport.unmount(target, { lazy: true });
      }
    }
    this.mounts.clear();
    this.saveState(); // stopped on purpose: nothing to restore at the next start
    await this.transport.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await new Promise<void>((resolve) => (this.metricsServer ? this.metricsServer.close(() => resolve()) : resolve()));
    fs.rmSync(this.opts.socket, { force: true });
    await closeRegistryClients();
    log.info('daemon stopped');
  }
}
