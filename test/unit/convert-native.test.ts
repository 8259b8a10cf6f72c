// The convert addon (gunzip with ISA-L, streaming un-zstd, batch hashing + zstd) and the code that drives it: the blob
// writer's batches and the reuse of gunzip's output pieces. Checked against Node's zlib, node:crypto
// and @mongodb-js/zstd, the library the daemon decompresses chunks with.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { compress as zstdCompress, decompress } from '@mongodb-js/zstd';
import { ChunkDictionary } from '../../src/blob/chunk-dict';
import { CompressedBlobWriter } from '../../src/blob/compressed-blob-writer';
import { gunzip, unzstd, type ReleasingStream } from '../../src/convert/inflate-stream';
import { compressBound, convertAddon } from '../../src/native/convert-addon';
import { PENDING_CHUNK, type ChunkLocation } from '../../src/tree/node';
import { decodeChunk } from '../lib/fake-blob';

async function* pieces(data: Buffer, step: number): AsyncIterable<Buffer> {
  for (let o = 0; o < data.length; o += step) yield data.subarray(o, o + step);
}

/** Reads the whole stream, copying each piece and releasing it at once, as a fast reader would. */
async function readAll(
  compressed: Buffer,
  step = 65536,
  inflate: (source: AsyncIterable<Buffer>) => ReleasingStream = gunzip,
): Promise<{ data: Buffer; distinct: number; pieces: number }> {
  const stream = inflate(pieces(compressed, step));
  const out: Buffer[] = [];
  const seen = new Set<ArrayBufferLike>();
  let offset = 0;
  for await (const b of stream) {
    out.push(Buffer.from(b));
    seen.add(b.buffer);
    offset += b.length;
    stream.release(offset);
  }
  return { data: Buffer.concat(out), distinct: seen.size, pieces: out.length };
}

describe('gunzip (ISA-L)', () => {
  const random = randomBytes(3 << 20);
  const text = Buffer.from('lazy images '.repeat(400_000));

  it('inflates what zlib deflated, whatever the input pieces', async () => {
    const gz = gzipSync(random);
    for (const step of [1, 4093, 1 << 20]) assert.ok((await readAll(gz, step)).data.equals(random), `step ${step}`);
  });

  it('reads concatenated members as one stream, also with a member magic split between pieces', async () => {
    const gz = Buffer.concat([gzipSync(random), gzipSync(text)]);
    const expected = Buffer.concat([random, text]);
    assert.ok((await readAll(gz)).data.equals(expected));
    const boundary = gzipSync(random).length; // the second member's 0x1f ends one piece, 0x8b starts the next
    const split = gunzip(
      (async function* () {
        yield gz.subarray(0, boundary + 1);
        yield gz.subarray(boundary + 1);
      })(),
    );
    const out: Buffer[] = [];
    for await (const b of split) out.push(Buffer.from(b));
    assert.ok(Buffer.concat(out).equals(expected));
  });

  it('ignores what follows the last member, as zlib does', async () => {
    assert.ok((await readAll(Buffer.concat([gzipSync(text), Buffer.alloc(1024)]))).data.equals(text));
    assert.ok((await readAll(Buffer.concat([gzipSync(text), Buffer.from([0x1f])]), 1)).data.equals(text));
  });

  it('reuses released pieces instead of allocating new ones', async () => {
    const big = Buffer.concat(Array.from({ length: 8 }, () => text)); // 38 MB
    const { data, distinct, pieces: count } = await readAll(gzipSync(big), 1 << 20);
    assert.ok(data.equals(big));
    assert.ok(count >= 30, `${count} pieces`);
    assert.ok(distinct <= 4, `${distinct} distinct buffers for ${count} pieces`);
  });

  it('keeps pieces that are not released intact', async () => {
    const stream = gunzip(pieces(gzipSync(random), 1 << 16));
    const held: Buffer[] = [];
    for await (const b of stream) held.push(b); // never released: each must stay as it was handed out
    assert.ok(Buffer.concat(held).equals(random));
    assert.equal(new Set(held.map((b) => b.buffer)).size, held.length);
  });

  it('inflates a highly compressed stream in bounded pieces', async () => {
    const zeros = Buffer.alloc(64 << 20);
    const { data, distinct } = await readAll(gzipSync(zeros), 1 << 20);
    assert.equal(data.length, zeros.length);
    assert.ok(data.equals(zeros));
    assert.ok(distinct <= 4);
  });

  for (const [name, input, pattern] of [
    ['truncated', gzipSync(randomBytes(100_000)).subarray(0, 1000), /unexpected end of gzip data \(truncated\)/],
    ['empty', Buffer.alloc(0), /unexpected end of gzip data/],
    ['not gzip', Buffer.from('this is not gzip at all'), /incorrect header check/],
    [
      'a wrong CRC-32',
      (() => {
        const g = gzipSync(text);
        g[g.length - 6] ^= 1;
        return g;
      })(),
      /incorrect data check/,
    ],
    [
      'a wrong size',
      (() => {
        const g = gzipSync(text);
        g[g.length - 2] ^= 1;
        return g;
      })(),
      /incorrect data check/,
    ],
    [
      'corrupt data',
      (() => {
        const g = gzipSync(random);
        g[5000] ^= 0xff;
        return g;
      })(),
      /gunzip: /,
    ],
  ] as const) {
    it(`fails on ${name}`, () => assert.rejects(readAll(input), pattern));
  }
});

describe('unzstd (libzstd, streaming)', () => {
  const random = randomBytes(3 << 20);
  const text = Buffer.from('lazy images '.repeat(400_000));
  const read = (z: Buffer, step = 65536) => readAll(z, step, unzstd);
  /** A skippable frame (magic 0x184D2A50): zstd(1) passes over it. */
  const skippable = Buffer.from([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);

  it('inflates what zstd compressed, whatever the input pieces', async () => {
    const z = await zstdCompress(random, 3);
    for (const step of [1, 4093, 1 << 20]) assert.ok((await read(z, step)).data.equals(random), `step ${step}`);
  });

  it('reads concatenated and skippable frames as one stream', async () => {
    const z = Buffer.concat([await zstdCompress(random, 1), skippable, await zstdCompress(text, 1)]);
    assert.ok((await read(z)).data.equals(Buffer.concat([random, text])));
  });

  it('inflates a highly compressed stream in bounded, reused pieces', async () => {
    const zeros = Buffer.alloc(256 << 20);
    const z = await zstdCompress(zeros, 19);
    assert.ok(z.length < 64 << 10, `${z.length} bytes`);
    const { data, distinct, pieces: count } = await read(z);
    assert.ok(data.equals(zeros));
    assert.equal(count, 256);
    assert.ok(distinct <= 4, `${distinct} distinct buffers`);
  });

  it('keeps pieces that are not released intact', async () => {
    const stream = unzstd(pieces(await zstdCompress(random, 1), 1 << 16));
    const held: Buffer[] = [];
    for await (const b of stream) held.push(b);
    assert.ok(Buffer.concat(held).equals(random));
    assert.equal(new Set(held.map((b) => b.buffer)).size, held.length);
  });

  it('fails on a stream cut short, an empty one and one that is not zstd', async () => {
    const z = await zstdCompress(random, 1);
    await assert.rejects(read(z.subarray(0, z.length - 10)), /unzstd: unexpected end of zstd data \(truncated\)/);
    await assert.rejects(read(Buffer.alloc(0)), /unzstd: unexpected end of zstd data/);
    await assert.rejects(read(Buffer.from('this is not zstd at all')), /unzstd: Unknown frame descriptor/);
  });

  it('refuses a frame whose window is over the decoder limit rather than allocating it', async () => {
    // Frame header: magic, descriptor 0x00 (window descriptor follows), window descriptor of 2^41.
    const frame = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, (41 - 10) << 3, 0, 0, 0]);
    await assert.rejects(read(frame), /unzstd: Frame requires too much memory for decoding/);
  });
});

describe('compressChunks', () => {
  const addon = convertAddon();
  const chunks = [Buffer.from('x'.repeat(70_000)), randomBytes(1 << 20), Buffer.from('small'), Buffer.alloc(0)];
  const bound = chunks.reduce((n, c) => n + c.length, 0);

  it('hashes each chunk and compresses it to a frame of its own that zstd decompresses', async () => {
    const output = Buffer.alloc(compressBound(bound, chunks.length));
    const { sizes, digests } = await addon.compressChunks(
      1,
      chunks.map((c) => [c]),
      output,
      new addon.DigestSet(),
    );
    let at = 0;
    for (const [i, c] of chunks.entries()) {
      assert.ok(digests.subarray(i * 32, i * 32 + 32).equals(createHash('sha256').update(c).digest()));
      assert.ok(sizes[i] > 0);
      assert.ok((await decompress(output.subarray(at, at + sizes[i]))).equals(c), `chunk ${i}`);
      at += sizes[i];
    }
  });

  it('gives the same frames for a chunk in pieces as for the chunk whole', async () => {
    const c = Buffer.concat([randomBytes(1000), Buffer.alloc(300_000, 7), randomBytes(5000)]);
    const whole = Buffer.alloc(compressBound(c.length, 1));
    const split = Buffer.alloc(compressBound(c.length, 1));
    const a = await addon.compressChunks(3, [[c]], whole, new addon.DigestSet());
    const b = await addon.compressChunks(
      3,
      [[c.subarray(0, 1), c.subarray(1, 200_000), c.subarray(200_000)]],
      split,
      new addon.DigestSet(),
    );
    assert.equal(a.sizes[0], b.sizes[0]);
    assert.ok(whole.subarray(0, a.sizes[0]).equals(split.subarray(0, b.sizes[0])));
    assert.ok(a.digests.equals(b.digests));
  });

  it('skips compressing chunks the set knows, and still hashes them', async () => {
    const known = new addon.DigestSet();
    known.add(createHash('sha256').update(chunks[1]).digest());
    assert.ok(known.has(createHash('sha256').update(chunks[1]).digest()));
    const { sizes, digests } = await addon.compressChunks(
      1,
      chunks.map((c) => [c]),
      Buffer.alloc(compressBound(bound, chunks.length)),
      known,
    );
    assert.equal(sizes[1], 0);
    assert.ok(sizes[0] > 0 && sizes[2] > 0);
    assert.ok(digests.subarray(32, 64).equals(createHash('sha256').update(chunks[1]).digest()));
  });

  it('refuses an output below the bound and a level zstd does not have', () => {
    assert.throws(
      () => addon.compressChunks(1, [[randomBytes(1000)]], Buffer.alloc(100), new addon.DigestSet()),
      /below the bound/,
    );
    assert.throws(
      () => addon.compressChunks(99, [[Buffer.from('a')]], Buffer.alloc(1000), new addon.DigestSet()),
      /out of range/,
    );
    assert.throws(() => addon.compressChunks(1, [[Buffer.from('a')]], Buffer.alloc(1000), {} as never), /DigestSet/);
  });
});

describe('CompressedBlobWriter', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-writer-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function write(name: string, files: Buffer[][], dict = new ChunkDictionary(), device = 1) {
    const file = path.join(dir, name);
    const fd = fs.openSync(file, 'w');
    const writer = new CompressedBlobWriter(fd, device, dict, 1 << 20);
    const maps: Array<Array<ChunkLocation | null>> = [];
    let offset = 0;
    const seenPending: boolean[] = [];
    for (const chunks of files) {
      const map: Array<ChunkLocation | null> = [];
      maps.push(map);
      for (const c of chunks) {
        map.push(null);
        await writer.add([c], { chunks: map, index: map.length - 1 }, offset);
        seenPending.push(map[map.length - 1] === PENDING_CHUNK);
        offset += c.length;
      }
    }
    const blob = await writer.finish();
    fs.closeSync(fd);
    return { blob, maps, file, dict, seenPending, unsettled: writer.unsettledFrom };
  }

  it('stores each distinct chunk once, in the order added, and every map points at its bytes', async () => {
    const a = randomBytes(200_000);
    const b = Buffer.from('b'.repeat(5000));
    // Enough small files to fill several batches, with repeats inside and across batches.
    const files = Array.from({ length: 1500 }, (_, i) => [
      i % 3 === 0 ? a : i % 3 === 1 ? b : Buffer.from(`file ${i}`),
    ]);
    const { blob, maps, file, seenPending, unsettled } = await write('one.blob', files);
    assert.ok(
      seenPending.some((p) => p),
      'chunks are placed when their batch settles, not when added',
    );
    assert.equal(unsettled, Infinity);
    assert.equal(blob.chunks.length, 2 + 500);
    assert.equal(blob.chunks[0].uncompressedSize, a.length);
    const data = fs.readFileSync(file);
    assert.equal(createHash('sha256').update(data).digest('hex'), blob.id);
    for (const [i, map] of maps.entries()) {
      const loc = map[0]!;
      assert.notEqual(loc, PENDING_CHUNK);
      const entry = blob.chunks.find((c) => c.uncompressedOffset === loc.blkaddr * 4096)!;
      const bytes = await decodeChunk(
        entry,
        data.subarray(entry.compressedOffset, entry.compressedOffset + entry.compressedSize),
      );
      assert.ok(bytes.equals(files[i][0]), `file ${i}`);
    }
  });

  it('gives the same blob every time, and stores nothing that a lower layer stored', async () => {
    const files = Array.from({ length: 700 }, (_, i) => [Buffer.from(`content ${i % 350}`.repeat(50))]);
    const one = await write('a.blob', files);
    const two = await write('b.blob', files);
    assert.equal(one.blob.id, two.blob.id);
    const upper = await write('c.blob', files, one.dict, 2);
    assert.equal(upper.blob.chunks.length, 0);
    assert.deepEqual(
      upper.maps.map((m) => m[0]),
      one.maps.map((m) => m[0]),
    );
  });
});

describe('prepareHeap', () => {
  const thp = (() => {
    try {
      return /\[(\w+)\]/.exec(fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? 'never';
    } catch {
      return 'never';
    }
  })();

  // Whether the kernel then finds free 2 MiB pages depends on the machine's memory at that moment
  // (CI saw none), so what is asserted is what the addon controls: which memory is advised, and that
  // the buffers allocated next are placed in it. Nor is it asserted that the heap grows (CI once saw
  // it not grow at all): where brk cannot grow, glibc maps the arena's memory elsewhere. The huge
  // pages actually granted are reported, not asserted.

  // In a process of its own: the malloc arena is the process's.
  const addon = require.resolve('../../src/native/convert-addon');
  const script = `
  const fs = require('fs');
  const advised = () => fs.readFileSync('/proc/self/smaps', 'utf8').split(/\\n(?=[0-9a-f]+-)/).filter((m) => / hg( |$)/m.test(/VmFlags:(.*)/.exec(m)[1]));
  const kb = (maps, field) => maps.reduce((sum, m) => sum + Number(new RegExp(field + ':\\\\s+(\\\\d+)').exec(m)[1]), 0);
  if (process.argv[1] === 'prepare') require(${JSON.stringify(addon)}).convertAddon().prepareHeap();
  const ahead = advised();
  const held = []; for (let i = 0; i < 16; i++) held.push(Buffer.allocUnsafeSlow(1 << 20).fill(1));
  const filled = advised();
  process.stdout.write(JSON.stringify({
    advisedKb: kb(ahead, 'Size'),
    rssBeforeKb: kb(ahead, 'Rss'),
    rssAfterKb: kb(filled, 'Rss'),
    hugeKb: kb(filled, 'AnonHugePages'),
  }));`;
  type Heap = { advisedKb: number; rssBeforeKb: number; rssAfterKb: number; hugeKb: number };
  const run = (mode: string, env: NodeJS.ProcessEnv = process.env): Heap =>
    JSON.parse(execFileSync(process.execPath, ['-e', script, mode], { encoding: 'utf8', env }));

  const assertPrepared = (t: { diagnostic(message: string): void }, env?: NodeJS.ProcessEnv) => {
    const plain = run('plain', env);
    // Unasked, no memory of the process is advised; where THP is only on request (madvise, the
    // usual default) its buffers then get no huge pages either.
    assert.equal(plain.advisedKb, 0);
    if (thp === 'madvise') assert.equal(plain.hugeKb, 0);
    const prepared = run('prepare', env);
    // 48 MiB less at most one partial huge page at each end.
    assert.ok(prepared.advisedKb >= 44 << 10, `at least 44 MiB are advised for huge pages (${prepared.advisedKb} KiB)`);
    // The buffers may reuse pages the allocator had touched there already (CI once saw 112 KiB resident
    // before): they landed there when the advised memory then holds all 16 MiB, at most a huge page's
    // worth of it resident before.
    assert.ok(
      prepared.rssAfterKb >= 16 << 10 && prepared.rssAfterKb - prepared.rssBeforeKb >= 14 << 10,
      `the 16 MiB of buffers filled next are in the advised memory (${prepared.rssBeforeKb} -> ${prepared.rssAfterKb} KiB)`,
    );
    t.diagnostic(`huge pages granted to the 16 MiB filled: ${prepared.hugeKb} KiB`);
  };

  it(
    'advises 48 MiB ahead for huge pages and the buffers a conversion streams through land there, so they can fault in 2 MiB at a time',
    { skip: thp === 'never' && 'transparent huge pages are off on this kernel' },
    (t) => assertPrepared(t),
  );

  it(
    'does the same where brk cannot grow the heap and glibc maps the arena elsewhere',
    { skip: thp === 'never' && 'transparent huge pages are off on this kernel' },
    (t) => {
      // A page mapped just above the heap before node starts, as a library loaded first does.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'heap-blocked-'));
      t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
      fs.writeFileSync(
        path.join(dir, 'block.c'),
        `#define _GNU_SOURCE
        #include <stdint.h>
        #include <unistd.h>
        #include <sys/mman.h>
        __attribute__((constructor)) static void block_brk(void) {
          uintptr_t above = ((uintptr_t)sbrk(0) + (4 << 20)) & ~(uintptr_t)4095;
          mmap((void*)above, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        }`,
      );
      const lib = path.join(dir, 'block.so');
      execFileSync('cc', ['-shared', '-fPIC', '-o', lib, path.join(dir, 'block.c')]);
      assertPrepared(t, { ...process.env, LD_PRELOAD: lib });
    },
  );
});
