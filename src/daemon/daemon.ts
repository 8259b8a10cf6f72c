// The daemon: owns the node's cache directory, the fetcher and the cache-miss transport, and serves
// mount/umount/status requests on its control socket.
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import type net from 'node:net';
import { log } from '../log';
import { unmount } from '../mount/file-backed';
import { explainBusy, overlaysOn } from '../mount/holders';
import { mounts as mountTable } from '../mount/mountinfo';
import { checkMountTarget, requireCanonical } from '../mount/target';
import { closeRegistryClients, type OpenOptions } from '../oci/open-image';
import { DEFAULT_READ_AHEAD, type BlobCache } from '../storage/blob-cache';
import { BlobStore } from '../storage/blob-store';
import { CacheBudget } from '../storage/cache-budget';
import { ChunkFetcher } from '../storage/chunk-fetcher';
import { TraceRecorder, type AccessTrace, type EndReason } from '../storage/access-trace';
import { fetchMissing, Prefetcher } from '../storage/prefetcher';
import {
  whenDaemonDies,
  type CacheMissTransport,
  type MountState,
  type TransportModule,
  type TransportName,
} from '../transport/transport';
import { transportModule } from '../transport/transports';
import { DEFAULT_READ_DEADLINE_MS } from '../transport/miss-requests';
import type { FuseBacking } from '../transport/fuse-backing';
import type { FdKeeperChoice } from '../transport/fd-keepers';
import { lockCacheDir, type CacheLock } from './cache-lock';
import { claimSocket, serveControl, type ControlRequest } from './control';
import { openFdKeeper, type OpenFdKeeper } from './fd-keeper';
import { ImageStore, lazyReference, type FoundImage, type PreparedImage } from './image-store';
import { probeKernel } from './kernel-features';
import { summarizeTrace, TraceStore, type TraceSummary } from './trace-store';
import { DaemonMetrics } from './metrics';
import { lazySnapshots } from './lazy-snapshots';
import type { SnapshotterServer } from '../snapshotter/server';
import { Snapshotter } from '../snapshotter/snapshotter';

export interface DaemonOptions {
  cacheDir: string;
  socket: string;
  /** Background prefetch workers per mounted image (0: none). */
  prefetch: number;
  concurrency: number;
  /**
   * A read not served within this many milliseconds gets EIO (default DEFAULT_READ_DEADLINE_MS); 0:
   * no deadline. A Range GET gives up after as long, retries included: it holds no slot past it.
   */
  readTimeoutMs?: number;
  /** Bytes a demand miss may fetch past itself in its blob (default 4 MiB; 0: none). */
  readAheadBytes?: number;
  registries?: OpenOptions;
  /** host:port for Prometheus metrics; none when undefined. */
  metricsAddress?: string;
  /** 0: unbounded. */
  cacheMaxBytes?: number;
  /** 'auto' (default): the best transport this kernel supports. */
  transport?: TransportName | 'auto';
  /** FUSE transport only: file-backed EROFS or loop devices ('auto': by kernel version). */
  fuseBacking?: FuseBacking;
  /** Where kernel-facing fds outlive the daemon ('auto': systemd's fd store under systemd, else the holder). */
  fdKeeper?: FdKeeperChoice;
  /** containerd's snapshots API on this unix socket; none when undefined. */
  snapshotterSocket?: string;
}

/** The answer to a `trace` request. */
export interface TraceAnswer {
  trace: AccessTrace;
  summary: TraceSummary;
  /** Why its window closed; null while it records. */
  ended: EndReason | null;
}

/** The EBUSY an unmount of `target` would give if overlays did not hold their layers by private clones. */
function overlayBusy(target: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${target} is a layer of an overlay`), { code: 'EBUSY' });
}

/** Where the snapshotter served on `sock` has the daemon mount lazy images. */
function snapshotMountDir(sock: string): string {
  return path.join(path.dirname(sock), 'snapshots');
}

/** An image being prepared ahead of its mount; `replayed` once it is found, `blobs` once they are open. */
interface Warm {
  prepared: Promise<PreparedImage>;
  blobs?: BlobCache[];
  replayed?: Promise<void>;
}

/** How long an image prepared ahead of its mount is kept for that mount. */
const WARM_KEPT_MS = 10 * 60_000;

export class Daemon {
  private readonly fetcher: ChunkFetcher;
  private readonly blobs: BlobStore;
  private readonly store: ImageStore;
  private readonly budget: CacheBudget;
  private readonly prefetcher: Prefetcher;
  private readonly transportModule: TransportModule;
  private readonly transport: CacheMissTransport;
  private readonly mounts = new Map<string, PreparedImage>();
  /** The access trace being recorded for each mount. */
  private readonly recorders = new Map<string, TraceRecorder>();
  /** Images prepared (and their trace's replay started) ahead of a mount expected soon, by reference. */
  private readonly warmed = new Map<string, Warm>();
  private readonly traces: TraceStore;
  /** What the transport needs to resume each mount after a restart. */
  private readonly mountStates = new Map<string, MountState>();
  private server: net.Server | null = null;
  private metricsServer: http.Server | null = null;
  private snapshotter: SnapshotterServer | null = null;
  readonly metrics: DaemonMetrics;
  metricsPort: number | null = null;
  private stopping = false;
  private readonly lock: CacheLock;
  private readonly fds: OpenFdKeeper;

  constructor(private readonly opts: DaemonOptions) {
    // First: a second daemon on this cache directory leaves the first one's mounts and socket alone.
    this.lock = lockCacheDir(opts.cacheDir);
    // Kernel-facing fds kept outside the daemon, with what a daemon before us left there.
    this.fds = openFdKeeper({ cacheDir: opts.cacheDir, lock: this.lock, choice: opts.fdKeeper });
    const requested = opts.transport ?? 'auto';
    const readDeadline = opts.readTimeoutMs ?? DEFAULT_READ_DEADLINE_MS;
    // Probed for real: fanotify on a filesystem that refuses marks would serve holes as zeros.
    const features = probeKernel(opts.cacheDir, requested, this.fds);
    if (!features.chosen) throw new Error(`${features.refusal} for ${opts.cacheDir} (see \`erofs-ondemand doctor\`)`);
    this.metrics = new DaemonMetrics(
      () => this.fetcher,
      () => this.blobs.cacheBytes(),
      () => this.budget.evictedBytes,
      () => this.blobs.chunks.stats,
    );
    this.fetcher = new ChunkFetcher({
      concurrency: opts.concurrency,
      observeLatency: (s) => this.metrics.fetch.observe(s),
    });
    this.budget = new CacheBudget(opts.cacheMaxBytes ?? 0, 0, {
      evictUnused: (target) => this.blobs.evictUnused(this.blobsInUse(), target).freedBytes,
      // Under fanotify a punched chunk could race a read the kernel was already allowed to make.
      mounted: () => (this.transportModule.kernelReadsAfterAnswer ? [] : this.mountedBlobs()),
    });
    this.blobs = new BlobStore(path.join(opts.cacheDir, 'blobs'), this.fetcher, this.budget, {
      maxBytes: opts.readAheadBytes ?? DEFAULT_READ_AHEAD.maxBytes,
    });
    this.store = new ImageStore(opts.cacheDir, this.blobs, opts.registries, readDeadline || undefined);
    const indexed = this.blobs.indexCacheFiles((blob) => this.store.kept.keptChunks(blob));
    log.info('chunk index rebuilt from the cache files', { chunks: indexed });
    this.budget.resync(this.blobs.evictUnused([], Infinity).cacheBytes); // measures, evicts nothing
    this.prefetcher = new Prefetcher(opts.prefetch, this.budget);
    this.traces = new TraceStore(path.join(opts.cacheDir, 'traces'));
    this.transportModule = transportModule(features.chosen);
    this.transport = this.transportModule.create({
      cacheDir: opts.cacheDir,
      fuseBacking: opts.fuseBacking ?? 'auto',
      misses: {
        deadlineMs: readDeadline,
        onMiss: (seconds) => {
          this.metrics.misses.inc();
          this.metrics.miss.observe(seconds);
          this.prefetcher.noteDemand();
        },
      },
      fds: this.fds,
    });
    log.info('cache-miss transport chosen', {
      transport: features.chosen,
      requested,
      kernel: features.kernel,
      ...(features.passedOver ? { unavailable: features.passedOver } : {}),
      ...this.transport.settings(),
    });
    if (opts.cacheMaxBytes && this.transportModule.kernelReadsAfterAnswer)
      log.warn('the cache bound applies to blobs no mounted image uses: chunks of mounted images are not evicted', {
        transport: features.chosen,
        bound: opts.cacheMaxBytes,
      });
  }

  /** Blobs of mounted images, each once. */
  private mountedBlobs(): BlobCache[] {
    return [...new Set([...this.mounts.values()].flatMap((m) => m.blobs))];
  }

  /** Blobs eviction must leave: those of mounts, and of images prepared for a mount. */
  private blobsInUse(): BlobCache[] {
    const warmed = [...this.warmed.values()].flatMap((w) => w.blobs ?? []);
    return [...new Set([...this.mountedBlobs(), ...warmed])];
  }

  private get stateFile(): string {
    return path.join(this.opts.cacheDir, 'mounts.json');
  }

  private saveState(): void {
    const state = [...this.mounts].map(([target, img]) => ({
      ref: img.ref,
      target,
      lazy: lazyReference(img),
      state: this.mountStates.get(target),
    }));
    fs.writeFileSync(`${this.stateFile}.tmp`, JSON.stringify(state));
    fs.renameSync(`${this.stateFile}.tmp`, this.stateFile);
  }

  /**
   * Mounts left by a daemon that died. A transport that can take one over does (cachefiles with the
   * inherited device, fanotify with the inherited group, FUSE with the inherited session: readers
   * never notice). Otherwise the mount is no longer served (fanotify without a keeper reads holes as
   * zeros, FUSE gives EIO), so it is detached and mounted again. Cached chunks stay.
   */
  private async restore(): Promise<void> {
    const state = fs.existsSync(this.stateFile)
      ? (JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as Array<{
          ref: string;
          target: string;
          /** The image mounted, pinned (absent in files of older daemons: `ref` is resolved again). */
          lazy?: string;
          state?: MountState;
        }>)
      : [];
    const mounted = new Set(mountTable().map((m) => m.target));
    const remount: typeof state = [];
    for (const entry of state) {
      try {
        if (mounted.has(entry.target) && this.transport.resume && entry.state) {
          // Exactly the image mounted, from the cache: the registry may be down, or the tag moved.
          const image = await this.store.prepare(entry.ref, entry.lazy);
          if (this.transport.resume(image, entry.target, entry.state)) {
            this.mounts.set(entry.target, image);
            this.mountStates.set(entry.target, entry.state);
            log.info('resumed a mount after restart', {
              image: entry.ref,
              target: entry.target,
              transport: this.transport.name,
            });
            continue;
          }
        }
        remount.push(entry);
      } catch (err) {
        log.error('could not resume a mount', {
          image: entry.ref,
          target: entry.target,
          error: (err as Error).message,
        });
        remount.push(entry);
      }
    }
    this.transport.begin?.();
    this.fds.releaseUnclaimed();
    for (const { ref, target, lazy } of remount) {
      try {
        if (mounted.has(target)) unmount(target, { lazy: true });
        await this.mount(ref, target, lazy);
        log.info('restored a mount after restart', { image: ref, target });
      } catch (err) {
        log.error('could not restore a mount', { image: ref, target, error: (err as Error).message });
      }
    }
    this.saveState();
  }

  /** A failure stops what was started (mounts, FUSE, servers) and is thrown: the state file stays for the next start. */
  async start(): Promise<void> {
    try {
      if (this.opts.metricsAddress) {
        const { server, port } = await this.metrics.listen(this.opts.metricsAddress);
        this.metricsServer = server;
        this.metricsPort = port;
      }
      await this.restore();
      const sock = this.opts.snapshotterSocket;
      if (sock) {
        // The control socket's problems first: they are the ones the user asked about.
        await claimSocket(this.opts.socket, 'control');
        await claimSocket(sock, 'snapshotter');
        const lazy = lazySnapshots(this.opts.registries ?? {}, snapshotMountDir(sock), this, this.store.kept);
        // Loaded only when served: gRPC and its protos are a sizeable part of an idle daemon's memory.
        const { serveSnapshotter } = await import('../snapshotter/server');
        this.snapshotter = await serveSnapshotter(
          sock,
          new Snapshotter(path.join(this.opts.cacheDir, 'snapshots'), lazy),
        );
      }
      // Last: its socket tells supervisors and tests the daemon is ready.
      this.server = await serveControl(this.opts.socket, (req) => this.handle(req));
    } catch (err) {
      await this.stop({ keepState: true });
      throw err;
    }
    log.info('daemon ready', {
      socket: this.opts.socket,
      cacheDir: this.opts.cacheDir,
      transport: this.transport.name,
    });
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
      case 'trace':
        return this.trace(req.target, req.action);
      case 'trace-push':
        return this.pushTrace(req.target);
      default:
        throw new Error(`unknown request ${JSON.stringify((req as { op: unknown }).op)}`);
    }
  }

  /** Mounts what `ref` names now, or with `lazy` (a restored mount's), exactly that image. */
  async mount(ref: string, target: string, lazy?: string): Promise<{ digest: string }> {
    if (this.stopping) throw new Error('daemon is stopping');
    checkMountTarget(target, this.opts.cacheDir);
    if (this.mounts.has(target)) throw new Error(`${target} is already a mount of this daemon`);
    const warm = lazy === undefined ? this.warmed.get(ref) : undefined;
    this.warmed.delete(ref);
    const warmed = await warm?.prepared.catch(() => undefined);
    const image = warmed ?? (await this.store.prepare(ref, lazy));
    const kernelStart = performance.now();
    const state = await this.transport.mount(image, target);
    const kernel = Math.round(performance.now() - kernelStart);
    this.mounts.set(target, image);
    if (state) this.mountStates.set(target, state);
    this.saveState();
    log.info('mounted', {
      image: ref,
      digest: image.digest,
      target,
      blobs: image.blobs.length,
      ms: { ...image.preparedMs, kernel },
    });
    this.recordTrace(target, image);
    void this.prefetch(image, warmed && warm?.replayed);
    return { digest: image.digest };
  }

  /**
   * Prepares `ref` for a mount expected soon (the snapshotter's pull of an image with a lazy form):
   * the bootstrap downloaded and checked, the chunk tables, and the access trace's prefetch started,
   * so that the mount waits for the kernel only. Blind prefetch waits for the mount: an image pulled is
   * not always run. Kept for a while; a mount of `ref` takes it.
   */
  warm(ref: string): void {
    if (this.stopping || this.warmed.has(ref)) return;
    // The trace is looked up as soon as the lazy image is found, and replayed once its blobs are open,
    // while the bootstrap is fetched and checked; by the mount when only the mount lets chunks be stored.
    // `found` may run before `prepare` returns (a lazy image whose manifest is kept needs no request),
    // so the record it fills exists first.
    const warm = {} as Warm;
    const found = (image: FoundImage) => {
      image.blobs.then((blobs) => (warm.blobs = blobs)).catch(() => undefined);
      if (!this.transportModule.storesFromMount) warm.replayed = this.replayTrace(ref, image);
    };
    warm.prepared = this.store.prepare(ref, undefined, found).then((image) => {
      log.info('image prepared ahead of its mount', { image: ref, ms: image.preparedMs });
      return image;
    });
    warm.prepared.catch((err: Error) =>
      log.info('image not prepared ahead of its mount', { image: ref, error: err.message }),
    );
    this.warmed.set(ref, warm);
    setTimeout(() => {
      if (this.warmed.get(ref) === warm) this.warmed.delete(ref);
    }, WARM_KEPT_MS).unref();
  }

  isMounted(target: string): boolean {
    return this.mounts.has(target);
  }

  /** Records the mount's access trace until its window closes; kept on this node for the next mount. */
  private recordTrace(target: string, image: PreparedImage): void {
    this.recorders.get(target)?.end('unmount');
    this.recorders.set(
      target,
      new TraceRecorder(image.digest, image.blobs, { onEnd: (trace) => this.keepTrace(trace) }),
    );
  }

  private keepTrace(trace: AccessTrace): void {
    try {
      this.traces.save(trace);
    } catch (err) {
      log.warn('access trace not kept', { image: trace.image, error: (err as Error).message });
    }
  }

  /**
   * The image's access trace first, if there is one (`replayed`: a replay a warm-up started), then the
   * background prefetch of every blob.
   */
  private async prefetch(image: PreparedImage, replayed = this.replayTrace(image.ref, image)): Promise<void> {
    await replayed;
    for (const blob of image.blobs) this.prefetcher.start(blob);
  }

  /** Replays the access trace of `ref`'s lazy image as prefetch, if it has one. */
  private async replayTrace(ref: string, image: PreparedImage | FoundImage): Promise<void> {
    let found: Awaited<ReturnType<TraceStore['find']>>;
    let blobs: BlobCache[];
    try {
      [found, blobs] = await Promise.all([this.traces.find(image), image.blobs]);
    } catch {
      return; // the blobs did not open: the mount fails, saying why
    }
    if (!found) return;
    log.info('replaying an access trace', {
      image: ref,
      source: found.source,
      chunks: found.trace.entries.length,
    });
    await this.prefetcher.replay(found.trace, blobs);
  }

  private recorder(target: string): { image: PreparedImage; recorder: TraceRecorder } {
    const image = this.mounts.get(target);
    if (!image) throw new Error(`${target} is not mounted by this daemon`);
    const recorder = this.recorders.get(target);
    if (!recorder) throw new Error(`no access trace is recorded for ${target} (a mount resumed after a restart)`);
    return { image, recorder };
  }

  /** The access trace of a mount, with what it amounts to; `end` closes its window first. */
  trace(target: string, action: 'show' | 'end'): TraceAnswer {
    const { image, recorder } = this.recorder(target);
    this.transport.flushReads?.();
    if (action === 'end') recorder.end('command');
    const trace = recorder.trace();
    const indexes = image.blobs.map((b) => b.index);
    return { trace, summary: summarizeTrace(trace, indexes), ended: recorder.ended };
  }

  /** Closes the mount's trace window and pushes the trace as a referrer of the lazy image. */
  async pushTrace(target: string): Promise<TraceAnswer & { artifact: string }> {
    const answer = this.trace(target, 'end');
    if (answer.trace.entries.length === 0) throw new Error(`nothing was read from ${target}: no access trace to push`);
    const { image } = this.recorder(target);
    return { ...answer, artifact: await this.traces.push(answer.trace, image) };
  }

  async umount(target: string): Promise<void> {
    requireCanonical(target);
    if (!this.mounts.has(target)) throw new Error(`${target} is not mounted by this daemon`);
    if (overlaysOn(target).length > 0) throw explainBusy(target, overlayBusy(target));
    await this.transport.unmount(target).catch((err) => {
      throw explainBusy(target, err);
    });
    this.transport.flushReads?.();
    this.recorders.get(target)?.end('unmount');
    this.recorders.delete(target);
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
  async fsck(
    target: string,
  ): Promise<{ chunks: number; bad: Array<{ blob: string; offset: number; expected: string; got: string }> }> {
    const img = this.image(target);
    const bad: Array<{ blob: string; offset: number; expected: string; got: string }> = [];
    for (const b of img.blobs) for (const x of await b.verify()) bad.push({ blob: b.remote.digest, ...x });
    for (const b of bad) log.error('cached chunk does not match its digest', { image: img.ref, ...b });
    return { chunks: img.blobs.reduce((n, b) => n + b.presentChunks, 0), bad };
  }

  /**
   * Shrinks the cache to at most `maxBytes` (default: the configured bound; 0 with no bound evicts
   * every unused blob): blobs no mounted image uses go first, least recently used first; then, for a
   * non-zero bound, the oldest chunks of mounted blobs (read again, they are fetched again).
   */
  async gc(
    maxBytes = this.opts.cacheMaxBytes ?? 0,
  ): Promise<{ removed: string[]; freedBytes: number; evictedChunkBytes: number; cacheBytes: number }> {
    return this.budget.exclusive(async () => {
      const r = this.blobs.evictUnused(this.blobsInUse(), maxBytes);
      this.budget.release(r.freedBytes);
      const evictedChunkBytes =
        maxBytes > 0 && this.budget.usedBytes > maxBytes ? await this.budget.evictChunks(maxBytes) : 0;
      if (evictedChunkBytes > 0)
        log.info('cache evicted chunks of mounted images', {
          freedBytes: evictedChunkBytes,
          cacheBytes: this.budget.usedBytes,
        });
      return {
        removed: r.removed,
        freedBytes: r.freedBytes + evictedChunkBytes,
        evictedChunkBytes,
        cacheBytes: this.budget.usedBytes,
      };
    });
  }

  /** Fetches every chunk of an image not cached yet; resolves when all are. */
  async prefetchAll(target: string): Promise<{ fetched: number }> {
    let fetched = 0;
    for (const b of this.image(target).blobs) fetched += await fetchMissing(b, { priority: 'prefetch' });
    return { fetched };
  }

  status(): unknown {
    return {
      pid: process.pid,
      transport: this.transport.name,
      fdKeeper: this.fds.kind,
      whenDaemonDies: whenDaemonDies(this.transportModule, this.fds.kind),
      transportRequests: this.transport.requests,
      memory: process.memoryUsage(),
      ...this.transport.settings(),
      fetch: { ...this.fetcher.stats, latency: this.metrics.fetch.percentiles() },
      miss: { latency: this.metrics.miss.percentiles() },
      inFlight: this.fetcher.inFlight,
      cacheBytes: this.blobs.cacheBytes(),
      cacheBoundBytes: this.budget.limit,
      evictedBytes: this.budget.evictedBytes,
      localCopies: { ...this.blobs.chunks.stats, indexedChunks: this.blobs.chunks.size },
      metricsPort: this.metricsPort,
      snapshotterSocket: this.opts.snapshotterSocket ?? null,
      mounts: [...this.mounts].map(([target, img]) => {
        const hits = img.blobs.reduce((n, b) => n + b.hits, 0);
        const misses = img.blobs.reduce((n, b) => n + b.misses, 0);
        return {
          target,
          image: img.ref,
          digest: img.digest,
          cachedBytes: img.blobs.reduce((n, b) => n + b.presentBytes, 0),
          hitRatio: hits + misses === 0 ? null : hits / (hits + misses),
          misses,
          blobs: img.blobs.map((b) => ({ digest: b.remote.digest, chunks: b.totalChunks, cached: b.presentChunks })),
        };
      }),
    };
  }

  /**
   * A mount of the snapshotter's: containerd's overlays use it, and an overlay holds its lower layers
   * through private clones, so an unmount succeeds while containers still read it. Its lifetime is
   * containerd's (`Remove`), never the daemon's.
   */
  private isSnapshotMount(target: string): boolean {
    const sock = this.opts.snapshotterSocket;
    return !!sock && target.startsWith(`${snapshotMountDir(sock)}${path.sep}`);
  }

  /** Fills every chunk of `image` not cached yet: its readers then need no daemon. */
  private async fill(image: PreparedImage): Promise<void> {
    for (const blob of image.blobs)
      await fetchMissing(blob, {
        priority: 'demand',
        onError: (e) => log.error('fill at shutdown failed', { blob: blob.what, error: e.message }),
      });
  }

  /**
   * Unmounts everything, answers pending misses, closes the socket. With fanotify a hole read after
   * the daemon is gone reads as zeros, so a mount still in use is first filled completely, then
   * detached: its readers keep correct data. Other transports fail such reads with EIO: detached.
   * The snapshotter's mounts stay, served by the next daemon as after a crash (their kernel-facing fd
   * stays with the keeper): containers keep running across a planned restart, and their snapshots'
   * mounts still name a mounted image. Under systemd's fd store, which a stop (not a restart) flushes,
   * fanotify's are filled first, so that a flushed group leaves no hole to read as zeros.
   */
  async stop(opts: { keepState?: boolean } = {}): Promise<{ leftMounted: number }> {
    if (this.stopping) return { leftMounted: 0 };
    this.stopping = true;
    await this.snapshotter?.close();
    this.prefetcher.stop();
    const kept = new Set<string>();
    for (const [target, image] of this.mounts) {
      const snapshot = this.isSnapshotMount(target);
      if (snapshot && this.fds.kind !== 'none') {
        if (this.transportModule.zerosWithoutDaemon && this.fds.kind === 'systemd') await this.fill(image);
        log.info('snapshotter mount left for the next daemon: containers may be using it', {
          target,
          fdKeeper: this.fds.kind,
        });
        kept.add(target);
        continue;
      }
      try {
        // An overlay's layer unmounts while in use: the snapshotter's are taken as busy.
        if (snapshot) throw new Error('a containerd snapshot mount, maybe under running containers');
        if (overlaysOn(target).length > 0) throw explainBusy(target, overlayBusy(target));
        await this.transport.unmount(target);
      } catch (err) {
        if (!this.transportModule.zerosWithoutDaemon) {
          log.warn('mount busy at shutdown: detached; its readers get EIO for data not cached', {
            target,
            error: (err as Error).message,
          });
          await this.transport
            .unmount(target, { lazy: true })
            .catch((e: Error) => log.error('detach failed', { target, error: e.message }));
          continue;
        }
        log.warn('mount busy at shutdown: filling it before detaching', { target, error: (err as Error).message });
        await this.fill(image);
        await this.transport.unmount(target, { lazy: true });
      }
    }
    this.transport.flushReads?.();
    for (const r of this.recorders.values()) r.end('unmount');
    this.recorders.clear();
    for (const target of this.mounts.keys()) {
      if (kept.has(target)) continue;
      this.mounts.delete(target);
      this.mountStates.delete(target);
    }
    // Stopped on purpose: only the mounts left in place are restored at the next start.
    if (!opts.keepState) this.saveState();
    if (kept.size > 0) {
      // Misses being fetched are answered before the daemon goes; later ones wait for the next daemon.
      for (const deadline = Date.now() + 10_000; this.fetcher.inFlight > 0 && Date.now() < deadline;)
        await new Promise((r) => setTimeout(r, 20));
    } else await this.transport.close();
    this.mounts.clear();
    this.fds.close();
    if (this.server) {
      await new Promise<void>((resolve) => this.server?.close(() => resolve()));
      fs.rmSync(this.opts.socket, { force: true });
    }
    await new Promise<void>((resolve) => (this.metricsServer ? this.metricsServer.close(() => resolve()) : resolve()));
    await closeRegistryClients();
    this.lock.release();
    log.info('daemon stopped', kept.size ? { leftMounted: kept.size } : {});
    return { leftMounted: kept.size };
  }
}
