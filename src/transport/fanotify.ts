// fanotify pre-content transport (Linux 6.14+, file-backed EROFS): the kernel reports the range a
// reader is about to read from a blob's cache file; missing chunks are fetched, verified and written
// through the event's fd, then the read is allowed. Any failure denies it with EIO.
import fs from 'node:fs';
import { log } from '../log';
import { native, type FanotifyGroup, type PreAccessEvent } from '../native';
import { mountFileBacked, unmount } from '../mount/file-backed';
import type { BlobCache } from '../storage/blob-cache';
import type { CacheMissTransport, MountableImage } from './transport';

const EIO = 5;

export class FanotifyTransport implements CacheMissTransport {
  readonly name = 'fanotify' as const;
  readonly zerosWithoutDaemon = true;
  requests = 0;
  private readonly group: FanotifyGroup;
  /** Cache files by inode: the event names its file only by an fd. */
  private readonly byInode = new Map<number, BlobCache>();
  private readonly pending = new Set<number>();
  private closed = false;
  constructor(private readonly onMiss: () => void = () => undefined) {
    this.group = new native.FanotifyGroup();
    this.group.start((e) => void this.onEvent(e));
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

  private async onEvent(e: PreAccessEvent): Promise<void> {
    this.pending.add(e.fd);
    // The daemon's own writes (prefetch) raise events too; what it writes is already verified.
    if (e.pid === process.pid) return this.answer(e.fd, 0);
    this.requests++;
    let errno = 0;
    let blob: BlobCache | undefined;
    try {
      blob = this.byInode.get(fs.fstatSync(e.fd).ino);
      if (!blob) throw new Error('event on a file this daemon does not serve');
      if (e.offset < 0) throw new Error('event without a range');
      const fetched = await blob.ensure(e.offset, e.offset + e.count, 'demand', (offset, data) => {
        fs.writeSync(e.fd, data, 0, data.length, offset);
      });
      if (fetched > 0) this.onMiss();
    } catch (err) {
      errno = EIO;
      log.error('cache miss not served', { blob: blob?.remote.what, offset: e.offset, count: e.count, pid: e.pid, error: (err as Error).message });
    }
    this.answer(e.fd, errno);
  }

  private answer(fd: number, errno: number): void {
    if (!this.pending.delete(fd) || this.closed) return;
    try {
      this.group.respond(fd, errno);
    } catch (err) {
      log.warn('fanotify response failed', { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    // A reader blocked on an unanswered event would hang: deny what is left before closing.
    for (const fd of [...this.pending]) this.answer(fd, EIO);
    this.closed = true;
    this.group.close();
  }
}
