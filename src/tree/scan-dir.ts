// Reads a directory of the local filesystem into a tree. Regular files keep their source path so
// their contents can be chunked afterwards; hard links (same st_dev/st_ino) share one inode.
import fs from 'node:fs';
import { InputError } from '../errors';
import { native } from '../native';
import { displayPath, nameKey, type Directory, type Inode, type Metadata, type RegularFile, type Xattr } from './node';

export interface ScannedTree {
  root: Directory;
  /** Regular files in deterministic (sorted walk) order, with their source paths. */
  files: Array<{ inode: RegularFile; source: Buffer; sparse: boolean }>;
}

const SLASH = Buffer.from('/');

function readXattrs(path: Buffer): Xattr[] {
  return native.listXattrs(path).map((name) => ({ name, value: native.getXattr(path, name) }));
}

function metadata(path: Buffer, st: fs.BigIntStats): Metadata {
  return {
    perm: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtimeSec: st.mtimeNs / 1_000_000_000n - (st.mtimeNs % 1_000_000_000n < 0n ? 1n : 0n),
    mtimeNsec: Number(((st.mtimeNs % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n),
    xattrs: readXattrs(path),
  };
}

function devNumbers(rdev: bigint): { major: number; minor: number } {
  return {
    major: Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn)),
    minor: Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn)),
  };
}

export function scanDirectory(rootPath: string): ScannedTree {
  const rootBuf = Buffer.from(rootPath);
  let rootStat: fs.BigIntStats;
  try {
    rootStat = fs.lstatSync(rootBuf, { bigint: true });
  } catch (err) {
    throw new InputError(`cannot read source directory: ${(err as Error).message}`, { path: rootPath }, { cause: err });
  }
  if (!rootStat.isDirectory()) throw new InputError('source is not a directory', { path: rootPath });

  const files: ScannedTree['files'] = [];
  const links = new Map<string, Inode>();

  const visit = (path: Buffer, st: fs.BigIntStats): Inode => {
    const meta = metadata(path, st);
    if (st.isDirectory()) return { type: 'dir', meta, entries: new Map() };
    if (st.isFile()) {
      const inode: RegularFile = { type: 'file', meta, size: Number(st.size), chunks: [] };
      files.push({ inode, source: path, sparse: st.blocks * 512n < st.size });
      return inode;
    }
    if (st.isSymbolicLink()) return { type: 'symlink', meta, target: fs.readlinkSync(path, { encoding: 'buffer' }) };
    if (st.isCharacterDevice()) return { type: 'chardev', meta, ...devNumbers(st.rdev) };
    if (st.isBlockDevice()) return { type: 'blockdev', meta, ...devNumbers(st.rdev) };
    if (st.isFIFO()) return { type: 'fifo', meta };
    if (st.isSocket()) return { type: 'socket', meta };
    throw new InputError(`unsupported file type (mode 0${st.mode.toString(8)})`, { path: displayPath(path) });
  };

  const root: Directory = { type: 'dir', meta: metadata(rootBuf, rootStat), entries: new Map() };
  const stack: Array<{ dir: Directory; path: Buffer }> = [{ dir: root, path: rootBuf }];
  while (stack.length > 0) {
    const { dir, path } = stack.pop()!;
    let names: Buffer[];
    try {
      names = fs.readdirSync(path, { encoding: 'buffer' });
    } catch (err) {
      throw new InputError(
        `cannot list directory: ${(err as Error).message}`,
        { path: displayPath(path) },
        { cause: err },
      );
    }
    names.sort(Buffer.compare);
    const subdirs: Array<{ dir: Directory; path: Buffer }> = [];
    for (const name of names) {
      const child = Buffer.concat([path, SLASH, name]);
      let inode: Inode;
      try {
        const st = fs.lstatSync(child, { bigint: true });
        const linkKey = !st.isDirectory() && st.nlink > 1n ? `${st.dev}:${st.ino}` : null;
        const known = linkKey ? links.get(linkKey) : undefined;
        inode = known ?? visit(child, st);
        if (linkKey && !known) links.set(linkKey, inode);
      } catch (err) {
        if (err instanceof InputError) throw err;
        throw new InputError(`cannot read: ${(err as Error).message}`, { path: displayPath(child) }, { cause: err });
      }
      dir.entries.set(nameKey(name), inode);
      if (inode.type === 'dir') subdirs.push({ dir: inode, path: child });
    }
    // Reverse so that the stack pops subdirectories in sorted order: files are then met in a sorted walk.
    for (let i = subdirs.length - 1; i >= 0; i--) stack.push(subdirs[i]);
  }
  return { root, files };
}
