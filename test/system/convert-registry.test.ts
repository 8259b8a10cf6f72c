// convert from and to a real registry (Debian's docker-registry on 127.0.0.1), checked by mounting
// what a node would pull and comparing it with `umoci unpack` of the source.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Annotation, LazyMediaType } from '../../src/convert/lazy-image';
import { RegistryClient } from '../../src/oci/registry';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { cleanup, tempDir } from '../lib/image';
import { layoutManifest, withLazyMount } from '../lib/lazy-image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { minbaseImage, UmociImage } from '../lib/test-images';
import { compareTrees } from '../lib/tree-compare';
import { runCli, runCliAsync, type ConvertJson } from '../lib/harness';

const made: string[] = [];

function cli(args: string[], env: NodeJS.ProcessEnv = {}) {
  return runCli(args, { env });
}

/** For tests whose fault proxy lives in this process: a sync spawn would block the proxy. */
function cliAsync(args: string[], env: NodeJS.ProcessEnv = {}) {
  return runCliAsync(args, { env: { EROFS_ONDEMAND_LOG_LEVEL: 'error', ...env } });
}

function convert(source: string, target: string, env: NodeJS.ProcessEnv = {}): ConvertJson {
  const r = cli(['convert', source, target, '--json'], env);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

function skopeo(...args: string[]): void {
  execFileSync('skopeo', ['copy', '-q', '--src-tls-verify=false', '--dest-tls-verify=false', ...args]);
}

describe('convert between registries', () => {
  let registry: RegistryServer;
  let image: UmociImage;
  let work: string;
  let reference: string;

  before(async () => {
    image = minbaseImage();
    work = tempDir('convert-registry');
    made.push(work);
    reference = image.unpack(path.join(work, 'reference'));
    registry = await startRegistry();
    skopeo(`oci:${image.ref}`, `docker://${registry.host}/library/minbase:1`);
  });
  after(async () => {
    await registry?.stop();
    cleanup(...made);
  });

  it('converts registry to registry; the pulled result mounts equal to umoci unpack; a referrer leads to it', async () => {
    const out = convert(`${registry.host}/library/minbase:1`, `${registry.host}/lazy/minbase:1`);
    // What a node pulls: skopeo copies the lazy image like any other.
    const pulled = `oci:${work}/pulled:1`;
    skopeo(`docker://${registry.host}/lazy/minbase:1`, pulled);
    const { manifest, blob } = layoutManifest(pulled);
    assert.equal(manifest.layers[0].mediaType, LazyMediaType.bootstrap);
    const diffs = await withLazyMount(manifest, blob, work, (mnt) => compareTrees(reference, mnt));
    assert.deepEqual(diffs, []);

    // Discovery from the original reference (distribution 2.8 has no referrers API: tag schema).
    const client = new RegistryClient(registry.host, { plainHttp: true });
    try {
      const refs = await client.referrers('library/minbase', out.source.digest, LazyMediaType.referrer);
      assert.equal(refs.length, 1);
      assert.equal(refs[0].annotations?.[Annotation.image], `${registry.host}/lazy/minbase:1@${out.target.digest}`);
    } finally {
      await client.close();
    }
  });

  it('inspect finds the lazy image from the original reference and reports its tree', () => {
    convert(`${registry.host}/library/minbase:1`, `${registry.host}/lazy/minbase:1`); // a no-op when done already
    const r = cli(['inspect', '--json', `${registry.host}/library/minbase:1`]);
    assert.equal(r.status, 0, r.stderr);
    const report = JSON.parse(r.stdout);
    assert.ok(report.inodes.file > 1000 && report.inodes.dir > 100);
    assert.equal(report.devices.length, 3);
    assert.ok(report.chunks.dedupRatio >= 1);
  });

  it('gives the same digest twice and uploads nothing the second time', () => {
    const a = convert(`${registry.host}/library/minbase:1`, `${registry.host}/lazy/twice:1`);
    const b = convert(`${registry.host}/library/minbase:1`, `${registry.host}/lazy/twice:1`);
    assert.equal(a.target.digest, b.target.digest);
    assert.equal(b.uploadedBlobs, 0);
  });

  it('pushes no new blob for a base already converted by another image', () => {
    convert(`${registry.host}/library/minbase:1`, `${registry.host}/lazy/app:base`);
    const second = new UmociImage(path.join(work, 'second'), 'v2');
    skopeo(`oci:${image.ref}`, `oci:${second.ref}`);
    second.layer((r) => fs.writeFileSync(path.join(r, 'app.txt'), 'the application layer'));
    skopeo(`oci:${second.ref}`, `docker://${registry.host}/library/app:2`);
    const out = convert(`${registry.host}/library/app:2`, `${registry.host}/lazy/app:2`);
    const base = out.blobs.slice(0, 3);
    assert.ok(
      base.every((b: { sourceLayer: string }) => b.sourceLayer),
      'base blobs came from the base layers',
    );
    // Uploaded: the app layer's blob and the bootstrap. The base blobs existed already and the new
    // config is mounted from the source repository instead of uploaded.
    assert.equal(out.uploadedBlobs, 2, JSON.stringify(out));
  });
});

describe('convert against registries that misbehave or refuse', () => {
  let registry: RegistryServer;
  let authed: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let image: UmociImage;

  before(async () => {
    image = minbaseImage();
    work = tempDir('convert-auth');
    registry = await startRegistry();
    authed = await startRegistry({ auth: 'htpasswd', users: { builder: 's3cret-pass' } });
    proxy = await startFaultProxy(registry.host);
    skopeo(`oci:${image.ref}`, `docker://${registry.host}/library/minbase:1`);
    skopeo('--dest-creds=builder:s3cret-pass', `oci:${image.ref}`, `docker://${authed.host}/library/minbase:1`);
  });
  after(async () => {
    await Promise.all([registry?.stop(), authed?.stop(), proxy?.stop()]);
    cleanup(work);
  });

  function dockerConfig(user: string, pass: string): string {
    const dir = fs.mkdtempSync(path.join(work, 'docker-'));
    const auth = Buffer.from(`${user}:${pass}`).toString('base64');
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: { [authed.host]: { auth } } }));
    return dir;
  }

  it('uses Basic credentials from the docker config', () => {
    const out = convert(`${authed.host}/library/minbase:1`, `${authed.host}/lazy/minbase:1`, {
      DOCKER_CONFIG: dockerConfig('builder', 's3cret-pass'),
    });
    assert.match(out.target.digest, /^sha256:/);
  });

  it('fails on wrong credentials without showing them, and pushes nothing', () => {
    const r = cli(['convert', `${authed.host}/library/minbase:1`, `${authed.host}/lazy/denied:1`], {
      DOCKER_CONFIG: dockerConfig('builder', 'wrong-pass'),
    });
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(authed.host.replace(/\./g, '\\.')));
    assert.match(r.stderr, /library\/minbase/);
    assert.doesNotMatch(r.stderr, /wrong-pass|YnVpbGRlcjp3cm9uZy1wYXNz/);
  });

  it('a registry answering 500 to a layer fails naming the image and layer; no manifest is pushed', async () => {
    proxy.add({
      method: 'GET',
      path: /\/v2\/library\/minbase\/blobs\//,
      times: 100,
      fault: { kind: 'status', status: 500 },
    });
    const r = await cliAsync(['convert', `${proxy.host}/library/minbase:1`, `${proxy.host}/lazy/broken:1`]);
    proxy.reset();
    assert.equal(r.status, 1);
    assert.match(r.stderr, /library\/minbase/);
    assert.match(r.stderr, /500/);
    const client = new RegistryClient(registry.host, { plainHttp: true });
    try {
      assert.equal(await client.headManifest('lazy/broken', '1'), null);
    } finally {
      await client.close();
    }
  });

  it("streams a layer's blob to the target while the layer converts, and not again once it is there", async () => {
    const cache = fs.mkdtempSync(path.join(work, 'xdg-'));
    proxy.reset();
    const first = await cliAsync(
      ['convert', '--json', `${proxy.host}/library/minbase:1`, `${proxy.host}/lazy/streamed:1`],
      { XDG_CACHE_HOME: cache },
    );
    assert.equal(first.status, 0, first.stderr);
    const out = JSON.parse(first.stdout);
    // Bytes that reached the registry before the first layer was downloaded in full were sent while
    // that layer was converting: its blob is uploaded as it is written.
    const firstLayer = proxy.requests.find((r) => r.method === 'GET' && r.path.includes(out.blobs[0].sourceLayer));
    assert.ok(firstLayer?.bytesInAtFinish !== undefined);
    const upload = proxy.requests.filter(
      (r) => r.method === 'PATCH' && r.path.startsWith('/v2/lazy/streamed/blobs/uploads/'),
    );
    assert.ok(upload.length >= 1);
    assert.ok(
      firstLayer.bytesInAtFinish >= 4 << 20,
      `${firstLayer.bytesInAtFinish} bytes uploaded before the first layer was downloaded`,
    );
    // The small layers after it were read ahead: requested before the first one was downloaded.
    const small = layoutManifest(image.ref)
      .manifest.layers.slice(1)
      .filter((l) => l.size <= 4 << 20);
    assert.ok(small.length >= 1, 'the test image ends in small layers');
    for (const l of small) {
      const get = proxy.requests.find((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${l.digest}`));
      assert.ok(
        get && get.startedAt < firstLayer.finishedAt!,
        `layer ${l.digest} was requested after the first layer was downloaded`,
      );
    }
    const client = new RegistryClient(registry.host, { plainHttp: true });
    try {
      for (const b of out.blobs) assert.equal(await client.headBlob('lazy/streamed', b.digest), b.bytes);
    } finally {
      await client.close();
    }

    proxy.reset();
    const again = await cliAsync(
      ['convert', '--json', `${proxy.host}/library/minbase:1`, `${proxy.host}/lazy/streamed:1`],
      { XDG_CACHE_HOME: cache },
    );
    assert.equal(again.status, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).target.digest, out.target.digest);
    // The memo under XDG_CACHE_HOME said which blobs the target holds: no upload session at all.
    assert.deepEqual(
      proxy.requests.filter((r) => r.method === 'POST' || r.method === 'PATCH'),
      [],
    );
  });

  it('a registry that alters blob bytes is caught by the digest check; no manifest is pushed', async () => {
    proxy.add({
      method: 'GET',
      path: /\/v2\/library\/minbase\/blobs\/sha256:/,
      times: 100,
      fault: { kind: 'corrupt' },
    });
    const r = await cliAsync(['convert', `${proxy.host}/library/minbase:1`, `${proxy.host}/lazy/corrupt:1`]);
    const seen = proxy.requests.map((q) => `${q.method} ${q.path} ${q.status}`).join('\n');
    proxy.reset();
    assert.equal(r.status, 1, `${r.stdout}\n${r.stderr}\n${seen}`);
    assert.match(r.stderr, /digest|incorrect|invalid|mismatch/i);
    const client = new RegistryClient(registry.host, { plainHttp: true });
    try {
      assert.equal(await client.headManifest('lazy/corrupt', '1'), null);
    } finally {
      await client.close();
    }
  });
});
