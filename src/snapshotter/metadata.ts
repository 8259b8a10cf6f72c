// The snapshotter's metadata: every snapshot by name, kept in one JSON file replaced atomically
// (written aside, synced, renamed, its directory synced), so that a daemon killed at any point
// restarts with either the state before a change or the state after it.
import fs from 'node:fs';
import path from 'node:path';
import { InputError } from '../errors';
import { native } from '../native';

export type Kind = 'VIEW' | 'ACTIVE' | 'COMMITTED';

/** A layer of an image with a lazy form: committed at once, with nothing in its directory. */
export interface LazyLayer {
  /** The lazy image, pinned by digest: what the daemon mounts. */
  image: string;
  /** The image's last layer: its chain is the whole image, which the lazy mount holds. */
  top: boolean;
}

export interface Snapshot {
  /** Names its directory; never reused. */
  id: number;
  name: string;
  /** Name of the parent ('' for none): a committed snapshot. */
  parent: string;
  kind: Kind;
  /** Milliseconds since the epoch. */
  created: number;
  updated: number;
  labels: Record<string, string>;
  lazy?: LazyLayer;
  /** Where the lazy image a container's snapshot is on is mounted (placeholders of a top layer only). */
  mountedAt?: string;
}

interface Stored {
  nextId: number;
  snapshots: Snapshot[];
}

export class SnapshotMetadata {
  private readonly byName = new Map<string, Snapshot>();
  private nextId = 1;

  constructor(private readonly file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    if (!fs.existsSync(file)) return;
    let stored: Stored;
    try {
      stored = JSON.parse(fs.readFileSync(file, 'utf8')) as Stored;
    } catch (err) {
      throw new InputError(`unreadable snapshot metadata: ${(err as Error).message}`, { path: file }, { cause: err });
    }
    this.nextId = stored.nextId;
    for (const s of stored.snapshots) this.byName.set(s.name, s);
  }

  get(name: string): Snapshot | undefined {
    return this.byName.get(name);
  }

  all(): Snapshot[] {
    return [...this.byName.values()];
  }

  children(name: string): Snapshot[] {
    return this.all().filter((s) => s.parent === name);
  }

  /** The snapshot and its ancestors, nearest first. */
  chain(name: string): Snapshot[] {
    const out: Snapshot[] = [];
    for (let s = this.byName.get(name); s; s = s.parent ? this.byName.get(s.parent) : undefined) out.push(s);
    return out;
  }

  newId(): number {
    return this.nextId++;
  }

  /**
   * Applies `change` to the snapshots and persists the result; nothing changes if the write fails.
   * Changes are applied one after another, each to the result of the last. The write and its syncs run
   * off the event loop, which serves the mounts' cache misses meanwhile, and off the thread pool,
   * where they would wait behind chunk decodes while containerd waits for the snapshot.
   */
  update(change: (byName: Map<string, Snapshot>) => void): Promise<void> {
    const run = this.writing.then(() => this.write(change));
    this.writing = run.catch(() => undefined);
    return run;
  }

  private writing: Promise<void> = Promise.resolve();

  private async write(change: (byName: Map<string, Snapshot>) => void): Promise<void> {
    const next = new Map(this.byName);
    change(next);
    const stored: Stored = { nextId: this.nextId, snapshots: [...next.values()] };
    await native.replaceFile(this.file, Buffer.from(JSON.stringify(stored)));
    this.byName.clear();
    for (const [k, v] of next) this.byName.set(k, v);
  }
}
