// fanotify pre-content transport (Linux 6.14+, file-backed EROFS): the kernel reports the range a
// reader is about to read from a blob's cache file; missing chunks are fetched, verified and written
// (through the cache's own fd: its events are the daemon's own, allowed at once), then the read is
// allowed. Any failure denies it with EIO.
import fs from 'node:fs';
import path from 'node:path';
import { mountFileBacked, unmount } from '../mount/file-backed';
import { native, type FanotifyGroup, type PreAccessEvent } from '../native';
import type { BlobCache } from '../storage/blob-cache';
import { MissRequests, type MissOptions } from './miss-requests';
import type { CacheMissTransport, MountableImage, Probe, TransportModule } from './transport';

export class FanotifyTransport implements CacheMissTransport {
  readonly name = 'fanotify' as const;
  private readonly group: FanotifyGroup;
  /** Cache files by inode: the event names its file only by an fd. */
  private readonly byInode = new Map<number, BlobCache>();
  /** Pending events by their fd. */
  private readonly misses: MissRequests<number>;

  constructor(opts: MissOptions = {}) {
    this.misses = new MissRequests('fanotify', opts);
    this.group = new native.FanotifyGroup();
    this.group.start((e) => this.onEvent(e));
  }

  get requests(): number {
    return this.misses.requests;
  }

  settings(): Record<string, unknown> {
    return {};
  }

  async mount(image: MountableImage, target: string): Promise<void> {
    this.attach(image.blobs); // before mounting: the kernel reports nothing on files marked after the mount
    mountFileBacked({ bootstrap: image.bootstrapPath, blobs: image.blobs.map((b) => b.path), target });
  }

  async unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
    unmount(target, opts);
  }

  attach(blobs: readonly BlobCache[]): void {
    // Always (re)mark: adding a mark twice is harmless, while an inode number reused by a new cache
    // file after an eviction must never be mistaken for one already marked (unmarked holes read as zeros).
    for (const b of blobs) {
      this.group.mark(b.path);
      this.byInode.set(fs.statSync(b.path).ino, b);
    }
  }

  private onEvent(e: PreAccessEvent): void {
    const answer = (errno: number) => this.group.respond(e.fd, errno);
    // The daemon's own writes (prefetch) raise events too; what it writes is already verified.
    if (e.pid === process.pid) return answer(0);
    let blob: BlobCache | undefined;
    try {
      blob = this.byInode.get(fs.fstatSync(e.fd).ino);
    } catch (err) {
      return this.misses.refuse(answer, `event fd: ${(err as Error).message}`, {
        offset: e.offset,
        count: e.count,
        pid: e.pid,
      });
    }
    if (!blob || e.offset < 0) {
      return this.misses.refuse(answer, blob ? 'event without a range' : 'event on a file this daemon does not serve', {
        offset: e.offset,
        count: e.count,
        pid: e.pid,
      });
    }
    void this.misses.serve(e.fd, {
      source: blob,
      start: e.offset,
      end: Math.min(blob.size, e.offset + e.count),
      sink: { kind: 'cache' },
      answer,
      pid: e.pid,
    });
  }

  async close(): Promise<void> {
    // A reader blocked on an unanswered event would hang: deny what is left before closing.
    this.misses.failAll();
    this.group.close();
  }
}

/** A FAN_CLASS_PRE_CONTENT group marking a file in the cache directory: the filesystem must take the mark. */
function probe({ cacheDir }: { cacheDir: string }): Probe {
  const file = path.join(cacheDir, `.probe-fanotify-${process.pid}`);
  let group: FanotifyGroup | undefined;
  try {
    fs.writeFileSync(file, '');
    group = new native.FanotifyGroup();
    group.mark(file);
    return { ok: true, detail: 'FAN_CLASS_PRE_CONTENT group with a FAN_PRE_ACCESS mark on the cache filesystem' };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  } finally {
    group?.close();
    fs.rmSync(file, { force: true });
  }
}

export const fanotifyTransport: TransportModule = {
  name: 'fanotify',
  feature: 'fanotify pre-content',
  zerosWithoutDaemon: true,
  describe: () =>
    'pre-content events on the blob cache files under file-backed EROFS (Linux 6.14+); without the daemon, unfilled ranges read as zeros',
  probe,
  create: (ctx) => new FanotifyTransport(ctx.misses),
};
