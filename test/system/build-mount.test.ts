// The bootstrap writer proven against erofs-utils (fsck.erofs, dump.erofs) and the running kernel
// (file-backed EROFS mounts), tree by tree.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { compareTrees } from '../lib/tree-compare';
import {
  MiB,
  makeDeep,
  makeHugeSparse,
  makeKitchenSink,
  makeManyLinks,
  makeOddNames,
  makeWideDir,
} from '../lib/fixtures';
import { build, cleanup, dump, fsck, fsckExtract, tempDir, withMount } from '../lib/image';
import { runCli } from '../lib/harness';

const made: string[] = [];
after(() => cleanup(...made));

function source(name: string): string {
  const dir = tempDir(name);
  made.push(dir);
  return dir;
}

/** Build, check with fsck.erofs, mount and compare with the source; returns the build result. */
function roundTrip(src: string, chunkBits = 20) {
  const r = build(src, chunkBits);
  made.push(r.outDir);
  const checked = fsck(r);
  assert.equal(checked.status, 0, `fsck.erofs failed:\n${checked.output}`);
  const diffs = withMount(r, (mnt) => compareTrees(src, mnt));
  assert.deepEqual(diffs, [], 'mounted tree differs from the source');
  return r;
}

describe('bootstrap round trip through fsck.erofs and the kernel', () => {
  it('keeps every file type and attribute of the kitchen-sink tree', () => {
    const src = source('sink');
    makeKitchenSink(src);
    const r = roundTrip(src);
    // Contents through erofs-utils' own reader as well as the kernel's. Not 'zeros': erofs-utils 1.5
    // extracts a file whose chunks are all holes as an empty file (the kernel reads zeros, as checked above).
    const ex = fsckExtract(r);
    made.push(path.dirname(ex.dir));
    assert.equal(ex.status, 0, ex.output);
    for (const f of ['one-chunk', 'one-chunk-plus-one', 'odd-size', 'dup-a', 'dir/dup-b', 'dir/sub/dup-c']) {
      assert.ok(
        fs.readFileSync(path.join(ex.dir, f)).equals(fs.readFileSync(path.join(src, f))),
        `${f} extracted by fsck.erofs`,
      );
    }
    const info = dump(r);
    assert.match(info, /chunked_file/);
    assert.match(info, /device_table/);
    assert.match(dump(r, '--path=/one-chunk-plus-one'), /Size: 1048577/);
  });

  it('stores identical chunks once and zero chunks not at all', () => {
    const src = source('dedup');
    makeKitchenSink(src);
    const r = roundTrip(src);
    const c = r.chunking;
    // dup-a and dir/dup-b are identical (3 chunks each) and dup-c shares its first chunk with them.
    assert.ok(
      c.dataChunks - c.storedChunks >= 4,
      `expected >= 4 deduplicated chunks, got ${c.dataChunks - c.storedChunks}`,
    );
    assert.equal(c.holeChunks, 2, 'the 2 MiB file of zeros becomes two hole chunks');
    assert.equal(r.blob!.chunks.length, c.storedChunks);
    for (const chunk of r.blob!.chunks) assert.equal(chunk.offset % 4096, 0, 'chunks are 4 KiB aligned in the blob');
    assert.equal(fs.statSync(r.blobPath!).size, r.blob!.size);
  });

  it('handles a directory with 10,000 entries', () => {
    const src = source('wide');
    makeWideDir(src, 10_000);
    const r = roundTrip(src);
    assert.equal(r.blob, null, 'empty files need no blob');
  });

  it('handles names of 255 bytes, non-UTF-8 bytes and odd characters', () => {
    const src = source('names');
    makeOddNames(path.join(src, 'n'));
    roundTrip(src);
  });

  it('handles deep nesting and many hard links', () => {
    const src = source('deep');
    makeDeep(src, 300);
    makeManyLinks(src, 2000);
    roundTrip(src);
  });

  it('handles a sparse file larger than 4 GiB without storing its holes', () => {
    const src = source('huge');
    const { pieces } = makeHugeSparse(path.join(src, 'huge'));
    fs.writeFileSync(path.join(src, 'small'), 'next to a huge file');
    const r = roundTrip(src);
    const dataBytes = pieces.reduce((n, [, d]) => n + d.length, 0);
    assert.ok(r.blob!.size < dataBytes + 8 * MiB, `blob of ${r.blob!.size} bytes should hold only the written pieces`);
    assert.match(dump(r, '--path=/huge'), /Size: 4300210179/);
  });

  it('keeps the size and bytes of files whose last chunk is a hole', () => {
    const src = source('tail-hole');
    const oneZero = Buffer.concat([randomBytes(MiB), Buffer.alloc(1)]);
    fs.writeFileSync(path.join(src, 'data-then-one-zero'), oneZero);
    fs.writeFileSync(path.join(src, 'data-then-zero-chunk'), Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB)]));
    // roundTrip compares sizes and bytes through the kernel; fsck.erofs --extract is not used here because
    // erofs-utils 1.5 writes such a file one hole short.
    const r = roundTrip(src);
    assert.equal(r.chunking.holeChunks, 2, 'each file ends in one hole chunk');
    assert.equal(r.chunking.storedChunks, 2);
    assert.match(dump(r, '--path=/data-then-one-zero'), /Size: 1048577/);
    assert.match(dump(r, '--path=/data-then-zero-chunk'), /Size: 2097152/);
  });

  it('works with the smallest and largest chunk sizes', () => {
    const src = source('chunks');
    makeKitchenSink(src);
    for (const bits of [12, 16, 26]) {
      const r = roundTrip(src, bits);
      assert.equal(r.chunkSize, 2 ** bits);
    }
  });
});

describe('determinism', () => {
  it('gives byte-identical output for the same tree built twice', () => {
    const src = source('det');
    makeKitchenSink(src);
    makeOddNames(path.join(src, 'names'));
    const a = build(src);
    const b = build(src);
    made.push(a.outDir, b.outDir);
    assert.ok(fs.readFileSync(a.bootstrapPath).equals(fs.readFileSync(b.bootstrapPath)), 'bootstraps differ');
    assert.equal(a.blob!.id, b.blob!.id);
    assert.ok(fs.readFileSync(a.blobPath!).equals(fs.readFileSync(b.blobPath!)), 'blobs differ');
  });
});

describe('the command line: build, mount-local, umount --local', () => {
  const cli = (...args: string[]) => runCli(args);

  it('mounts what build wrote and unmounts it, as an operator runs them', () => {
    const src = source('cli');
    makeKitchenSink(src);
    const out = tempDir('cli-out');
    const mnt = tempDir('cli-mnt');
    made.push(out, mnt);
    const built = cli('build', '--json', src, out);
    assert.equal(built.status, 0, built.stderr);
    const mounted = cli('mount-local', out, mnt);
    assert.equal(mounted.status, 0, mounted.stderr);
    try {
      assert.deepEqual(compareTrees(src, mnt), [], 'mounted tree differs from the source');
    } finally {
      const unmounted = cli('umount', '--local', mnt);
      assert.equal(unmounted.status, 0, unmounted.stderr);
    }
    assert.deepEqual(fs.readdirSync(mnt), [], 'still mounted after umount --local');
  });

  it('names the missing bootstrap and exits 1', () => {
    const missing = path.join(source('cli-missing'), 'nothing-here');
    const mnt = source('cli-missing-mnt');
    const r = cli('mount-local', missing, mnt);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /nothing-here\/bootstrap\.erofs/);
  });
});
