// The bootstrap validator: what the writer makes passes, and crafted bootstraps (made by the writer,
// then altered, with the superblock checksum made right again) are refused naming the inode and fault.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { inspectBootstrap } from '../../src/cli/inspect';
import { dirBlocksEqual, dirColumns, encodeDirBlocks, type DirEntry } from '../../src/erofs/dirent';
import { BLOCK_SIZE, DIRENT_SIZE, DirentType, SUPERBLOCK_OFFSET } from '../../src/erofs/format';
import { BootstrapError, BootstrapReader } from '../../src/erofs/reader';
import { sealSuperblock } from '../../src/erofs/superblock';
import { validateBootstrap, validateBootstrapInSlices, type WalkEntry } from '../../src/erofs/validate';
import { writeBootstrap } from '../../src/erofs/writer';
import { mutateBootstrap } from '../lib/bootstrap-mutations';
import { nameKey, type Directory, type Inode, type Metadata } from '../../src/tree/node';

const CHUNK_BITS = 16;
const DEVICES = [
  { id: 'a'.repeat(64), size: 64 * BLOCK_SIZE },
  { id: 'b'.repeat(64), size: 32 * BLOCK_SIZE },
];

const meta = (over: Partial<Metadata> = {}): Metadata => ({
  perm: 0o644,
  uid: 0,
  gid: 0,
  mtimeSec: 1_700_000_000n,
  mtimeNsec: 0,
  xattrs: [],
  ...over,
});

function dir(entries: Record<string, Inode>, over: Partial<Metadata> = {}): Directory {
  const d: Directory = { type: 'dir', meta: meta({ perm: 0o755, ...over }), entries: new Map() };
  for (const [name, child] of Object.entries(entries)) d.entries.set(nameKey(Buffer.from(name)), child);
  return d;
}

/** A file of `size` bytes whose chunks lie on device 1 (every third a hole) from block `at`. */
function file(size: number, at = 0, over: Partial<Metadata> = {}): Inode {
  const per = 2 ** CHUNK_BITS / BLOCK_SIZE;
  const chunks = Array.from({ length: Math.ceil(size / 2 ** CHUNK_BITS) }, (_, k) =>
    k % 3 === 2 ? null : { device: 1 + (k % 2), blkaddr: (at + k * per) % 16 },
  );
  return { type: 'file', meta: meta(over), size, chunks };
}

/** Every feature the writer uses: chunks and holes, hard links, inline and block data, xattrs, devices. */
function kitchenSink(): Directory {
  const shared = file(200_000, 0, { xattrs: [{ name: Buffer.from('user.k'), value: Buffer.from('v') }] });
  const wide: Record<string, Inode> = {};
  for (let i = 0; i < 400; i++) wide[`entry-${String(i).padStart(4, '0')}-${'x'.repeat(i % 40)}`] = file(i * 10);
  return dir({
    bin: dir({ sh: shared, 'sh-link': shared, empty: file(0) }),
    etc: dir({
      passwd: file(1234),
      motd: { type: 'symlink', meta: meta(), target: Buffer.from('../usr/share/motd') },
      long: { type: 'symlink', meta: meta({ uid: 70_000 }), target: Buffer.alloc(4095, 0x61) },
    }),
    dev: dir({
      null: { type: 'chardev', meta: meta({ mtimeSec: 5n }), major: 1, minor: 3 },
      sda: { type: 'blockdev', meta: meta(), major: 8, minor: 0 },
      fifo: { type: 'fifo', meta: meta() },
      sock: { type: 'socket', meta: meta({ gid: 100_000 }) },
    }),
    usr: dir({ wide: dir(wide), link: shared }),
    acl: dir({}, { xattrs: [{ name: Buffer.from('system.posix_acl_default'), value: Buffer.alloc(28, 2) }] }),
  });
}

function build(root: Directory = kitchenSink()): Buffer {
  return writeBootstrap(root, { chunkBits: CHUNK_BITS, devices: DEVICES }).image;
}

/** Byte offset in `image` of the directory entry `name` in the directory at `dirPath`. */
function direntAt(image: Buffer, dirPath: string, name: string): number {
  return findDirent(image, dirPath, name).at;
}

/** The entry's offset and its name's, found through the validator's walk. */
function findDirent(image: Buffer, dirPath: string, name: string): { at: number; nameAt: number } {
  const r = new BootstrapReader(image);
  let found: WalkEntry['inode'] | undefined;
  validateBootstrap(image, {}, (e) => {
    if (e.path().toString() === dirPath) found = e.inode;
  });
  assert.ok(found, dirPath);
  const ext = r.extents(found);
  const blocks = [...Array(Math.ceil(ext.blocksLen / BLOCK_SIZE)).keys()].map((b) => ext.blocksAt + b * BLOCK_SIZE);
  if (ext.tailLen > 0) blocks.push(ext.tailAt);
  for (const base of blocks) {
    const count = image.readUInt16LE(base + 8) / DIRENT_SIZE;
    for (let k = 0; k < count; k++) {
      const at = base + k * DIRENT_SIZE;
      const off = image.readUInt16LE(at + 8);
      const name0 = image.subarray(base + off, base + off + name.length);
      if (name0.toString() === name && (k + 1 === count || image.readUInt16LE(at + 20) === off + name.length))
        return { at, nameAt: base + off };
    }
  }
  throw new Error(`no entry ${name} in ${dirPath}`);
}

/** The inode at `path`, found by the validator's own walk. */
function inodeOf(image: Buffer, path: string): WalkEntry['inode'] {
  let found: WalkEntry['inode'] | undefined;
  validateBootstrap(image, {}, (e) => {
    if (e.path().toString() === path) found = e.inode;
  });
  assert.ok(found, path);
  return found;
}

function refuses(image: Buffer, pattern: RegExp, opts: Parameters<typeof validateBootstrap>[1] = {}): BootstrapError {
  let caught: unknown;
  try {
    validateBootstrap(image, opts);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof BootstrapError, `expected a BootstrapError, got ${String(caught)}`);
  assert.match(caught.message, pattern);
  return caught;
}

describe('bootstraps the writer makes', () => {
  it('pass, with every inode and entry reached once', () => {
    const { image, inodeCount } = writeBootstrap(kitchenSink(), { chunkBits: CHUNK_BITS, devices: DEVICES });
    const paths: string[] = [];
    const summary = validateBootstrap(image, { devices: DEVICES }, (e) => paths.push(e.path().toString()));
    assert.equal(summary.inodes, inodeCount);
    // 5 top directories + 3 + 3 + 4 + 2 + 400 entries below them, and the root.
    assert.equal(summary.entries, 1 + 5 + 3 + 3 + 4 + 2 + 400);
    assert.deepEqual(paths.slice(0, 4), ['/', '/acl', '/bin', '/bin/empty']);
    assert.ok(paths.includes('/usr/link') && paths.includes('/bin/sh-link'));
  });

  it('pass for random trees (property)', () => {
    const name = fc
      .uint8Array({ minLength: 1, maxLength: 255 })
      .map((b) => Buffer.from(b.map((x) => (x === 0 || x === 0x2f ? 0x61 : x))))
      .filter((b) => !b.equals(Buffer.from('.')) && !b.equals(Buffer.from('..')));
    const metaArb = fc.record({
      perm: fc.integer({ min: 0, max: 0o7777 }),
      uid: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 2 ** 32 - 1 })),
      gid: fc.constant(0),
      mtimeSec: fc.oneof(fc.constant(1n), fc.bigInt({ min: -(2n ** 40n), max: 2n ** 40n })),
      mtimeNsec: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 999_999_999 })),
      xattrs: fc
        .constantFrom(
          [],
          [{ name: Buffer.from('user.a'), value: Buffer.alloc(100, 1) }],
          [{ name: Buffer.from('security.capability'), value: Buffer.alloc(20, 3) }],
        )
        .map((x) => [...x]),
    });
    const leaf: fc.Arbitrary<Inode> = fc.oneof(
      fc
        .record({ meta: metaArb, size: fc.integer({ min: 0, max: 5 * 2 ** CHUNK_BITS }) })
        .map(({ meta: m, size }) => ({ ...file(size), meta: m })),
      fc
        .record({ meta: metaArb, target: fc.uint8Array({ minLength: 1, maxLength: 4095 }) })
        .map(({ meta: m, target }) => ({
          type: 'symlink' as const,
          meta: m,
          target: Buffer.from(target.map((x) => x || 1)),
        })),
      metaArb.map((m) => ({ type: 'fifo' as const, meta: m })),
    );
    const { node } = fc.letrec<{ node: Inode }>((tie) => ({
      node: fc.oneof(
        { depthSize: 'small', withCrossShrink: true },
        leaf,
        fc
          .record({ meta: metaArb, children: fc.array(fc.tuple(name, tie('node')), { maxLength: 12 }) })
          .map(({ meta: m, children }) => {
            const d: Directory = { type: 'dir', meta: m, entries: new Map() };
            for (const [n, c] of children) d.entries.set(nameKey(n), c);
            return d;
          }),
      ),
    }));
    const rootArb = fc
      .tuple(metaArb, fc.array(fc.tuple(name, node), { maxLength: 20 }), fc.nat({ max: 4 }))
      .map(([m, children, links]) => {
        const root: Directory = { type: 'dir', meta: m, entries: new Map() };
        for (const [n, c] of children) root.entries.set(nameKey(n), c);
        // Hard links: a file linked again under new names in the root.
        const target = [...root.entries.values()].find((c) => c.type === 'file');
        for (let i = 0; target && i < links; i++) root.entries.set(`hardlink-${i}`, target);
        return root;
      });
    fc.assert(
      fc.property(rootArb, (root) => {
        const { image, inodeCount } = writeBootstrap(root, { chunkBits: CHUNK_BITS, devices: DEVICES });
        assert.equal(validateBootstrap(image, { devices: DEVICES }).inodes, inodeCount);
      }),
      { numRuns: 150, seed: 19 },
    );
  });
});

describe('crafted bootstraps are refused, naming the inode and the fault', () => {
  it('an entry that points far past the end of the image', () => {
    const image = build();
    image.writeBigUInt64LE(BigInt(image.length) * 1000n, direntAt(image, '/', 'etc'));
    sealSuperblock(image);
    const err = refuses(image, /nid \d+, path "\/etc": inode at byte \d+ .* lies beyond the image/);
    assert.equal(err.context.path, '/etc');
  });

  it("a directory cycle: etc names the root's nid", () => {
    const image = build();
    const root = new BootstrapReader(image).sb.rootNid;
    image.writeBigUInt64LE(BigInt(root), direntAt(image, '/', 'etc'));
    sealSuperblock(image);
    refuses(image, new RegExp(`nid ${root}, path "/etc": directory reached a second time \\(first at /\\)`));
    // inspect walks through the validator: it ends with the same error instead of looping.
    assert.throws(() => inspectBootstrap(image, 'looped', true), /path "\/etc": directory reached a second time/);
  });

  it('a directory linked twice (a subdirectory reached from two parents)', () => {
    const image = build();
    const bin = inodeOf(image, '/bin');
    image.writeBigUInt64LE(BigInt(bin.nid), direntAt(image, '/usr', 'wide'));
    sealSuperblock(image);
    refuses(image, /directory (reached a second time|entry says type)|`\.\.` .*parent/);
  });

  it('names the kernel would not take', () => {
    const slash = build();
    slash[findDirent(slash, '/', 'etc').nameAt + 1] = 0x2f;
    sealSuperblock(slash);
    refuses(slash, /path "\/": file name "e\/c" contains '\/'/);

    const nul = build();
    nul[findDirent(nul, '/', 'bin').nameAt + 1] = 0;
    sealSuperblock(nul);
    refuses(nul, /file name "b\\x00n" contains a NUL byte/);

    const empty = build();
    const etc = direntAt(empty, '/', 'etc');
    empty.writeUInt16LE(empty.readUInt16LE(etc - DIRENT_SIZE + 8), etc + 8);
    sealSuperblock(empty);
    refuses(empty, /path "\/": (empty file name|entry .* ascending)/);
  });

  it('a chunk index out of range: beyond its device, or naming a device the table does not have', () => {
    for (const [field, value, pattern] of [
      [4, 10_000, /path "\/etc\/passwd": chunk 0 at block 10000 .* beyond device 1's 64 blocks/],
      [2, 7, /path "\/etc\/passwd": chunk 0 names device 7, the device table has 2/],
      [0, 1, /chunk 0 has advise bits/],
    ] as const) {
      const image = build();
      const passwd = inodeOf(image, '/etc/passwd');
      const at = new BootstrapReader(image).chunkIndexesAt(passwd);
      if (field === 4) image.writeUInt32LE(value, at + field);
      else image.writeUInt16LE(value, at + field);
      sealSuperblock(image);
      refuses(image, pattern);
    }
  });

  it('a truncated image', () => {
    const image = build();
    refuses(image.subarray(0, image.length - BLOCK_SIZE), /superblock counts \d+ blocks, the image has/);
    refuses(image.subarray(0, 3000), /not a whole number of 4096-byte blocks/);
    refuses(image.subarray(0, 1100), /too short for an EROFS superblock/);
    // Block count made to agree: what lay in the last block now lies beyond the end.
    const cut = Buffer.from(image.subarray(0, image.length - BLOCK_SIZE));
    cut.writeUInt32LE(cut.length / BLOCK_SIZE, SUPERBLOCK_OFFSET + 36);
    sealSuperblock(cut);
    refuses(cut, /nid \d+, path "[^"]+": .*beyond the image/);
  });

  it('a checksum, a feature bit, an inode count or a device list that does not match', () => {
    const image = build();
    const flipped = Buffer.from(image);
    flipped[SUPERBLOCK_OFFSET + 48] ^= 1;
    refuses(flipped, /superblock checksum does not match/);
    const feature = Buffer.from(image);
    feature.writeUInt32LE(feature.readUInt32LE(SUPERBLOCK_OFFSET + 80) | 0x10, SUPERBLOCK_OFFSET + 80);
    sealSuperblock(feature);
    refuses(feature, /incompatible features 0x1c, expected 0xc/);
    const count = Buffer.from(image);
    count.writeBigUInt64LE(3n, SUPERBLOCK_OFFSET + 16);
    sealSuperblock(count);
    refuses(count, /superblock counts 3 inodes, the tree has \d+/);
    refuses(image, /device table names 2 blobs, 1 given with the image/, { devices: DEVICES.slice(0, 1) });
    refuses(image, /device 2 is blob b+, the blob given there is c+/, {
      devices: [DEVICES[0], { id: 'c'.repeat(64) }],
    });
    refuses(image, /device 1: 64 blocks, blob a+ has 4096 bytes/, {
      devices: [{ ...DEVICES[0], size: 4096 }, DEVICES[1]],
    });
  });

  it('an nlink that does not match the entries naming the inode, and an inode inside another', () => {
    const image = build();
    const sh = inodeOf(image, '/bin/sh');
    image.writeUInt16LE(2, sh.at + 6);
    sealSuperblock(image);
    refuses(image, /nid \d+, path "\/bin\/sh": nlink 2, but 3 directory entries name the inode/);

    const inside = build();
    const motd = inodeOf(inside, '/etc/motd');
    inside.writeBigUInt64LE(BigInt(motd.nid + 1), direntAt(inside, '/etc', 'motd'));
    sealSuperblock(inside);
    refuses(inside, /path "\/etc\/motd": /);
  });
});

describe('fuzz: mutated bootstraps are refused clearly or accepted, never a crash or a hang', () => {
  it('1,200 seeded mutations', (t) => {
    const bases = [build(), build(dir({ a: dir({ b: dir({ c: file(70_000) }) }), s: file(1, 3) }))];
    let refused = 0;
    let accepted = 0;
    const slowest = { ms: 0, seed: -1 };
    for (let seed = 0; seed < 1200; seed++) {
      const { image, what } = mutateBootstrap(bases[seed % bases.length], seed);
      const started = performance.now();
      try {
        validateBootstrap(image, { devices: DEVICES });
        accepted++;
      } catch (err) {
        if (!(err instanceof BootstrapError))
          assert.fail(`seed ${seed} (${what}): not a BootstrapError: ${(err as Error).stack}`);
        assert.match(err.message, /^bootstrap "bootstrap"(, nid \d+, path "[^"]*")?: \S/, `seed ${seed}`);
        refused++;
      }
      const ms = performance.now() - started;
      if (ms > slowest.ms) Object.assign(slowest, { ms, seed });
    }
    assert.ok(refused > 600, `${refused} refused, ${accepted} accepted`);
    t.diagnostic(`${refused} refused, ${accepted} accepted, slowest ${slowest.ms} ms`);
    // A bound far above what one of these small images takes: a loop would blow through it.
    assert.ok(slowest.ms < 2000, `seed ${slowest.seed} took ${slowest.ms} ms`);
  });
});

describe('validation in slices (the daemon)', () => {
  it('gives the event loop back while it walks, and ends as the whole walk does', async () => {
    const { image, inodeCount } = writeBootstrap(kitchenSink(), { chunkBits: CHUNK_BITS, devices: DEVICES });
    // Counts the event loop's turns: one callback per turn, each queueing the next.
    let turns = 0;
    let counting = true;
    const tick = () => {
      turns++;
      if (counting) setImmediate(tick);
    };
    setImmediate(tick);
    try {
      // Slices of 0 ms: the walk yields at every look at the clock.
      const summary = await validateBootstrapInSlices(image, { devices: DEVICES }, 0);
      assert.equal(summary.inodes, inodeCount);
      assert.equal(summary.entries, validateBootstrap(image, { devices: DEVICES }).entries);
    } finally {
      counting = false;
    }
    assert.ok(turns >= 2, `the event loop turned ${turns} times during the walk`);
  });

  it('refuses what the whole walk refuses, with the same error (seeded mutations)', async () => {
    const base = build();
    for (let seed = 0; seed < 300; seed++) {
      const { image, what } = mutateBootstrap(base, seed);
      const whole = (() => {
        try {
          validateBootstrap(image, { devices: DEVICES });
          return 'accepted';
        } catch (err) {
          return (err as Error).message;
        }
      })();
      const sliced = await validateBootstrapInSlices(image, { devices: DEVICES }, 0).then(
        () => 'accepted',
        (err: Error) => err.message,
      );
      assert.equal(sliced, whole, `seed ${seed} (${what})`);
    }
  });
});

describe('dirBlocksEqual', () => {
  // Directories of 1..300 entries with names of 1..255 bytes: several blocks, full and partial.
  const dirs = fc
    .array(fc.integer({ min: 1, max: 255 }), { minLength: 1, maxLength: 300, size: 'max' })
    .map((lengths) =>
      lengths
        .map((len, i): DirEntry => ({
          name: Buffer.from(`${i.toString().padStart(4, '0')}${'n'.repeat(len)}`.slice(0, Math.max(len, 4))),
          nid: i * 3 + 7,
          type: DirentType.RegFile,
        }))
        .sort((a, b) => Buffer.compare(a.name, b.name)),
    );

  it('accepts what encodeDirBlocks writes and nothing that differs by one byte or in size', () => {
    fc.assert(
      fc.property(dirs, fc.nat(), (entries, pick) => {
        const data = encodeDirBlocks(entries);
        assert.equal(dirBlocksEqual(dirColumns(entries), data), true);
        const changed = Buffer.from(data);
        changed[pick % changed.length] ^= 0x01;
        assert.equal(dirBlocksEqual(dirColumns(entries), changed), false);
        // The padding at the end of each full block: zeros, as the writer leaves them.
        for (let end = BLOCK_SIZE; end < data.length; end += BLOCK_SIZE) {
          if (data[end - 1] !== 0) continue;
          const padded = Buffer.from(data);
          padded[end - 1] = 1;
          assert.equal(dirBlocksEqual(dirColumns(entries), padded), false);
        }
        assert.equal(dirBlocksEqual(dirColumns(entries), Buffer.concat([data, Buffer.alloc(1)])), false);
        assert.equal(dirBlocksEqual(dirColumns(entries), data.subarray(0, data.length - 1)), false);
      }),
      { numRuns: 200 },
    );
  });
});
