// `inspect` reads back what `build` wrote: the same tree and the same chunk statistics.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, it } from 'node:test';
import { makeKitchenSink, makeWideDir } from '../lib/fixtures';
import { build, cleanup, tempDir } from '../lib/image';
import { runCli } from '../lib/harness';

const made: string[] = [];
after(() => cleanup(...made));

it('reports the counts and chunk statistics the builder produced', () => {
  const src = tempDir('inspect');
  made.push(src);
  makeKitchenSink(src);
  makeWideDir(src, 500);
  const r = build(src);
  made.push(r.outDir);
  const out = runCli(['inspect', '--json', '--tree', r.bootstrapPath]);
  assert.equal(out.status, 0, out.stderr);
  const report = JSON.parse(out.stdout);
  assert.equal(report.inodes.file, r.counts.file);
  assert.equal(report.inodes.dir, r.counts.dir);
  assert.equal(report.inodes.symlink, r.counts.symlink);
  assert.equal(report.inodes.fifo, 1);
  assert.equal(report.inodes.socket, 1);
  assert.equal(report.chunks.referenced, r.chunking.dataChunks);
  assert.equal(report.chunks.unique, r.chunking.storedChunks);
  assert.equal(report.chunks.holes, r.chunking.holeChunks);
  assert.deepEqual(report.devices, [r.blob!.id]);
  const paths = report.tree.map((t: { path: string }) => t.path);
  assert.ok(
    paths.includes('/dir/sub/hardlink-to-odd') && paths.includes('/odd-size'),
    'hard links appear under each name',
  );
  assert.ok(paths.includes('/wide/entry-0-'));
  const human = runCli(['inspect', r.bootstrapPath]);
  assert.match(human.stdout, /dedup ratio/);
  const bad = runCli(['inspect', path.join(src, 'small.txt')]);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /not an EROFS image|too short/);
});
