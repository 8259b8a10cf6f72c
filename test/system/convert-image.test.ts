// `erofs-ondemand convert` on real images made by debootstrap + umoci, checked against `umoci unpack`.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { LazyMediaType } from '../../src/convert/lazy-image';
import { DockerArchiveSource } from '../../src/oci/docker-archive';
import type { ImageSource } from '../../src/oci/image-io';
import { OciLayoutSource } from '../../src/oci/layout';
import { hostPlatform } from '../../src/oci/types';
import { bytesRead, until } from '../lib/assertions';
import { cleanup, tempDir } from '../lib/image';
import { layoutManifest, withLazyMount } from '../lib/lazy-image';
import { minbaseImage, UmociImage } from '../lib/test-images';
import { compareTrees } from '../lib/tree-compare';
import { CLI, runCli } from '../lib/harness';

const made: string[] = [];
after(() => cleanup(...made));

/** How many tagged manifests an OCI layout's index.json lists (0 when there is none). */
function taggedManifests(layout: string): number {
  const file = path.join(layout, 'index.json');
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')).manifests.length : 0;
}

function convert(source: string, target: string, ...args: string[]): { digest: string; json: Record<string, unknown> } {
  const r = runCli(['convert', source, target, '--json', ...args]);
  assert.equal(r.status, 0, r.stderr);
  const json = JSON.parse(r.stdout);
  return { digest: json.target.digest, json };
}

describe('convert from OCI layouts and docker archives', () => {
  let image: UmociImage;
  let reference: string;
  let work: string;

  before(() => {
    image = minbaseImage();
    work = tempDir('convert');
    made.push(work);
    reference = image.unpack(path.join(work, 'reference'));
  });

  it('converts a three-layer debootstrap image into a tree equal to umoci unpack', async () => {
    const target = `oci:${work}/lazy:v1`;
    const { json } = convert(`oci:${image.ref}`, target);
    const { manifest, blob } = layoutManifest(target);
    assert.equal(manifest.layers[0].mediaType, LazyMediaType.bootstrap);
    assert.ok(manifest.layers.slice(1).every((l) => l.mediaType === LazyMediaType.blob));
    const source = JSON.parse(fs.readFileSync(path.join(image.layout, 'index.json'), 'utf8'));
    assert.equal(manifest.annotations?.['io.erofs-ondemand.source.digest'], source.manifests[0].digest);
    const diffs = await withLazyMount(manifest, blob, work, (mnt) => {
      const out = execFileSync('chroot', [mnt, '/opt/app/run.sh'], { encoding: 'utf8' });
      assert.equal(out, 'lazy hello\n');
      return compareTrees(reference, mnt);
    });
    assert.deepEqual(diffs, []);
    // The config is the source's, unchanged: entrypoint and env survive.
    const config = JSON.parse(fs.readFileSync(blob(manifest.config.digest), 'utf8'));
    assert.deepEqual(config.config.Entrypoint, ['/opt/app/run.sh']);
    assert.ok(config.config.Env.includes('LAZY=1'));
    assert.ok(
      (json.bootstrapBytes as number) < (json.fileBytes as number) / 50,
      'the bootstrap is a small share of the image',
    );
  });

  it('gives identical digests when converting twice, and stores nothing new the second time', () => {
    const target = `oci:${work}/twice:v1`;
    const a = convert(`oci:${image.ref}`, target);
    const b = convert(`oci:${image.ref}`, target);
    assert.equal(a.digest, b.digest);
    assert.equal(b.json.uploadedBlobs, 0);
  });

  it('stores no new blob for a base layer shared with an image converted before', () => {
    const target = `oci:${work}/shared`;
    convert(`oci:${image.ref}`, `${target}:first`);
    // A second image: same layers plus one more.
    const second = new UmociImage(path.join(work, 'second-layout'), 'v2');
    execFileSync('skopeo', ['copy', '-q', `oci:${image.ref}`, `oci:${second.ref}`]);
    second.layer((r) => fs.writeFileSync(path.join(r, 'extra'), 'only in the second image'));
    const { json } = convert(`oci:${second.ref}`, `${target}:second`);
    const firstBlobs = layoutManifest(`${target}:first`)
      .manifest.layers.slice(1)
      .map((l) => l.digest);
    const secondBlobs = layoutManifest(`${target}:second`)
      .manifest.layers.slice(1)
      .map((l) => l.digest);
    assert.deepEqual(
      secondBlobs.slice(0, firstBlobs.length),
      firstBlobs,
      'the shared layers convert to the same blobs',
    );
    // Uploaded: the new layer's blob and the new bootstrap; the config changed too (umoci repack).
    assert.ok((json.uploadedBlobs as number) <= 3, `uploaded ${json.uploadedBlobs}`);
  });

  it('takes a zstd level: a higher one gives other, smaller blobs that read back as the same tree', async () => {
    const blobs = (ref: string) => layoutManifest(ref).manifest.layers.slice(1);
    const fast = `oci:${work}/level-default:v1`;
    const small = `oci:${work}/level-6:v1`;
    convert(`oci:${image.ref}`, fast);
    convert(`oci:${image.ref}`, small, '--compression-level', '6');
    const size = (ref: string) => blobs(ref).reduce((n, l) => n + l.size, 0);
    assert.ok(size(small) < size(fast) * 0.95, `level 6: ${size(small)} bytes of blobs, level 1: ${size(fast)}`);
    assert.notEqual(blobs(small)[0].digest, blobs(fast)[0].digest);
    const { manifest, blob } = layoutManifest(small);
    assert.deepEqual(await withLazyMount(manifest, blob, work, (mnt) => compareTrees(reference, mnt)), []);
    // The level is part of what a blob depends on: the same level gives the same digests again.
    assert.equal(convert(`oci:${image.ref}`, small, '--compression-level', '6').json.uploadedBlobs, 0);
  });

  it('refuses a zstd level it does not take, naming it, before writing anything', () => {
    for (const level of ['0', '20', 'fast', '1.5']) {
      const target = path.join(work, `bad-level-${level}`);
      const r = runCli(['convert', `oci:${image.ref}`, `oci:${target}:v1`, '--compression-level', level]);
      assert.equal(r.status, 1, level);
      assert.match(
        r.stderr,
        new RegExp(
          `compression level "${level.replace('.', '\\.')}" must be a whole number from 1 \\(fastest\\) to 19`,
        ),
      );
      assert.equal(fs.existsSync(target), false, `${level}: no target was written`);
    }
  });

  it('reads docker save archives', async () => {
    const archive = path.join(work, 'image.tar');
    execFileSync('skopeo', ['copy', '-q', `oci:${image.ref}`, `docker-archive:${archive}:example/minbase:1`]);
    const target = `oci:${work}/from-archive:v1`;
    convert(`docker-archive:${archive}`, target);
    const { manifest, blob } = layoutManifest(target);
    assert.deepEqual(await withLazyMount(manifest, blob, work, (mnt) => compareTrees(reference, mnt)), []);
  });

  it('indexes a docker archive by its headers: resolving reads it once (to hash its members), not twice', async () => {
    const archive = path.join(work, 'indexed.tar');
    execFileSync('skopeo', ['copy', '-q', `oci:${image.ref}`, `docker-archive:${archive}:example/minbase:1`]);
    const before = bytesRead();
    const { manifest } = await new DockerArchiveSource(`docker-archive:${archive}`).resolve();
    const read = bytesRead() - before;
    const size = fs.statSync(archive).size;
    assert.equal(manifest.layers.length, layoutManifest(`oci:${image.ref}`).manifest.layers.length);
    assert.ok(read < 1.2 * size, `resolving read ${read} bytes of a ${size}-byte archive`);
  });

  /** A `docker save` archive as Docker 25 and later write it: an OCI layout plus manifest.json, members named by digest. */
  function modernArchive(
    name: string,
    alter?: (blobFile: (digest: string) => string, layers: string[]) => void,
  ): string {
    const dir = path.join(work, `${name}-layout`);
    execFileSync('cp', ['-a', image.layout, dir]);
    const { manifest, blob } = layoutManifest(`oci:${dir}:latest`);
    const member = (digest: string) => `blobs/sha256/${digest.slice('sha256:'.length)}`;
    fs.writeFileSync(
      path.join(dir, 'manifest.json'),
      JSON.stringify([
        {
          Config: member(manifest.config.digest),
          RepoTags: ['example/minbase:1'],
          Layers: manifest.layers.map((l) => member(l.digest)),
        },
      ]),
    );
    alter?.(
      blob,
      manifest.layers.map((l) => l.digest),
    );
    const archive = path.join(work, `${name}.tar`);
    execFileSync('tar', ['-cf', archive, '-C', dir, 'oci-layout', 'index.json', 'manifest.json', 'blobs']);
    return archive;
  }

  /** The digest of the test image's own manifest, as its layout's index.json gives it. */
  const imageManifestDigest = (): string =>
    JSON.parse(fs.readFileSync(path.join(image.layout, 'index.json'), 'utf8')).manifests[0].digest;

  it("reads docker save archives of Docker 25 and later by the digests their members are named by, without hashing them first, and keeps the image's own manifest", async () => {
    const archive = modernArchive('modern');
    const before = bytesRead();
    const { manifest, digest } = await new DockerArchiveSource(`docker-archive:${archive}`).resolve();
    const read = bytesRead() - before;
    const size = fs.statSync(archive).size;
    const source = layoutManifest(`oci:${image.ref}`).manifest;
    assert.deepEqual(
      manifest.layers.map((l) => [l.digest, l.size, l.mediaType]),
      source.layers.map((l) => [l.digest, l.size, l.mediaType]),
    );
    assert.equal(manifest.config.digest, source.config.digest);
    // The digest a registry would show for this image: the layout's own manifest, not one made from manifest.json.
    assert.equal(digest, imageManifestDigest());
    assert.ok(read < size / 20, `resolving read ${read} bytes of a ${size}-byte archive`);
    // Converted, its layers give the same blobs as the same image read from its OCI layout.
    convert(`docker-archive:${archive}`, `oci:${work}/from-modern:v1`);
    convert(`oci:${image.ref}`, `oci:${work}/from-layout:v1`);
    const blobs = (ref: string) =>
      layoutManifest(ref)
        .manifest.layers.slice(1)
        .map((l) => l.digest);
    assert.deepEqual(blobs(`oci:${work}/from-modern:v1`), blobs(`oci:${work}/from-layout:v1`));
  });

  it('fails on a docker archive member whose bytes do not match the digest it is named by, naming the layer, and pushes no manifest', () => {
    let altered = '';
    const archive = modernArchive('lying', (blob, layers) => {
      altered = layers[1];
      const file = blob(altered);
      const data = fs.readFileSync(file);
      data[data.length >> 1] ^= 0x55;
      fs.chmodSync(file, 0o644);
      fs.writeFileSync(file, data);
    });
    const target = path.join(work, 'from-lying');
    const r = runCli(['convert', `docker-archive:${archive}`, `oci:${target}:v1`]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`layer "${altered}"`));
    assert.match(r.stderr, /digest mismatch|invalid|incorrect|truncated/);
    assert.equal(taggedManifests(target), 0);
  });

  it('fails on a Docker 25 archive whose image manifest does not match the digest index.json gives it, naming that digest', async () => {
    const manifestDigest = imageManifestDigest();
    const archive = modernArchive('lying-manifest', (blob) => {
      const file = blob(manifestDigest);
      // Still valid JSON of the same length: only the digest tells.
      const text = fs.readFileSync(file, 'utf8').replace('"schemaVersion":2', '"schemaVersion":3');
      assert.notEqual(text, fs.readFileSync(file, 'utf8'), 'the manifest was altered');
      fs.chmodSync(file, 0o644);
      fs.writeFileSync(file, text);
    });
    await assert.rejects(new DockerArchiveSource(`docker-archive:${archive}`).resolve(), (err: Error) => {
      assert.match(err.message, /digest mismatch/);
      assert.ok(err.message.includes(manifestDigest), err.message);
      return true;
    });
  });

  it('closes the file of a layer opened but not read (a conversion that stopped early)', async () => {
    const archive = path.join(work, 'unread.tar');
    execFileSync('skopeo', ['copy', '-q', `oci:${image.ref}`, `docker-archive:${archive}:example/minbase:1`]);
    const openFiles = () =>
      fs.readdirSync('/proc/self/fd').map((fd) => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
          return ''; // closed meanwhile
        }
      });
    const sources: Array<[ImageSource, (digest: string) => string]> = [
      [
        new OciLayoutSource(`oci:${image.ref}`),
        (digest) => path.join(image.layout, 'blobs', 'sha256', digest.slice('sha256:'.length)),
      ],
      [new DockerArchiveSource(`docker-archive:${archive}`), () => archive],
    ];
    for (const [source, fileOf] of sources) {
      const { manifest } = await source.resolve(hostPlatform());
      const layer = manifest.layers[0];
      const file = fs.realpathSync(fileOf(layer.digest));
      const opened = await source.openBlob(layer);
      await until(() => openFiles().includes(file), `${source.ref}: the layer's file is opened`, 5000);
      assert.ok(opened.destroy, `${source.ref}: an opened layer can be ended unread`);
      opened.destroy();
      await until(() => !openFiles().includes(file), `${source.ref}: the layer's file is closed`, 5000);
    }
  });
});

describe('convert: interruption and bad input leave no manifest behind', () => {
  let image: UmociImage;
  let work: string;

  before(() => {
    image = minbaseImage();
    work = tempDir('convert-bad');
    made.push(work);
  });

  it('Ctrl-C during conversion exits 130 and pushes no manifest', async () => {
    const target = path.join(work, 'interrupted');
    const child = spawn(process.execPath, [CLI, 'convert', `oci:${image.ref}`, `oci:${target}:v1`], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b) => (stderr += b));
    // The target layout appears once the command has installed its signal handlers and begun.
    for (let i = 0; i < 200 && !fs.existsSync(path.join(target, 'oci-layout')); i++)
      await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300));
    child.kill('SIGINT');
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    assert.equal(code, 130, stderr);
    assert.match(stderr, /interrupted: no manifest was pushed/);
    assert.equal(taggedManifests(target), 0);
  });

  it('a blob whose bytes were altered fails with the image and layer named, and pushes no manifest', () => {
    const copy = path.join(work, 'altered');
    execFileSync('cp', ['-a', image.layout, copy]);
    const { manifest, blob } = layoutManifest(`oci:${copy}:latest`);
    const layer = manifest.layers[1];
    const file = blob(layer.digest);
    const data = fs.readFileSync(file);
    data[data.length >> 1] ^= 0x55;
    fs.chmodSync(file, 0o644);
    fs.writeFileSync(file, data);
    const target = path.join(work, 'not-pushed');
    const r = runCli(['convert', `oci:${copy}:latest`, `oci:${target}:v1`]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`image "oci:${copy}:latest", layer "${layer.digest}"`));
    assert.match(r.stderr, /digest mismatch|invalid|incorrect|truncated/);
    assert.equal(taggedManifests(target), 0);
  });

  it('an unknown layer media type is refused by name', () => {
    const copy = path.join(work, 'odd-type');
    execFileSync('cp', ['-a', image.layout, copy]);
    const index = JSON.parse(fs.readFileSync(path.join(copy, 'index.json'), 'utf8'));
    const { blob } = layoutManifest(`oci:${copy}:latest`);
    const manifest = JSON.parse(fs.readFileSync(blob(index.manifests[0].digest), 'utf8'));
    manifest.layers[2].mediaType = 'application/x-unknown-layer';
    const raw = Buffer.from(JSON.stringify(manifest));
    const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
    fs.writeFileSync(blob(digest), raw);
    index.manifests[0] = { ...index.manifests[0], digest, size: raw.length };
    fs.writeFileSync(path.join(copy, 'index.json'), JSON.stringify(index));
    const r = runCli(['convert', `oci:${copy}:latest`, `oci:${path.join(work, 'x')}:v1`]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /unsupported layer media type "application\/x-unknown-layer"/);
  });
});
