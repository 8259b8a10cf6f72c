// fanotify pre-content transport (Linux 6.14+, file-backed EROFS): the kernel reports the range a
// reader is about to read from a blob's cache file; missing chunks are fetched, verified and written
// (through the cache's own fd: its events are the daemon's own, allowed at once), then the read is
// allowed. Any failure denies it with EIO. Reads of chunks present already are allowed by the addon's
// reader thread (`watch`): only misses wait for the daemon's thread.
//
// The group is handed to the fd keeper (systemd's fd store, or the holder): while the keeper holds a
// copy, a daemon that dies leaves the group alive, readers of unfilled ranges wait (they never read
// zeros) and the next daemon adopts the group with its marks and queued events, and resumes the mounts
// as they are. Only the group's last close allows everything: without a keeper (and after a planned
// stop, which drops the keeper's copy) unfilled ranges then read as zeros.
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { mountFileBacked, unmount } from '../mount/file-backed';
import { mounts } from '../mount/mountinfo';
import { native, type FanotifyGroup, type PreAccessEvent } from '../native';
import type { BlobCache } from '../storage/blob-cache';
import { MissRequests, type MissOptions } from './miss-requests';
import type { CacheMissTransport, FdKeeper, MountableImage, MountState, Probe, TransportModule } from './transport';

/** The group fd's name in the fd keeper. */
export const FDNAME = 'fanotify';

/** The group a daemon that died left with the keeper; one that is not a fanotify group is dropped. */
function adopt(fds: FdKeeper | undefined): FanotifyGroup | undefined {
  const fd = fds?.inherited(FDNAME);
  if (fd === undefined) return undefined;
  try {
    const group = new native.FanotifyGroup(fd);
    log.info('fanotify group inherited from the previous daemon', { fd });
    return group;
  } catch (err) {
    log.error('inherited fanotify fd refused: starting a new group', { fd, error: (err as Error).message });
    fds?.drop(FDNAME);
    fs.closeSync(fd);
    return undefined;
  }
}

export class FanotifyTransport implements CacheMissTransport {
  readonly name = 'fanotify' as const;
  private readonly group: FanotifyGroup;
  /** Cache files by inode: the event names its file only by an fd, `drain` by its inode. */
  private readonly byInode = new Map<number, BlobCache>();
  /** Hands the reader thread's first reads to the blobs while mounts are served. */
  private drainTimer: NodeJS.Timeout | undefined;
  /** Pending events by their fd. */
  private readonly misses: MissRequests<number>;
  /** The group came from an earlier daemon: mounts are resumed, and `begin` sweeps before reading. */
  private readonly inherited: boolean;
  private started = false;

  /**
   * Creates a group, or adopts the one a daemon that died left with the keeper. A new group is handed to
   * the keeper and read at once; an inherited one is read only from `begin`, once its mounts are resumed.
   */
  constructor(
    opts: MissOptions = {},
    private readonly fds?: FdKeeper,
  ) {
    this.misses = new MissRequests('fanotify', opts);
    const adopted = adopt(fds);
    this.inherited = adopted !== undefined;
    this.group = adopted ?? new native.FanotifyGroup();
    if (this.inherited) return;
    if (fds?.keep(FDNAME, this.group.fd)) log.info('fanotify group handed to the fd keeper', { keeper: fds.kind });
    this.begin();
  }

  get requests(): number {
    return this.misses.requests;
  }

  settings(): Record<string, unknown> {
    return { inherited: this.inherited };
  }

  /**
   * Starts reading events. An inherited group is swept first: events the dead daemon read and never
   * answered are denied (EIO), by fd number, before any new event can be given one of their numbers
   * (an answer to that number would release the stale reader instead, with zeros).
   */
  begin(): void {
    if (this.started) return;
    this.started = true;
    if (this.inherited) {
      const answered = this.group.sweep();
      log.info('fanotify events left unanswered by the previous daemon denied', { events: answered });
    }
    this.group.start((e) => this.onEvent(e));
    this.drainTimer = setInterval(() => this.flushReads(), DRAIN_MS);
    this.drainTimer.unref();
  }

  /** Tells each blob what the reader thread allowed without the daemon since the last time. */
  flushReads(): void {
    const { touches, hits } = this.group.drain();
    const firstRead = new Map<number, number[]>();
    for (let i = 0; i < touches.length; i += 2) {
      const list = firstRead.get(touches[i]) ?? [];
      list.push(touches[i + 1]);
      firstRead.set(touches[i], list);
    }
    const counted = new Map<number, number>();
    for (let i = 0; i < hits.length; i += 2) counted.set(hits[i], hits[i + 1]);
    for (const ino of new Set([...firstRead.keys(), ...counted.keys()]))
      this.byInode.get(ino)?.servedElsewhere(counted.get(ino) ?? 0, firstRead.get(ino) ?? []);
  }

  /**
   * Takes over a mount of the daemon that died, as it is: its blobs are marked in the inherited group
   * already (marks belong to the group). True only when the group is inherited, the mount is there
   * and each cache file is still the inode that was marked and mounted.
   */
  resume(image: MountableImage, target: string, state: MountState): boolean {
    if (!this.inherited || !state.inodes) return false;
    if (!mounts().some((m) => m.target === target && m.fstype === 'erofs')) return false;
    const inodes = state.inodes.split(',').map(Number);
    const now = image.blobs.map((b) => fs.statSync(b.path).ino);
    if (inodes.length !== now.length || inodes.some((ino, i) => ino !== now[i])) return false;
    image.blobs.forEach((b, i) => this.serve(b, now[i]));
    return true;
  }

  async mount(image: MountableImage, target: string): Promise<MountState> {
    this.attach(image.blobs); // before mounting: the kernel reports nothing on files marked after the mount
    mountFileBacked({ bootstrap: image.bootstrapPath, blobs: image.blobs.map((b) => b.path), target });
    // What `resume` checks: the inodes marked and mounted are still the cache files.
    return { inodes: image.blobs.map((b) => fs.statSync(b.path).ino).join(',') };
  }

  async unmount(target: string, opts: { lazy?: boolean } = {}): Promise<void> {
    unmount(target, opts);
  }

  attach(blobs: readonly BlobCache[]): void {
    // Always (re)mark: adding a mark twice is harmless, while an inode number reused by a new cache
    // file after an eviction must never be mistaken for one already marked (unmarked holes read as zeros).
    for (const b of blobs) {
      this.group.mark(b.path);
      this.serve(b, fs.statSync(b.path).ino);
    }
  }

  /**
   * Takes the events of cache file `b` (inode `ino`, marked): its misses here, its hits in the reader
   * thread. A new cache file of the same inode replaces the last one in both.
   */
  private serve(b: BlobCache, ino: number): void {
    this.byInode.set(ino, b);
    this.group.watch(b.path, b.chunkExtents(), b.presentFlags);
  }

  private onEvent(e: PreAccessEvent): void {
    this.flushReads(); // first: the reader thread's earlier first reads come before this one in a trace
    const answer = (errno: number) => this.group.respond(e.fd, errno);
    // The daemon's own writes are allowed by the addon's reader thread; any other pid is a reader's miss.
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

  /**
   * Stopping on purpose (mounts are gone): pending events are denied and the keeper's copy is dropped,
   * so the group, its marks and the cache files' inodes are not kept alive after the daemon.
   */
  async close(): Promise<void> {
    // A reader blocked on an unanswered event would hang: deny what is left before closing.
    this.misses.failAll();
    clearInterval(this.drainTimer);
    this.flushReads();
    this.fds?.drop(FDNAME);
    this.group.close();
  }
}

/** How often the reader thread's first reads reach the blobs (their access traces) when no miss brings them. */
const DRAIN_MS = 100;

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
  // After a planned stop (the keeper's copy dropped) or without a keeper, unfilled ranges read as zeros.
  zerosWithoutDaemon: true,
  kernelReadsAfterAnswer: true,
  storesFromMount: false,
  describe: () => 'pre-content events on the blob cache files under file-backed EROFS (Linux 6.14+)',
  probe,
  create: (ctx) => new FanotifyTransport(ctx.misses, ctx.fds),
};
