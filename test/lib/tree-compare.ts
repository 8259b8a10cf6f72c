// Compares two directory trees as a user of the mounted image would see them: names, types, content,
// modes, owners, mtimes (ns), xattrs, symlink targets, device numbers and hard-link identity.
import fs from 'node:fs';
import { native } from '../../src/native';

export interface CompareOptions {
  /** Skip the root directory's own metadata (e.g. when one side is a fresh mount point). */
  ignoreRootMeta?: boolean;
}

const SLASH = Buffer.from('/');

function show(rel: Buffer): string {
  return JSON.stringify(rel.length === 0 ? '/' : rel.toString('latin1'));
}

function xattrMap(p: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of native.listXattrs(p)) out.set(name.toString('latin1'), native.getXattr(p, name).toString('hex'));
  return new Map([...out].sort());
}

function sameContent(a: Buffer, b: Buffer, size: number): boolean {
  const fa = fs.openSync(a, 'r');
  const fb = fs.openSync(b, 'r');
  try {
    const ba = Buffer.allocUnsafe(1 << 20);
    const bb = Buffer.allocUnsafe(1 << 20);
    for (let off = 0; ;) {
      const na = fs.readSync(fa, ba, 0, ba.length, off);
      const nb = fs.readSync(fb, bb, 0, bb.length, off);
      if (na !== nb) return false;
      if (na === 0) return off === size;
      if (!ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
      off += na;
    }
  } finally {
    fs.closeSync(fa);
    fs.closeSync(fb);
  }
}

/** Returns a list of differences (empty when the trees match). */
export function compareTrees(expected: string, actual: string, opts: CompareOptions = {}): string[] {
  const diffs: string[] = [];
  const linksA = new Map<string, Buffer[]>();
  const linksB = new Map<string, Buffer[]>();
  const pathKeyA = new Map<string, string>();
  const pathKeyB = new Map<string, string>();

  const walk = (rel: Buffer): void => {
    const pa = Buffer.concat([Buffer.from(expected), rel]);
    const pb = Buffer.concat([Buffer.from(actual), rel]);
    let sa: fs.BigIntStats;
    let sb: fs.BigIntStats;
    try {
      sa = fs.lstatSync(pa, { bigint: true });
      sb = fs.lstatSync(pb, { bigint: true });
    } catch (err) {
      diffs.push(`${show(rel)}: ${(err as Error).message}`);
      return;
    }
    const isRoot = rel.length === 0;
    const check = (what: string, a: unknown, b: unknown) => {
      if (a !== b) diffs.push(`${show(rel)}: ${what} ${String(a)} != ${String(b)}`);
    };
    check('mode', sa.mode.toString(8), sb.mode.toString(8));
    if (!(isRoot && opts.ignoreRootMeta)) {
      check('uid', sa.uid, sb.uid);
      check('gid', sa.gid, sb.gid);
      check('mtimeNs', sa.mtimeNs, sb.mtimeNs);
      const xa = JSON.stringify([...xattrMap(pa)]);
      const xb = JSON.stringify([...xattrMap(pb)]);
      check('xattrs', xa, xb);
    }
    if (!sa.isDirectory()) {
      check('nlink', sa.nlink, sb.nlink);
      const ka = `${sa.dev}:${sa.ino}`;
      const kb = `${sb.dev}:${sb.ino}`;
      linksA.set(ka, [...(linksA.get(ka) ?? []), rel]);
      linksB.set(kb, [...(linksB.get(kb) ?? []), rel]);
      pathKeyA.set(rel.toString('latin1'), ka);
      pathKeyB.set(rel.toString('latin1'), kb);
    }
    if (sa.isFile() && sb.isFile()) {
      check('size', sa.size, sb.size);
      if (sa.size === sb.size && !sameContent(pa, pb, Number(sa.size))) diffs.push(`${show(rel)}: content differs`);
    } else if (sa.isSymbolicLink() && sb.isSymbolicLink()) {
      check(
        'target',
        fs.readlinkSync(pa, { encoding: 'buffer' }).toString('hex'),
        fs.readlinkSync(pb, { encoding: 'buffer' }).toString('hex'),
      );
    } else if (sa.isCharacterDevice() || sa.isBlockDevice()) {
      check('rdev', sa.rdev, sb.rdev);
    } else if (sa.isDirectory() && sb.isDirectory()) {
      const na = fs.readdirSync(pa, { encoding: 'buffer' }).sort(Buffer.compare);
      const nb = fs.readdirSync(pb, { encoding: 'buffer' }).sort(Buffer.compare);
      const setB = new Set(nb.map((n) => n.toString('latin1')));
      const setA = new Set(na.map((n) => n.toString('latin1')));
      for (const n of na)
        if (!setB.has(n.toString('latin1'))) diffs.push(`${show(Buffer.concat([rel, SLASH, n]))}: missing`);
      for (const n of nb)
        if (!setA.has(n.toString('latin1'))) diffs.push(`${show(Buffer.concat([rel, SLASH, n]))}: unexpected`);
      for (const n of na) if (setB.has(n.toString('latin1'))) walk(Buffer.concat([rel, SLASH, n]));
    }
  };
  walk(Buffer.alloc(0));

  // Hard-link identity: the set of paths sharing an inode must be the same on both sides.
  for (const [rel, ka] of pathKeyA) {
    const kb = pathKeyB.get(rel);
    if (kb === undefined) continue;
    const groupA = (linksA.get(ka) ?? [])
      .map((b) => b.toString('latin1'))
      .sort()
      .join('\0');
    const groupB = (linksB.get(kb) ?? [])
      .map((b) => b.toString('latin1'))
      .sort()
      .join('\0');
    if (groupA !== groupB) diffs.push(`${JSON.stringify(rel)}: hard-link group differs`);
  }
  return diffs;
}

/**
 * compareTrees in another process: reads of a lazily served mount block until this process answers
 * them, so this one must stay free.
 */
export async function compareTreesInChild(expected: string, actual: string): Promise<string[]> {
  const { execFile } = await import('node:child_process');
  const script = `console.log(JSON.stringify(require(${JSON.stringify(__filename)}).compareTrees(${JSON.stringify(expected)}, ${JSON.stringify(actual)})))`;
  const stdout = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['-e', script], { maxBuffer: 1 << 24 }, (err, out) =>
      err ? reject(err) : resolve(out),
    ),
  );
  return JSON.parse(stdout);
}
