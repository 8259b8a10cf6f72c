// Random trees: every one must pass fsck.erofs and mount back identical to its source.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { it } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native';
import { compareTrees } from '../lib/tree-compare';
import { S_IFCHR, S_IFIFO } from '../../src/erofs/format';
import { validateBootstrap } from '../../src/erofs/validate';
import { build, cleanup, fsck, tempDir, withMount } from '../lib/image';

interface Meta {
  perm: number;
  uid: number;
  gid: number;
  sec: number;
  nsec: number;
  xattrs: Array<{ ns: 'user' | 'trusted' | 'security'; name: string; value: Uint8Array }>;
}

type Spec =
  | { kind: 'file'; meta: Meta; size: number; pattern: 'random' | 'zeros' | 'shared'; seed: number }
  | { kind: 'dir'; meta: Meta; children: Array<{ name: Uint8Array; node: Spec }> }
  | { kind: 'symlink'; meta: Meta; target: Uint8Array }
  | { kind: 'fifo' | 'chr'; meta: Meta; major: number; minor: number }
  | { kind: 'hardlink'; meta: Meta; to: number };

const KiB = 1024;

const metaArb: fc.Arbitrary<Meta> = fc.record({
  perm: fc.integer({ min: 0, max: 0o7777 }),
  uid: fc.oneof(fc.integer({ min: 0, max: 70 }), fc.integer({ min: 65_530, max: 200_000 })),
  gid: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 100_000 })),
  // A few common values so that some inodes share the build time and stay compact.
  sec: fc.oneof(fc.constant(1_700_000_000), fc.integer({ min: -1_000_000_000, max: 4_000_000_000 })),
  nsec: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 999_999_999 })),
  xattrs: fc.uniqueArray(
    fc.record({
      ns: fc.constantFrom('user' as const, 'trusted' as const, 'security' as const),
      name: fc.stringMatching(/^[a-z][a-z0-9._-]{0,40}$/),
      value: fc.uint8Array({ maxLength: 300 }),
    }),
    { maxLength: 3, selector: (x) => `${x.ns}.${x.name}` },
  ),
});

const nameArb = fc
  .uint8Array({ minLength: 1, maxLength: 255 })
  .map((b) => Uint8Array.from(b, (x) => (x === 0 || x === 0x2f ? 0x61 : x)))
  .filter((b) => !(b.length <= 2 && b.every((x) => x === 0x2e)));

const { tree } = fc.letrec<{ tree: Spec; node: Spec }>((tie) => ({
  tree: fc.record({
    kind: fc.constant('dir' as const),
    meta: metaArb,
    children: fc.uniqueArray(fc.record({ name: nameArb, node: tie('node') }), {
      maxLength: 8,
      selector: (c) => Buffer.from(c.name).toString('hex'),
    }),
  }),
  node: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.record({
      kind: fc.constant('file' as const),
      meta: metaArb,
      size: fc.oneof(
        fc.constant(0),
        fc.integer({ min: 1, max: 9 * KiB }),
        fc.integer({ min: 60 * KiB, max: 300 * KiB }),
      ),
      pattern: fc.constantFrom('random' as const, 'zeros' as const, 'shared' as const),
      seed: fc.integer({ min: 0, max: 3 }),
    }),
    tie('tree'),
    fc.record({
      kind: fc.constant('symlink' as const),
      meta: metaArb,
      target: fc.uint8Array({ minLength: 1, maxLength: 600 }).map((b) => Uint8Array.from(b, (x) => x || 0x62)),
    }),
    fc.record({
      kind: fc.constantFrom('fifo' as const, 'chr' as const),
      meta: metaArb,
      major: fc.integer({ min: 0, max: 4095 }),
      minor: fc.integer({ min: 0, max: 0xfffff }),
    }),
    fc.record({ kind: fc.constant('hardlink' as const), meta: metaArb, to: fc.nat() }),
  ),
}));

function content(size: number, pattern: string, seed: number): Buffer {
  if (pattern === 'zeros') return Buffer.alloc(size);
  const out = Buffer.alloc(size);
  // 'shared' content depends only on the seed, so files repeat each other's chunks.
  let block = createHash('sha256')
    .update(`${pattern}:${seed}:${pattern === 'random' ? Math.random() : ''}`)
    .digest();
  for (let off = 0; off < size; off += block.length) {
    block.copy(out, off);
    block = createHash('sha256').update(block).digest();
  }
  return out;
}

/** Writes the spec to disk; times last, deepest first, since creating entries touches directory mtimes. */
function materialize(root: string, spec: Spec & { kind: 'dir' }): void {
  const files: Buffer[] = [];
  const timed: Array<{ p: Buffer; meta: Meta; kind: Spec['kind'] }> = [];
  const apply = (p: Buffer, node: Spec) => {
    const m = node.meta;
    for (const x of m.xattrs) {
      // user.* is refused on symlinks and special files by the VFS.
      if (x.ns === 'user' && node.kind !== 'file' && node.kind !== 'dir') continue;
      native.setXattr(p, `${x.ns}.${x.name}`, Buffer.from(x.value));
    }
    fs.lchownSync(p, m.uid, m.gid);
    if (node.kind !== 'symlink') fs.chmodSync(p, m.perm);
    timed.push({ p, meta: m, kind: node.kind });
  };
  const walk = (dir: Buffer, node: Spec & { kind: 'dir' }) => {
    for (const { name, node: child } of node.children) {
      const p = Buffer.concat([dir, Buffer.from('/'), Buffer.from(name)]);
      switch (child.kind) {
        case 'file':
          fs.writeFileSync(p, content(child.size, child.pattern, child.seed));
          files.push(p);
          break;
        case 'dir':
          fs.mkdirSync(p);
          walk(p, child);
          break;
        case 'symlink':
          fs.symlinkSync(Buffer.from(child.target), p);
          break;
        case 'fifo':
          native.mknod(p, S_IFIFO | 0o644, 0, 0);
          break;
        case 'chr':
          native.mknod(p, S_IFCHR | 0o644, child.major, child.minor);
          break;
        case 'hardlink':
          if (files.length === 0) {
            fs.writeFileSync(p, 'lonely');
            files.push(p);
          } else {
            fs.linkSync(files[child.to % files.length], p);
          }
          continue; // a hard link shares its target's metadata
      }
      apply(p, child);
    }
  };
  const rootPath = Buffer.from(root);
  walk(rootPath, spec);
  apply(rootPath, spec);
  for (const { p, meta } of timed.reverse()) native.setTimes(p, BigInt(meta.sec), meta.nsec);
}

it('random trees pass fsck.erofs and mount back identical', () => {
  const runs = Number(process.env.PROPERTY_RUNS ?? 60);
  fc.assert(
    fc.property(tree, fc.constantFrom(12, 14, 20), (spec, chunkBits) => {
      const src = tempDir('prop');
      let out = '';
      try {
        materialize(src, spec as Spec & { kind: 'dir' });
        const r = build(src, chunkBits);
        out = r.outDir;
        const checked = fsck(r);
        assert.equal(checked.status, 0, checked.output);
        // What every mount checks first: the builder's bootstrap with its blob passes.
        validateBootstrap(fs.readFileSync(r.bootstrapPath), {
          devices: r.blob ? [{ id: r.blob.id, size: fs.statSync(r.blobPath!).size }] : [],
        });
        assert.deepEqual(
          withMount(r, (mnt) => compareTrees(src, mnt)),
          [],
        );
      } finally {
        cleanup(src, out);
      }
    }),
    {
      numRuns: runs,
      seed: process.env.PROPERTY_SEED ? Number(process.env.PROPERTY_SEED) : undefined,
      endOnFailure: true,
    },
  );
});
