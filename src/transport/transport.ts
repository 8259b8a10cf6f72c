// The cache-miss transport: how a read of a missing blob range reaches the daemon, and so also how an
// image is mounted. Implementations: fanotify pre-content (fanotify.ts), FUSE (fuse.ts), cachefiles
// on-demand (cachefiles.ts). All serve the same image format from the same fetcher and blob caches.
import type { BlobCache } from '../storage/blob-cache';

export type TransportName = 'cachefiles' | 'fanotify' | 'fuse';
/** Best first: the order in which 'auto' tries them. */
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

export interface CacheMissTransport {
  readonly name: TransportName;
  /**
   * When the daemon is gone, do unfilled ranges read as zeros (fanotify) instead of failing with EIO?
   * Such a transport's busy mounts are filled completely before the daemon leaves them.
   */
  readonly zerosWithoutDaemon: boolean;
  /** Cache-miss requests the kernel sent so far (fanotify events, cachefiles READs, FUSE READs). */
  readonly requests: number;
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
  /** Answers every pending miss (EIO) and stops. */
  close(): Promise<void>;
}
