// Applies the entries of image layers, in order, to one merged tree: OCI whiteouts (.wh.NAME) and
// opaque directories (.wh..wh..opq) hide what lower layers put there; later entries replace earlier ones.
import { InputError } from '../errors';
import type { TarEntry } from '../tar/reader';
import { displayPath, nameKey, type ChunkLocation, type Directory, type Inode, type Metadata } from '../tree/node';

const WHITEOUT_PREFIX = Buffer.from('.wh.');
const OPAQUE = Buffer.from('.wh..wh..opq');
const META_PREFIX = Buffer.from('.wh..wh.');

/** Receives a regular file's body and returns its chunk map. */
export type ContentSink = (entry: TarEntry) => Promise<Array<ChunkLocation | null>>;

export class MergedTree {
  readonly root: Directory;
  /** Which layer put each directory entry there: whiteouts only hide entries of lower layers. */
  private readonly origin = new WeakMap<Directory, Map<string, number>>();

  constructor() {
    this.root = { type: 'dir', meta: defaultDirMeta(), entries: new Map() };
  }

  async apply(entry: TarEntry, layer: number, content: ContentSink): Promise<void> {
    const parts = splitPath(entry.name);
    if (parts.length === 0) {
      if (entry.type !== 'dir') throw new InputError('the archive root is not a directory', { path: '/' });
      this.root.meta = metaOf(entry);
      return;
    }
    const base = parts[parts.length - 1];
    const parentParts = parts.slice(0, -1);

    if (base.subarray(0, WHITEOUT_PREFIX.length).equals(WHITEOUT_PREFIX)) {
      const parent = this.lookupDir(parentParts);
      if (!parent) return; // nothing below to hide
      if (base.equals(OPAQUE)) {
        for (const [key, from] of this.originOf(parent)) {
          if (from < layer) this.remove(parent, key);
        }
      } else if (!base.subarray(0, META_PREFIX.length).equals(META_PREFIX)) {
        const key = nameKey(base.subarray(WHITEOUT_PREFIX.length));
        if ((this.originOf(parent).get(key) ?? Infinity) < layer) this.remove(parent, key);
      }
      return;
    }

    const parent = this.ensureDir(parentParts, layer);
    const key = nameKey(base);
    const existing = parent.entries.get(key);
    let node: Inode;
    switch (entry.type) {
      case 'dir':
        if (existing?.type === 'dir') {
          existing.meta = metaOf(entry);
          node = existing;
        } else {
          node = { type: 'dir', meta: metaOf(entry), entries: new Map() };
        }
        break;
      case 'file':
        node = { type: 'file', meta: metaOf(entry), size: entry.size, chunks: await content(entry) };
        break;
      case 'hardlink': {
        const targetParts = splitPath(entry.linkname);
        const target = this.lookup(targetParts);
        if (!target)
          throw new InputError(`hard link to missing target ${JSON.stringify(displayPath(targetParts))}`, {
            path: displayPath(parts),
          });
        if (target.type === 'dir') throw new InputError('hard link to a directory', { path: displayPath(parts) });
        node = target;
        break;
      }
      case 'symlink':
        node = { type: 'symlink', meta: metaOf(entry), target: entry.linkname };
        break;
      case 'chardev':
      case 'blockdev':
        node = { type: entry.type, meta: metaOf(entry), major: entry.devmajor, minor: entry.devminor };
        break;
      case 'fifo':
        node = { type: 'fifo', meta: metaOf(entry) };
        break;
    }
    parent.entries.set(key, node);
    this.originOf(parent).set(key, layer);
  }

  private originOf(dir: Directory): Map<string, number> {
    let m = this.origin.get(dir);
    if (!m) {
      m = new Map();
      this.origin.set(dir, m);
    }
    return m;
  }

  private remove(dir: Directory, key: string): void {
    dir.entries.delete(key);
    this.originOf(dir).delete(key);
  }

  /** Looks a path up without following symlinks. */
  private lookup(parts: readonly Buffer[]): Inode | undefined {
    let node: Inode = this.root;
    for (const part of parts) {
      if (node.type !== 'dir') return undefined;
      const next: Inode | undefined = node.entries.get(nameKey(part));
      if (!next) return undefined;
      node = next;
    }
    return node;
  }

  private lookupDir(parts: readonly Buffer[]): Directory | undefined {
    const node = this.lookup(parts);
    return node?.type === 'dir' ? node : undefined;
  }

  /** Parents missing from the archive are created as root-owned 0755 directories, as runtimes do. */
  private ensureDir(parts: readonly Buffer[], layer: number): Directory {
    let dir = this.root;
    parts.forEach((part, i) => {
      const key = nameKey(part);
      const next = dir.entries.get(key);
      if (next?.type === 'dir') {
        dir = next;
        return;
      }
      if (next)
        throw new InputError('a parent of this entry is not a directory', { path: displayPath(parts.slice(0, i + 1)) });
      const created: Directory = { type: 'dir', meta: defaultDirMeta(), entries: new Map() };
      dir.entries.set(key, created);
      this.originOf(dir).set(key, layer);
      dir = created;
    });
    return dir;
  }
}

function defaultDirMeta(): Metadata {
  return { perm: 0o755, uid: 0, gid: 0, mtimeSec: 0n, mtimeNsec: 0, xattrs: [] };
}

function metaOf(e: TarEntry): Metadata {
  return {
    perm: e.mode & 0o7777,
    uid: e.uid,
    gid: e.gid,
    mtimeSec: e.mtimeSec,
    mtimeNsec: e.mtimeNsec,
    xattrs: e.xattrs,
  };
}

/** Splits an archive path into components; `.` and empty components vanish, `..` and absolute paths are refused. */
export function splitPath(name: Buffer): Buffer[] {
  if (name[0] === 0x2f) throw new InputError('absolute path in archive', { path: displayPath(name) });
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= name.length; i++) {
    if (i === name.length || name[i] === 0x2f) {
      const part = name.subarray(start, i);
      start = i + 1;
      if (part.length === 0 || (part.length === 1 && part[0] === 0x2e)) continue;
      if (part.length === 2 && part[0] === 0x2e && part[1] === 0x2e)
        throw new InputError("path escapes the root with '..'", { path: displayPath(name) });
      parts.push(part);
    }
  }
  return parts;
}
