// containerd's snapshotter model over overlayfs: each snapshot is a directory (`<root>/<id>/fs`, with
// `work` for overlayfs), active snapshots are writable uppers over their committed parents. Layers of
// an image with a lazy form are committed at once as empty placeholders; a container on the top one
// gets the lazy image's EROFS mount as its lower layer instead of the placeholders' directories.
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { compileFilters, type FieldOf } from './filters';
import { applyLayer } from './layer-unpack';
import { SnapshotMetadata, type Kind, type LazyLayer, type Snapshot } from './metadata';

/** What the snapshotter needs of the daemon: lazy images found and mounted. */
export interface LazyImages {
  /**
   * The lazy form of manifest `manifestDigest` of `ref` (as containerd resolved it), pinned by digest,
   * with the manifest digest it says it was converted from; null when it has none (or it cannot be
   * found now: the layers are then unpacked as usual).
   */
  find(ref: string, manifestDigest: string): Promise<{ image: string; sourceDigest: string } | null>;
  /** Mounts the lazy image; returns where (a directory the caller does not choose). */
  mount(image: string, id: number): Promise<string>;
  /** Prepares the lazy image for a mount expected soon, in the background. */
  warm(image: string): void;
  unmount(target: string): Promise<void>;
  /** Whether the daemon has a mount at `target` (it restores them after a restart, has none after a stop). */
  mounted(target: string): boolean;
  /** Downloads layer `digest` of image `ref` (verified) to `file`. */
  fetchLayer(ref: string, digest: string, file: string): Promise<void>;
}

export type SnapshotErrorCode = 'NOT_FOUND' | 'ALREADY_EXISTS' | 'FAILED_PRECONDITION' | 'INVALID_ARGUMENT';

/** An error containerd tells apart by its gRPC status code. */
export class SnapshotError extends Error {
  constructor(
    readonly code: SnapshotErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SnapshotError';
  }
}

/** containerd's mount type (api/types/mount.proto). */
export interface Mount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

export interface Info {
  name: string;
  parent: string;
  kind: Kind;
  created: number;
  updated: number;
  labels: Record<string, string>;
}

/** Labels containerd sets on the snapshots it prepares to unpack a layer. */
export const Label = {
  /** The chain id the layer's snapshot is committed as: its presence means containerd accepts ALREADY_EXISTS. */
  ref: 'containerd.io/snapshot.ref',
  imageRef: 'containerd.io/snapshot/cri.image-ref',
  manifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  layerDigest: 'containerd.io/snapshot/cri.layer-digest',
  /** This layer's digest and those of the layers above it, comma-separated. */
  imageLayers: 'containerd.io/snapshot/cri.image-layers',
  /** Set by this snapshotter on placeholders: the lazy image they stand for. */
  lazyImage: 'io.erofs-ondemand.lazy-image',
} as const;

function info(s: Snapshot): Info {
  return { name: s.name, parent: s.parent, kind: s.kind, created: s.created, updated: s.updated, labels: s.labels };
}

function fieldOf(s: Snapshot): FieldOf {
  return (p) => {
    if (p[0] === 'labels') return p.length === 2 ? s.labels[p[1]] : undefined;
    if (p.length !== 1) return undefined;
    if (p[0] === 'name') return s.name;
    if (p[0] === 'parent') return s.parent;
    if (p[0] === 'kind') return s.kind[0] + s.kind.slice(1).toLowerCase(); // containerd's Kind.String()
    return undefined;
  };
}

/** Bytes and inodes under `dir` (not following links), as containerd's fs.DiskUsage counts them. */
function diskUsage(dir: string): { size: number; inodes: number } {
  let size = 0;
  let inodes = 0;
  const seen = new Set<number>();
  const walk = (p: string): void => {
    const st = fs.lstatSync(p, { bigint: false });
    if (!seen.has(st.ino)) {
      seen.add(st.ino);
      inodes++;
      size += st.blocks * 512;
    }
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  if (fs.existsSync(dir)) walk(dir);
  return { size, inodes };
}

/** Directory and overlay option text may not hold what separates overlayfs options. */
function overlayPath(p: string): string {
  if (/[,:\\]/.test(p))
    throw new SnapshotError('FAILED_PRECONDITION', `overlay path ${JSON.stringify(p)} contains , : or \\`);
  return p;
}

export class Snapshotter {
  private readonly meta: SnapshotMetadata;
  /** Lazy-image lookups of a pull in progress, by image reference and manifest digest: one per image, not per layer. */
  private readonly lookups = new Map<string, Promise<{ image: string; sourceDigest: string } | null>>();
  /** Mutations one at a time: a lazy mount awaits, and another request must not see half of a change. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly root: string,
    private readonly lazy: LazyImages | null,
  ) {
    fs.mkdirSync(root, { recursive: true, mode: 0o700 });
    this.meta = new SnapshotMetadata(path.join(root, 'metadata.json'));
  }

  private serial<T>(op: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  private dir(s: Snapshot): string {
    return path.join(this.root, String(s.id));
  }

  private need(name: string): Snapshot {
    const s = this.meta.get(name);
    if (!s) throw new SnapshotError('NOT_FOUND', `snapshot ${JSON.stringify(name)} does not exist`);
    return s;
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.serial(async () => {
      if (labels[Label.ref] && this.lazy) {
        const placed = await this.placeLazyLayer(key, parent, labels);
        if (placed)
          throw new SnapshotError('ALREADY_EXISTS', `layer ${labels[Label.ref]} is lazy: committed as ${placed}`);
      }
      return this.create('ACTIVE', key, parent, labels);
    });
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.serial(() => this.create('VIEW', key, parent, labels));
  }

  private async create(kind: Kind, key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    if (!key) throw new SnapshotError('INVALID_ARGUMENT', 'a snapshot needs a key');
    if (this.meta.get(key)) throw new SnapshotError('ALREADY_EXISTS', `snapshot ${JSON.stringify(key)} already exists`);
    if (parent) {
      const p = this.need(parent);
      if (p.kind !== 'COMMITTED')
        throw new SnapshotError('FAILED_PRECONDITION', `parent ${JSON.stringify(parent)} is not committed`);
    }
    const now = Date.now();
    const s: Snapshot = { id: this.meta.newId(), name: key, parent, kind, created: now, updated: now, labels };
    fs.mkdirSync(path.join(this.dir(s), 'fs'), { recursive: true, mode: 0o755 });
    if (kind === 'ACTIVE') fs.mkdirSync(path.join(this.dir(s), 'work'), { mode: 0o700 });
    try {
      await this.meta.update((m) => m.set(key, s));
      await this.materializeBelow(s);
      const lower = this.lazyBelow(s);
      if (lower) await this.ensureMounted(lower);
      return this.mountsOf(s);
    } catch (err) {
      if (this.meta.get(key) === s) await this.meta.update((m) => m.delete(key));
      fs.rmSync(this.dir(s), { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * For a layer containerd is about to unpack: when its image has a lazy form converted from the
   * very manifest being pulled, commits an empty placeholder for it and returns its name; null
   * when the layer is to be unpacked (no lazy form, another manifest, or not a CRI pull).
   */
  private async placeLazyLayer(key: string, parent: string, labels: Record<string, string>): Promise<string | null> {
    const chainId = labels[Label.ref];
    const existing = this.meta
      .all()
      .find((s) => s.kind === 'COMMITTED' && s.parent === parent && s.labels[Label.ref] === chainId);
    if (existing) return existing.name;
    const imageRef = labels[Label.imageRef];
    const manifest = labels[Label.manifestDigest];
    const layer = labels[Label.layerDigest];
    if (!imageRef || !manifest || !layer || !this.lazy) return null;
    const lookupKey = `${imageRef}@${manifest}`;
    let lookup = this.lookups.get(lookupKey);
    if (!lookup) {
      lookup = this.lazy.find(imageRef, manifest);
      this.lookups.set(lookupKey, lookup);
      // A later pull looks again: the lazy form may have been pushed meanwhile.
      const forget = () => setTimeout(() => this.lookups.delete(lookupKey), 60_000).unref();
      lookup.then(forget, forget);
    }
    const found = await lookup.catch(() => null);
    if (!found) return null;
    if (found.sourceDigest !== manifest) {
      log.info('lazy image converted from another manifest: unpacking the layers', {
        image: imageRef,
        lazy: found.image,
        pulled: manifest,
        converted: found.sourceDigest,
      });
      return null;
    }
    const layers = (labels[Label.imageLayers] ?? '').split(',').filter(Boolean);
    const lazy: LazyLayer = { image: found.image, top: layers.length === 1 && layers[0] === layer };
    const now = Date.now();
    const s: Snapshot = {
      id: this.meta.newId(),
      name: key,
      parent,
      kind: 'COMMITTED',
      created: now,
      updated: now,
      labels: { ...labels, [Label.lazyImage]: found.image },
      lazy,
    };
    fs.mkdirSync(path.join(this.dir(s), 'fs'), { recursive: true, mode: 0o755 });
    await this.meta.update((m) => m.set(key, s));
    log.info('lazy layer committed without download', { image: imageRef, layer, chain: chainId, top: lazy.top });
    // A pull of an image is followed by a container of it: its mount is prepared meanwhile. Started
    // once this answer is on its way: containerd's next request waits for the answer, not for the start.
    const warm = this.lazy;
    setImmediate(() => warm.warm(found.image));
    return key;
  }

  /**
   * A chain that reaches lazy layers below a lazy image's top (an image without a lazy form sharing
   * base layers with one: containerd found the placeholders by chain id) needs their files: each is
   * downloaded and unpacked into its directory, and is an ordinary layer from then on.
   */
  private async materializeBelow(s: Snapshot): Promise<void> {
    for (const a of this.meta.chain(s.name).slice(1)) {
      if (a.lazy?.top) return; // the whole chain below is in the image's mount
      if (!a.lazy) continue;
      if (!this.lazy) throw new SnapshotError('FAILED_PRECONDITION', 'lazy images are not served');
      const ref = a.labels[Label.imageRef];
      const digest = a.labels[Label.layerDigest];
      const fsDir = path.join(this.dir(a), 'fs');
      const tmp = path.join(this.root, `layer-${a.id}.tmp`);
      try {
        await this.lazy.fetchLayer(ref, digest, tmp);
        fs.rmSync(fsDir, { recursive: true, force: true });
        fs.mkdirSync(fsDir, { mode: 0o755 });
        await applyLayer(tmp, fsDir);
      } finally {
        fs.rmSync(tmp, { force: true });
      }
      const labels = { ...a.labels };
      delete labels[Label.lazyImage];
      await this.meta.update((m) => m.set(a.name, { ...a, labels, lazy: undefined, updated: Date.now() }));
      log.info('lazy layer unpacked for a chain that shares it', { image: ref, layer: digest, snapshot: a.name });
    }
  }

  /** The nearest lazy placeholder in `s`'s ancestry (not `s` itself), if any. */
  private lazyBelow(s: Snapshot): Snapshot | undefined {
    return this.meta
      .chain(s.name)
      .slice(1)
      .find((a) => a.lazy);
  }

  private async ensureMounted(top: Snapshot): Promise<void> {
    if (!top.lazy?.top)
      throw new SnapshotError(
        'FAILED_PRECONDITION',
        `snapshot ${JSON.stringify(top.name)} is a lazy layer below the top of ${top.lazy?.image}: its files are only in the whole image's mount`,
      );
    // After a restart the daemon has restored its mounts; after a stop it has none.
    if (!this.lazy) throw new SnapshotError('FAILED_PRECONDITION', 'lazy images are not served');
    if (top.mountedAt && this.lazy.mounted(top.mountedAt)) return;
    const target = await this.lazy.mount(top.lazy.image, top.id);
    await this.meta.update((m) => m.set(top.name, { ...top, mountedAt: target }));
  }

  /** The lower directories of `s`, nearest first: parents' directories, down to a lazy image's mount. */
  private lowers(s: Snapshot): string[] {
    const out: string[] = [];
    for (const a of this.meta.chain(s.name).slice(1)) {
      if (a.lazy) {
        const top = this.meta.get(a.name) as Snapshot;
        if (!top.lazy?.top || !top.mountedAt)
          throw new SnapshotError('FAILED_PRECONDITION', `lazy layer ${JSON.stringify(a.name)} is not mounted`);
        out.push(top.mountedAt);
        return out;
      }
      out.push(path.join(this.dir(a), 'fs'));
    }
    return out;
  }

  /** As containerd's overlay snapshotter gives them: a bind mount where one directory is the whole tree. */
  private mountsOf(s: Snapshot): Mount[] {
    const lowers = this.lowers(s);
    const fsDir = path.join(this.dir(s), 'fs');
    if (lowers.length === 0)
      return [{ type: 'bind', source: fsDir, target: '', options: [s.kind === 'VIEW' ? 'ro' : 'rw', 'rbind'] }];
    if (s.kind === 'VIEW' && lowers.length === 1)
      return [{ type: 'bind', source: lowers[0], target: '', options: ['ro', 'rbind'] }];
    const options =
      s.kind === 'ACTIVE'
        ? [`workdir=${overlayPath(path.join(this.dir(s), 'work'))}`, `upperdir=${overlayPath(fsDir)}`]
        : [];
    options.push(`lowerdir=${lowers.map(overlayPath).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', target: '', options }];
  }

  /**
   * containerd asks again when it starts a container's task: a daemon that lost the lazy image's mount
   * since the Prepare (stopped without an fd keeper) mounts it again, never naming an empty directory.
   */
  mounts(key: string): Promise<Mount[]> {
    return this.serial(async () => {
      const s = this.need(key);
      if (s.kind === 'COMMITTED')
        throw new SnapshotError(
          'FAILED_PRECONDITION',
          `snapshot ${JSON.stringify(key)} is committed: it has no mounts`,
        );
      const lower = this.lazyBelow(s);
      if (lower) await this.ensureMounted(lower);
      return this.mountsOf(s);
    });
  }

  commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    return this.serial(async () => {
      const s = this.need(key);
      if (!name) throw new SnapshotError('INVALID_ARGUMENT', `committing ${JSON.stringify(key)} needs a name`);
      if (s.kind !== 'ACTIVE')
        throw new SnapshotError('FAILED_PRECONDITION', `snapshot ${JSON.stringify(key)} is not active`);
      if (this.meta.get(name))
        throw new SnapshotError('ALREADY_EXISTS', `snapshot ${JSON.stringify(name)} already exists`);
      const committed: Snapshot = {
        ...s,
        name,
        kind: 'COMMITTED',
        updated: Date.now(),
        labels: { ...s.labels, ...labels },
      };
      await this.meta.update((m) => {
        m.delete(key);
        m.set(name, committed);
      });
      fs.rmSync(path.join(this.dir(s), 'work'), { recursive: true, force: true });
    });
  }

  remove(key: string): Promise<void> {
    return this.serial(async () => {
      const s = this.need(key);
      const children = this.meta.children(key);
      if (children.length > 0)
        throw new SnapshotError(
          'FAILED_PRECONDITION',
          `snapshot ${JSON.stringify(key)} has children: ${children.map((c) => c.name).join(', ')}`,
        );
      const lower = this.lazyBelow(s);
      await this.meta.update((m) => m.delete(key));
      fs.rmSync(this.dir(s), { recursive: true, force: true });
      if (s.mountedAt) await this.release(s);
      if (lower?.mountedAt && !this.meta.all().some((o) => !o.lazy && this.lazyBelow(o)?.name === lower.name))
        await this.release(lower);
    });
  }

  /** Unmounts a lazy image no snapshot uses any more (if the daemon still has it mounted). */
  private async release(top: Snapshot): Promise<void> {
    if (!top.mountedAt || !this.lazy) return;
    if (this.lazy.mounted(top.mountedAt)) await this.lazy.unmount(top.mountedAt);
    if (this.meta.get(top.name)) await this.meta.update((m) => m.set(top.name, { ...top, mountedAt: undefined }));
  }

  async stat(key: string): Promise<Info> {
    return info(this.need(key));
  }

  /** Labels are all that may change; `paths` as containerd's field mask (`labels`, `labels.<key>`; none: all). */
  update(next: Info, paths: readonly string[]): Promise<Info> {
    return this.serial(async () => {
      const s = this.need(next.name);
      let labels = { ...s.labels };
      if (paths.length === 0) labels = { ...next.labels };
      for (const p of paths) {
        if (p === 'labels') labels = { ...next.labels };
        else if (p.startsWith('labels.')) {
          const k = p.slice('labels.'.length);
          if (next.labels[k] === undefined) delete labels[k];
          else labels[k] = next.labels[k];
        } else
          throw new SnapshotError(
            'INVALID_ARGUMENT',
            `cannot update ${JSON.stringify(p)} of snapshot ${JSON.stringify(s.name)}`,
          );
      }
      const updated = { ...s, labels, updated: Date.now() };
      await this.meta.update((m) => m.set(s.name, updated));
      return info(updated);
    });
  }

  async list(filters: readonly string[]): Promise<Info[]> {
    let match: ReturnType<typeof compileFilters>;
    try {
      match = compileFilters(filters);
    } catch (err) {
      throw new SnapshotError('INVALID_ARGUMENT', (err as Error).message);
    }
    return this.meta
      .all()
      .filter((s) => match(fieldOf(s)))
      .map(info);
  }

  async usage(key: string): Promise<{ size: number; inodes: number }> {
    const s = this.need(key);
    return diskUsage(path.join(this.dir(s), 'fs'));
  }

  /** Removes directories no snapshot owns (left by a change interrupted before its metadata was written). */
  cleanup(): Promise<void> {
    return this.serial(() => {
      const owned = new Set(this.meta.all().map((s) => String(s.id)));
      for (const e of fs.readdirSync(this.root, { withFileTypes: true })) {
        if (!e.isDirectory() || owned.has(e.name) || !/^\d+$/.test(e.name)) continue;
        log.info('snapshot directory no snapshot owns: removed', { path: path.join(this.root, e.name) });
        fs.rmSync(path.join(this.root, e.name), { recursive: true, force: true });
      }
    });
  }
}
