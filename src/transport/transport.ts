// The cache-miss transport: how a read of a missing blob range reaches the daemon, and so also how an
// image is mounted. Each transport is one module exporting a `TransportModule` (name, probe, create,
// describe); `transports.ts` lists them, best first. A transport only adapts its kernel protocol:
// every miss is served by `MissRequests.serve` -> `RangeSource.serve` (src/storage).
import type { BlobCache } from '../storage/blob-cache';
import type { FuseBacking } from './fuse-backing';
import type { MissOptions } from './miss-requests';

export type TransportName = 'cachefiles' | 'fanotify' | 'fuse';
/** Best first: the order in which 'auto' tries them (and the order of `transports.ts`). */
export const TRANSPORT_NAMES: readonly TransportName[] = ['cachefiles', 'fanotify', 'fuse'];

/** What a transport needs to mount one image: its verified bootstrap and the caches of its blobs. */
export interface MountableImage {
  ref: string;
  /** sha256:... of the bootstrap. */
  bootstrapDigest: string;
  bootstrapPath: string;
  blobs: readonly BlobCache[];
}

export type MountState = Record<string, string>;

export interface Probe {
  ok: boolean;
  detail: string;
}

export interface CacheMissTransport {
  readonly name: TransportName;
  /** Cache-miss requests the kernel sent so far (fanotify events, cachefiles READs, FUSE READs). */
  readonly requests: number;
  /** Settings worth logging and showing in `status` (e.g. the FUSE backing); may be empty. */
  settings(): Record<string, unknown>;
  /**
   * Mounts the image read-only on `target`, its misses served by this transport. Resolves to what
   * `resume` needs to take the mount over after a restart (saved with the daemon's state).
   */
  mount(image: MountableImage, target: string): Promise<MountState | void>;
  /**
   * Takes over a mount an earlier daemon made, which survived it (cachefiles with an inherited device
   * fd). Absent, or false: the daemon detaches the old mount and mounts again.
   */
  resume?(image: MountableImage, target: string, state: MountState): boolean;
  /** Called once restored mounts are resumed: starts taking requests (the kernel queued them meanwhile). */
  begin?(): void;
  /** Unmounts `target` (detached when `lazy`); throws (EBUSY) when it is in use and not lazy. */
  unmount(target: string, opts?: { lazy?: boolean }): Promise<void>;
  /**
   * Tells the blobs of the reads served without the daemon's thread (fanotify hits) that they have not
   * heard of yet, so that an access trace read now is whole.
   */
  flushReads?(): void;
  /** Answers every pending miss (EIO) and stops. */
  close(): Promise<void>;
}

/** What the daemon hands a transport it creates. */
export interface TransportContext {
  cacheDir: string;
  fuseBacking: FuseBacking;
  misses: MissOptions;
  /** Where kernel-facing fds outlive the daemon, and what a previous daemon left there. */
  fds: FdKeeper;
}

/**
 * Keeps copies of the kernel-facing fds (fanotify group, /dev/fuse session, /dev/cachefiles) outside
 * the daemon's process, so that the kernel objects outlive a daemon that dies: readers wait instead of
 * failing or reading holes, and the next daemon takes the fds over. Under systemd: its fd store; without:
 * the holder process.
 */
export interface FdKeeper {
  /** 'none': nothing outlives the daemon. A transport keeps its fd under its own name. */
  readonly kind: 'systemd' | 'holder' | 'none';
  /** The fd an earlier daemon kept under `name`, if any (now this daemon's own fd). */
  inherited(name: string): number | undefined;
  /** Keeps a copy of `fd` under `name`, replacing one kept before; false when there is no keeper. */
  keep(name: string, fd: number): boolean;
  /** Drops the copy kept under `name` (stopped on purpose: nothing to resume). */
  drop(name: string): void;
}

export interface TransportModule {
  readonly name: TransportName;
  /** The kernel feature, as `doctor` names it. */
  readonly feature: string;
  /**
   * When the daemon is gone, unfilled ranges read as zeros (fanotify) instead of failing with EIO: such
   * a transport's busy mounts are filled completely before the daemon leaves them.
   */
  readonly zerosWithoutDaemon: boolean;
  /**
   * The kernel reads the cache file itself once a miss is answered (fanotify): nothing orders that read
   * after a hole punched meanwhile, which it would read as zeros. So the chunks of mounted blobs are
   * never evicted under such a transport; the cache bound then applies to blobs no mount uses.
   */
  readonly kernelReadsAfterAnswer: boolean;
  /**
   * Chunks can be stored only from the image's mount on (cachefiles: into the kernel's objects, which
   * the mount opens; the daemon's own cache file is emptied then). A pull's warm-up then leaves the
   * access trace's replay to the mount: replayed before it, the chunks would be fetched for nothing.
   */
  readonly storesFromMount: boolean;
  /** One line for `doctor`: how misses reach the daemon (what readers see without it: `whenDaemonDies`). */
  describe(): string;
  /** Whether this kernel and cache directory can run it, tried for real (never guessed from versions). */
  probe(ctx: Pick<TransportContext, 'cacheDir' | 'fds'>): Probe;
  create(ctx: TransportContext): CacheMissTransport;
}

/** What a reader of data not cached yet sees while the daemon is dead, until the next one starts. */
export type CrashOutcome = 'blocks and resumes' | 'EIO' | 'zeros';

/**
 * With a keeper holding its kernel-facing fd, every transport's kernel object outlives the daemon:
 * readers wait and the next daemon answers them. Without one, the object closes with the daemon.
 */
export function whenDaemonDies(t: Pick<TransportModule, 'zerosWithoutDaemon'>, keeper: FdKeeper['kind']): CrashOutcome {
  if (keeper !== 'none') return 'blocks and resumes';
  return t.zerosWithoutDaemon ? 'zeros' : 'EIO';
}
