// `inspect` reads back what `build` wrote: the same tree and the same chunk statistics.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, it } from 'node:test';
import { makeKitchenSink, makeWideDir } from '../lib/fixtures';
import { build, cleanup, tempDir } from '../lib/image';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const made: string[] = [];
after(() => cleanup(...made));

it('reports the counts and chunk statistics the builder produced', () => {
  const src = tempDir('inspect');
  made.push(src);
  makeKitchenSink(src);
  makeWideDir(src, 500);
  const r = build(src);
  made.push(r.outDir);
  const out = spawnSync(process.execPath, [CLI, 'inspect', '--json', '--tree', r.bootstrapPath], { encoding: 'utf8' });
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
  assert.ok(paths.includes('/dir/sub/hardlink-to-odd') && paths.includes('/odd-size'), 'hard links appear under each name');
  assert.ok(paths.includes('/wide/entry-0-'));
  const human = spawnSync(process.execPath, [CLI, 'inspect', r.bootstrapPath], { encoding: 'utf8' });
  assert.match(human.stdout, /dedup ratio/);
  const bad = spawnSync(process.execPath, [CLI, 'inspect', path.join(src, 'small.txt')], { encoding: 'utf8' });
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /not an EROFS image|too short/);
});
