// The cache-miss transport: how a read of a missing blob range reaches the daemon. Implementations:
// fanotify pre-content (here), cachefiles on-demand and FUSE (their own issues).
import type { BlobCache } from '../storage/blob-cache';

export interface CacheMissTransport {
  readonly name: 'fanotify' | 'cachefiles' | 'fuse';
  /** Starts serving misses on these blobs' cache files. Must happen before the image is mounted. */
  attach(blobs: readonly BlobCache[]): void;
  /** Answers every pending miss (EIO) and stops. */
  close(): Promise<void>;
}
