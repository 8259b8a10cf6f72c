// `convert` into an `oci:` layout: a failed conversion takes back what it added, a blob already there
// is kept only when its bytes match its digest, and a path that cannot be made fails at once.
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { sha256Digest } from '../../src/oci/digest';
import { MediaType } from '../../src/oci/types';
import { CLI } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { writeLayoutImage } from '../lib/layout-writer';
import { makeTar } from '../lib/tar-writer';

const made: string[] = [];
after(() => cleanup(...made));

/** Every file under `dir` with its bytes' digest, by relative path. */
function snapshot(dir: string): Map<string, string> {
  const files = new Map<string, string>();
  for (const f of fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort()) {
    const p = path.join(dir, f);
    files.set(f, fs.statSync(p).isFile() ? sha256Digest(fs.readFileSync(p)) : 'dir');
  }
  return files;
}

/** Where `convert` makes its temp files: empty again after every run. */
let tmp: string;

function convert(source: string, target: string): SpawnSyncReturns<string> {
  // SIGKILL: a convert that hangs may also ignore SIGTERM.
  const r = spawnSync(process.execPath, [CLI, 'convert', source, target, '-q'], {
    encoding: 'utf8',
    timeout: 30_000,
    killSignal: 'SIGKILL',
    env: { ...process.env, TMPDIR: tmp },
  });
  assert.deepEqual(fs.readdirSync(tmp), [], 'temp files are removed');
  return r;
}

describe('convert into an oci: layout', () => {
  let work: string;
  let good: string;
  let bad: string;

  before(() => {
    work = tempDir('convert-layout-target');
    made.push(work);
    tmp = path.join(work, 'tmp');
    fs.mkdirSync(tmp);
    const tar = makeTar([
      { name: 'app/', type: '5', mode: 0o755 },
      { name: 'app/data.bin', body: randomBytes(300_000) },
      { name: 'app/hello.txt', body: 'hello\n' },
    ]);
    good = writeLayoutImage(path.join(work, 'good'), [{ mediaType: MediaType.ociLayerGzip, data: gzipSync(tar) }]);
    // A layer of its own, whose blob is stored, then one whose digest is right and whose gzip stream
    // is cut short: the conversion fails after it has written to the target.
    const other = gzipSync(makeTar([{ name: 'other.bin', body: randomBytes(200_000) }]));
    const cut = gzipSync(tar).subarray(0, 100_000);
    bad = writeLayoutImage(path.join(work, 'bad'), [
      { mediaType: MediaType.ociLayerGzip, data: other },
      { mediaType: MediaType.ociLayerGzip, data: cut },
    ]);
  });

  it('a failed conversion into a new layout leaves no directory behind', () => {
    const r = convert(bad, `oci:${path.join(work, 'new', 'deeper', 'layout')}:v1`);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /truncated/);
    assert.ok(!fs.existsSync(path.join(work, 'new')), 'the directories it made are removed');
  });

  it('a failed conversion into an existing layout leaves it as it was', () => {
    const layout = path.join(work, 'existing');
    assert.equal(convert(good, `oci:${layout}:v1`).status, 0);
    const before = snapshot(layout);
    const r = convert(bad, `oci:${layout}:v2`);
    assert.equal(r.status, 1, r.stderr);
    assert.deepEqual(snapshot(layout), before);
  });

  it('a blob in the layout whose bytes do not match its digest is replaced, not skipped', () => {
    const layout = path.join(work, 'corrupted');
    assert.equal(convert(good, `oci:${layout}:v1`).status, 0);
    const blobs = path.join(layout, 'blobs', 'sha256');
    for (const f of fs.readdirSync(blobs)) {
      const data = fs.readFileSync(path.join(blobs, f));
      data[data.length >> 1] ^= 0x55; // the same size, other bytes
      fs.writeFileSync(path.join(blobs, f), data);
    }
    const r = convert(good, `oci:${layout}:v1`);
    assert.equal(r.status, 0, r.stderr);
    for (const f of fs.readdirSync(blobs))
      assert.equal(sha256Digest(fs.readFileSync(path.join(blobs, f))), `sha256:${f}`, `blob ${f} is intact again`);
  });

  it('a layout path that cannot be made fails at once, naming it', () => {
    const r = convert(good, 'oci:/proc/sys/out:v1');
    assert.equal(r.signal, null, 'it ends by itself');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /\/proc\/sys\/out/);
  });
});
