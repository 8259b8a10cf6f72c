// Layers -> merged bootstrap + compressed per-layer blobs, checked by mounting the result (blobs
// materialised locally) and comparing with what the layers describe.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { compress as zstdCompress } from '@mongodb-js/zstd';
import { convertLayers, type ConvertedLayers, type LayerInput } from '../../src/convert/convert-layers';
import { native } from '../../src/native';
import { CAP_NET_BIND_SERVICE, makeKitchenSink, makeOddNames, MiB, setXattr } from '../lib/fixtures';
import { cleanup, tempDir } from '../lib/image';
import { withMaterializedMount } from '../lib/lazy-image';
import { gzipLayer, memoryLayer, TAR, tarDirectory } from '../lib/layers';
import { makeTar } from '../lib/tar-writer';
import { compareTrees } from '../lib/tree-compare';

const made: string[] = [];
after(() => cleanup(...made));

function dir(name: string): string {
  const d = tempDir(name);
  made.push(d);
  return d;
}

async function convert(layers: LayerInput[], chunkBits = 20): Promise<ConvertedLayers> {
  return convertLayers(layers, dir('work'), { chunkBits, image: 'test/image:1' });
}

function withConverted<T>(c: ConvertedLayers, fn: (mnt: string) => T): Promise<T> {
  const work = dir('mount');
  return withMaterializedMount(
    c.bootstrapPath,
    c.blobs.map((b) => b.path),
    work,
    (mnt) => {
      for (const b of c.blobs)
        assert.equal(fs.statSync(path.join(work, `${path.basename(b.path)}.raw`)).size, b.uncompressedSize);
      return fn(mnt);
    },
  );
}

describe('convert layers', () => {
  it('turns one gzip layer of a real tree into an image that mounts identical to the tree', async () => {
    const src = dir('src');
    makeKitchenSink(src);
    makeOddNames(path.join(src, 'names'));
    fs.rmSync(path.join(src, 'sock')); // tar does not archive sockets
    const c = await convert([gzipLayer(tarDirectory(src))]);
    assert.equal(c.blobs.length, 1);
    assert.deepEqual(await withConverted(c, (mnt) => compareTrees(src, mnt)), []);
    assert.ok(c.layers[0].dataChunks > c.layers[0].storedChunks, 'duplicate chunks are stored once');
  });

  it('applies whiteouts and opaque directories of upper layers', async () => {
    const lower = dir('lower');
    fs.mkdirSync(path.join(lower, 'etc', 'conf.d'), { recursive: true });
    fs.mkdirSync(path.join(lower, 'opaque', 'deep'), { recursive: true });
    fs.writeFileSync(path.join(lower, 'etc', 'keep'), 'keep');
    fs.writeFileSync(path.join(lower, 'etc', 'gone'), 'gone');
    fs.writeFileSync(path.join(lower, 'etc', 'conf.d', 'a.conf'), 'a');
    fs.writeFileSync(path.join(lower, 'opaque', 'old'), 'old');
    fs.writeFileSync(path.join(lower, 'opaque', 'deep', 'older'), 'older');
    fs.writeFileSync(path.join(lower, 'replaced'), 'a file that becomes a directory');

    const upper = dir('upper');
    fs.mkdirSync(path.join(upper, 'etc'));
    fs.mkdirSync(path.join(upper, 'opaque'));
    fs.mkdirSync(path.join(upper, 'replaced'));
    fs.writeFileSync(path.join(upper, 'etc', '.wh.gone'), '');
    fs.writeFileSync(path.join(upper, 'etc', '.wh.conf.d'), '');
    fs.writeFileSync(path.join(upper, 'opaque', '.wh..wh..opq'), '');
    fs.writeFileSync(path.join(upper, 'opaque', 'new'), 'new');
    fs.writeFileSync(path.join(upper, 'replaced', 'inside'), 'inside');
    fs.writeFileSync(path.join(upper, '.wh.never-existed'), '');

    // What a runtime would show: the lower tree with the upper one applied by hand.
    const expected = dir('expected');
    execFileSync('cp', ['-a', `${lower}/.`, expected]);
    fs.rmSync(path.join(expected, 'etc', 'gone'));
    fs.rmSync(path.join(expected, 'etc', 'conf.d'), { recursive: true });
    fs.rmSync(path.join(expected, 'opaque'), { recursive: true });
    fs.rmSync(path.join(expected, 'replaced'));
    execFileSync('cp', ['-a', `${upper}/.`, expected]);
    for (const wh of ['etc/.wh.gone', 'etc/.wh.conf.d', 'opaque/.wh..wh..opq', '.wh.never-existed'])
      fs.rmSync(path.join(expected, wh));
    for (const d of ['etc', 'opaque', '']) {
      const st = fs.lstatSync(path.join(upper, d), { bigint: true });
      native.setTimes(path.join(expected, d), st.mtimeNs / 1_000_000_000n, Number(st.mtimeNs % 1_000_000_000n));
    }
    const c = await convert([gzipLayer(tarDirectory(lower)), gzipLayer(tarDirectory(upper))]);
    assert.deepEqual(await withConverted(c, (mnt) => compareTrees(expected, mnt)), []);
  });

  it('stores a chunk once across layers and gives a layer of only known chunks no blob', async () => {
    const a = dir('a');
    const content = Buffer.alloc(3 * MiB);
    for (let i = 0; i < content.length; i += 4) content.writeUInt32LE((i * 2654435761) >>> 0, i);
    fs.writeFileSync(path.join(a, 'big'), content);
    const b = dir('b');
    fs.writeFileSync(path.join(b, 'copy-of-big'), content);
    const c = await convert([gzipLayer(tarDirectory(a)), gzipLayer(tarDirectory(b))]);
    assert.equal(c.blobs.length, 1, 'the second layer adds no new chunk');
    assert.equal(c.layers[1].blob, null);
    assert.equal(c.layers[1].dataChunks, 3);
    assert.equal(c.layers[1].storedChunks, 0);
    await withConverted(c, (mnt) => assert.ok(fs.readFileSync(path.join(mnt, 'copy-of-big')).equals(content)));
  });

  it('gives the same blob digest for the same layer in another image', async () => {
    const base = dir('base');
    makeKitchenSink(base);
    fs.rmSync(path.join(base, 'sock'));
    const baseLayer = tarDirectory(base);
    const top = dir('top');
    fs.writeFileSync(path.join(top, 'app'), 'application');
    const one = await convert([gzipLayer(baseLayer)]);
    const two = await convert([gzipLayer(baseLayer), gzipLayer(tarDirectory(top))]);
    assert.equal(two.blobs[0].id, one.blobs[0].id);
    assert.ok(fs.readFileSync(two.blobs[0].path).equals(fs.readFileSync(one.blobs[0].path)));
  });

  it('reads zstd layers and GNU-format tars with long names and links', async () => {
    const src = dir('gnu');
    const deep = path.join(src, 'a'.repeat(120), 'b'.repeat(120));
    fs.mkdirSync(deep, { recursive: true });
    fs.writeFileSync(path.join(deep, `${'c'.repeat(150)}.txt`), 'long path');
    fs.symlinkSync(`${'t'.repeat(150)}/target`, path.join(src, 'long-symlink'));
    fs.linkSync(path.join(deep, `${'c'.repeat(150)}.txt`), path.join(src, 'hard-to-long'));
    const gnuTar = execFileSync('tar', ['--format=gnu', '--numeric-owner', '-C', src, '-cf', '-', '.'], {
      maxBuffer: 1 << 26,
    });
    assert.ok(gnuTar.includes('././@LongLink'), 'GNU long-name records are in the archive');
    const c = await convert([memoryLayer(await zstdCompress(gnuTar), 'application/vnd.oci.image.layer.v1.tar+zstd')]);
    // GNU format keeps whole-second mtimes only: compare everything else.
    const diffs = await withConverted(c, (mnt) => compareTrees(src, mnt));
    assert.deepEqual(
      diffs.filter((d) => !/mtimeNs/.test(d)),
      [],
    );
  });

  it('keeps binary PAX xattr values and non-UTF-8 PAX paths byte for byte', async () => {
    const tar = makeTar([
      { name: 'bin', type: '5', mode: 0o755 },
      { name: 'bin/ping', body: 'elf', mode: 0o755, pax: { 'SCHILY.xattr.security.capability': CAP_NET_BIND_SERVICE } },
      { name: 'x', body: 'y', pax: { path: Buffer.from([0x66, 0xff, 0x80]), mtime: '1700000000.987654321' } },
    ]);
    const c = await convert([memoryLayer(tar, TAR)]);
    const expected = dir('pax');
    fs.mkdirSync(path.join(expected, 'bin'));
    fs.writeFileSync(path.join(expected, 'bin', 'ping'), 'elf');
    setXattr(path.join(expected, 'bin', 'ping'), 'security.capability', CAP_NET_BIND_SERVICE);
    fs.chmodSync(path.join(expected, 'bin', 'ping'), 0o755);
    native.setTimes(path.join(expected, 'bin', 'ping'), 1_600_000_000n, 0);
    await withConverted(c, (mnt) => {
      assert.ok(fs.readFileSync(Buffer.from(`${mnt}/\x66\xff\x80`, 'latin1')).equals(Buffer.from('y')));
      const st = fs.lstatSync(Buffer.from(`${mnt}/\x66\xff\x80`, 'latin1'), { bigint: true });
      assert.equal(st.mtimeNs, 1700000000987654321n);
      assert.deepEqual(compareTrees(path.join(expected, 'bin'), path.join(mnt, 'bin'), { ignoreRootMeta: true }), []);
    });
  });
});
