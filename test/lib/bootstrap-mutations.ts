// Seeded mutations of a bootstrap for the validator's fuzz tests: bit flips, values aimed at the
// fields the kernel follows (sizes, offsets, nids, chunk indexes, name offsets, feature bits) and
// truncation; most get their superblock checksum made right again. One seed, one mutant, on every
// run: a failing seed is a regression case as it stands.
import {
  BLOCK_SIZE,
  DataLayout,
  DEVICE_SLOT_SIZE,
  DEVICE_TABLE_SLOTOFF,
  DIRENT_SIZE,
  S_IFDIR,
  S_IFMT,
  SUPERBLOCK_OFFSET,
} from '../../src/erofs/format';
import { BootstrapReader } from '../../src/erofs/reader';
import { sealSuperblock } from '../../src/erofs/superblock';
import { validateBootstrap } from '../../src/erofs/validate';

interface Field {
  at: number;
  width: 1 | 2 | 4 | 8;
  what: string;
}

/** Deterministic 32-bit PRNG (mulberry32). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const fieldCache = new WeakMap<Buffer, Field[]>();

/** The fields worth aiming at, found by the validator's walk of the intact image. */
function fieldsOf(image: Buffer): Field[] {
  const cached = fieldCache.get(image);
  if (cached) return cached;
  const r = new BootstrapReader(image);
  const out: Field[] = [];
  const sb = SUPERBLOCK_OFFSET;
  const sbFields = [
    [12, 1, 'blkszbits'],
    [14, 2, 'root nid'],
    [16, 8, 'inode count'],
    [36, 4, 'blocks'],
    [40, 4, 'meta blkaddr'],
    [80, 4, 'incompat features'],
    [86, 2, 'device count'],
    [88, 2, 'device table slot'],
    [90, 1, 'dirblkbits'],
  ] as const;
  for (const [off, width, what] of sbFields) out.push({ at: sb + off, width, what: `superblock ${what}` });
  r.sb.devices.forEach((_, d) => {
    out.push({
      at: DEVICE_TABLE_SLOTOFF * DEVICE_SLOT_SIZE + d * DEVICE_SLOT_SIZE + 64,
      width: 4,
      what: `device ${d + 1} blocks`,
    });
  });
  validateBootstrap(image, {}, ({ inode, first }) => {
    if (!first) return;
    const at = inode.at;
    const n = `nid ${inode.nid}`;
    out.push(
      { at, width: 2, what: `${n} format` },
      { at: at + 2, width: 2, what: `${n} xattr count` },
      { at: at + 4, width: 2, what: `${n} mode` },
      { at: at + 16, width: 4, what: `${n} i_u` },
      inode.extended ? { at: at + 8, width: 8, what: `${n} size` } : { at: at + 8, width: 4, what: `${n} size` },
      inode.extended ? { at: at + 44, width: 4, what: `${n} nlink` } : { at: at + 6, width: 2, what: `${n} nlink` },
    );
    if (inode.xattrSize > 0)
      out.push(
        { at: inode.bodyStart + 12, width: 1, what: `${n} xattr name length` },
        { at: inode.bodyStart + 14, width: 2, what: `${n} xattr value size` },
      );
    if (inode.layout === DataLayout.ChunkBased) {
      const idx = r.chunkIndexesAt(inode);
      out.push(
        { at: idx + 2, width: 2, what: `${n} chunk 0 device` },
        { at: idx + 4, width: 4, what: `${n} chunk 0 blkaddr` },
      );
    } else if ((inode.mode & S_IFMT) === S_IFDIR) {
      const ext = r.extents(inode);
      const base = ext.blocksLen > 0 ? ext.blocksAt : ext.tailAt;
      const count = image.readUInt16LE(base + 8) / DIRENT_SIZE;
      for (let k = 0; k < count; k++) {
        const e = base + k * DIRENT_SIZE;
        out.push(
          { at: e, width: 8, what: `${n} dirent ${k} nid` },
          { at: e + 8, width: 2, what: `${n} dirent ${k} name offset` },
          { at: e + 10, width: 1, what: `${n} dirent ${k} type` },
        );
      }
    }
  });
  fieldCache.set(image, out);
  return out;
}

function writeField(image: Buffer, f: Field, value: bigint): void {
  const v = BigInt.asUintN(f.width * 8, value);
  if (f.width === 1) image[f.at] = Number(v);
  else if (f.width === 2) image.writeUInt16LE(Number(v), f.at);
  else if (f.width === 4) image.writeUInt32LE(Number(v), f.at);
  else image.writeBigUInt64LE(v, f.at);
}

/** Mutant number `seed` of `base` (which must be a valid bootstrap), and what was done to it. */
export function mutateBootstrap(base: Buffer, seed: number): { image: Buffer; what: string } {
  const random = prng(seed * 0x9e3779b1 + 0x19);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  let image = Buffer.from(base);
  let what: string;
  const kind = seed % 4;
  if (kind === 0) {
    const flips: number[] = [];
    for (let n = 1 + Math.floor(random() * 4); n > 0; n--) {
      const at = Math.floor(random() * image.length);
      image[at] ^= 1 << Math.floor(random() * 8);
      flips.push(at);
    }
    what = `bit flips at ${flips.join(', ')}`;
  } else if (kind === 1 || kind === 2) {
    const f = pick(fieldsOf(base));
    const lim = BigInt(image.length);
    const values = [0n, 1n, 2n, 0xffn, 0xffffn, 0xffffffffn, -1n, lim / 32n, lim / 32n - 1n, lim / 4096n];
    const value = random() < 0.8 ? pick(values) : BigInt(Math.floor(random() * 2 ** 32));
    writeField(image, f, value);
    what = `${f.what} = ${value}`;
  } else {
    const len = Math.floor(random() * image.length);
    image = Buffer.from(image.subarray(0, random() < 0.5 ? len : len - (len % BLOCK_SIZE)));
    const fixed = image.length >= BLOCK_SIZE && random() < 0.7;
    if (fixed) image.writeUInt32LE(image.length / BLOCK_SIZE, SUPERBLOCK_OFFSET + 36);
    what = `truncated to ${image.length} bytes${fixed ? ', block count made to agree' : ''}`;
  }
  if (image.length >= BLOCK_SIZE && random() < 0.9) sealSuperblock(image);
  else what += ', checksum left';
  return { image, what };
}
