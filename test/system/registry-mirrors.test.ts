// Pulling through mirrors, against real registries (Debian's docker-registry on 127.0.0.1): an image
// pushed only to the upstream; a mirror without it, a mirror holding a copy, each behind a proxy that
// records requests and injects faults. Whatever a mirror does, what comes back is the right bytes or
// an error naming the endpoint.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { loadBlobIndex, type RangeReader } from '../../src/blob/blob-index';
import { convertImage } from '../../src/convert/convert';
import { Annotation, LazyMediaType } from '../../src/convert/lazy-image';
import { HostClient } from '../../src/oci/host-client';
import { hostEndpoints, type MirrorConfig, type RegistriesConfig } from '../../src/oci/hosts';
import { readAll } from '../../src/oci/image-io';
import { closeRegistryClients, openSource, openTarget } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, type Descriptor, type ImageManifest } from '../../src/oci/types';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { rejectsWith } from '../lib/assertions';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { cleanup, tempDir } from '../lib/image';
import { captureLogs, type LogCapture } from '../lib/log-capture';
import { freePort, startRegistry, type RegistryServer } from '../lib/registry-server';
import { copyImage, pushSmallImage, smallImage } from '../lib/small-image';
import { runCliAsync } from '../lib/harness';
import { fetchChunkBytes } from '../lib/fake-blob';

function quoted(s: string): RegExp {
  return new RegExp(JSON.stringify(s).replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
}

/** The CLI in a child process, spawned asynchronously: the fault proxies live in this process. */
const cliAsync = (args: string[]) => runCliAsync(args, { env: { EROFS_ONDEMAND_LOG_LEVEL: 'info' } });

describe('pulling through registry mirrors', { timeout: 300_000 }, () => {
  const img = smallImage();
  const layerDigest = (JSON.parse(img.manifest.toString()) as ImageManifest).layers[0].digest;
  let work: string;
  let upstreamRegistry: RegistryServer;
  let mirrorRegistry: RegistryServer;
  let emptyRegistry: RegistryServer;
  /** In front of the upstream (which has the image): its address is the registry host of the references. */
  let up: FaultProxy;
  /** In front of the mirror holding a copy. */
  let full: FaultProxy;
  /** In front of the mirror holding nothing. */
  let bare: FaultProxy;
  /** A registry host where nothing listens: connections are refused. */
  let dead: string;
  let lazyBlob: Descriptor;
  let logs: LogCapture;
  const clients: HostClient[] = [];

  const client = (host: string, config: RegistriesConfig) => {
    const c = new HostClient(host, hostEndpoints(host, config), {
      retryBaseMs: 20,
      timeoutMs: 10_000,
      credentials: null,
    });
    clients.push(c);
    return c;
  };
  const mirrored = (host: string, ...mirrors: MirrorConfig[]) => client(host, { hosts: { [host]: { mirrors } } });
  const ns = (host: string) => `ns=${encodeURIComponent(host)}`;
  const warnings = () => logs.records.filter((r) => r.level === 'warn');
  const servedBy = () =>
    logs.records.filter((r) => /^registry endpoint serve/.test(String(r.message))).map((r) => r.endpoint);

  before(async () => {
    work = tempDir('mirrors');
    [upstreamRegistry, mirrorRegistry, emptyRegistry] = await Promise.all([
      startRegistry(),
      startRegistry(),
      startRegistry(),
    ]);
    [up, full, bare] = await Promise.all([
      startFaultProxy(upstreamRegistry.host),
      startFaultProxy(mirrorRegistry.host),
      startFaultProxy(emptyRegistry.host),
    ]);
    dead = `127.0.0.1:${await freePort()}`;
    const a = new RegistryClient(upstreamRegistry.host, { plainHttp: true, credentials: null });
    const c = new RegistryClient(mirrorRegistry.host, { plainHttp: true, credentials: null });
    try {
      await pushSmallImage(a, 'app', 'v1', img);
      // The lazy image, converted in the upstream at a small chunk size (many chunks), then copied to the mirror.
      const src = await openSource(`${upstreamRegistry.host}/app:v1`);
      await convertImage(src, await openTarget(`${upstreamRegistry.host}/lazy/app:v1`, {}, src), {
        chunkBits: 16,
        platform: hostPlatform(),
      });
      await closeRegistryClients();
      await copyImage(a, c, 'app', 'v1');
      await copyImage(a, c, 'lazy/app', 'v1');
      const lazy = JSON.parse((await a.getManifest('lazy/app', 'v1')).raw.toString()) as ImageManifest;
      assert.equal(lazy.layers[0].mediaType, LazyMediaType.bootstrap);
      lazyBlob = lazy.layers[1];
    } finally {
      await a.close();
      await c.close();
    }
  });
  after(async () => {
    logs?.stop();
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([up, full, bare].map((p) => p?.stop()));
    await Promise.all([upstreamRegistry, mirrorRegistry, emptyRegistry].map((r) => r?.stop()));
    cleanup(work);
  });
  beforeEach(() => {
    for (const p of [up, full, bare]) p.reset();
    logs?.stop();
    logs = captureLogs();
  });

  it('falls back to the upstream when the mirror does not have the image, warning each time', async () => {
    const c = mirrored(up.host, { url: bare.url });
    const resolved = await c.resolveManifest('app', 'v1', hostPlatform());
    assert.equal(resolved.digest, img.digest);
    assert.deepEqual(await readAll(await c.getBlob('app', layerDigest, img.layer.length)), img.layer);
    assert.deepEqual(
      bare.requests.map((r) => [r.method, r.path, r.status]),
      [
        ['GET', `/v2/app/manifests/v1?${ns(up.host)}`, 404],
        ['GET', `/v2/app/blobs/${layerDigest}?${ns(up.host)}`, 404],
      ],
      'the mirror is asked first, at /v2/<repository>, told the upstream as ns',
    );
    assert.deepEqual(
      up.requests.map((r) => [r.method, r.path, r.status]),
      [
        ['GET', '/v2/app/manifests/v1', 200],
        ['GET', `/v2/app/blobs/${layerDigest}`, 200],
      ],
    );
    assert.equal(warnings().length, 2);
    for (const w of warnings()) {
      assert.equal(w.message, 'registry endpoint failed; trying the next');
      assert.equal(w.endpoint, `${bare.url}/v2 (mirror)`);
      assert.equal(w.next, `http://${up.host}/v2`);
      assert.equal(w.registry, up.host);
      assert.match(String(w.error), /unknown \(404\)/);
    }
    assert.deepEqual(servedBy(), [`http://${up.host}/v2`, `http://${up.host}/v2`]);
  });

  it('a mirror that has the image serves it; the upstream, refusing connections, is never needed', async () => {
    const c = mirrored(dead, { url: full.url });
    const resolved = await c.resolveManifest('app', 'v1', hostPlatform());
    assert.equal(resolved.digest, img.digest);
    assert.deepEqual(await readAll(await c.getBlob('app', layerDigest, img.layer.length)), img.layer);
    assert.ok(
      full.requests.length === 2 && full.requests.every((r) => r.status === 200 && r.path.endsWith(`?${ns(dead)}`)),
      JSON.stringify(full.requests),
    );
    assert.deepEqual(warnings(), []);
    assert.deepEqual(servedBy(), [`${full.url}/v2 (mirror)`, `${full.url}/v2 (mirror)`]);
    // Without the mirror the same pull fails on the refused connection, naming the host.
    const direct = client(dead, {});
    await rejectsWith(() => direct.getManifest('app', 'v1'), /ECONNREFUSED/, quoted(dead), quoted('app'));
  });

  it('asks a pull-only mirror for digests, never to resolve a tag', async () => {
    const c = mirrored(up.host, { url: full.url, capabilities: ['pull'] });
    assert.equal((await c.resolveManifest('app', 'v1', hostPlatform())).digest, img.digest);
    assert.deepEqual((await c.getManifest('app', img.digest)).raw, img.manifest);
    assert.deepEqual(await readAll(await c.getBlob('app', layerDigest)), img.layer);
    assert.deepEqual(
      up.requests.map((r) => r.path),
      ['/v2/app/manifests/v1'],
    );
    assert.deepEqual(
      full.requests.map((r) => r.path.replace(/\?.*/, '')),
      [`/v2/app/manifests/${img.digest}`, `/v2/app/blobs/${layerDigest}`],
    );
    // Referrers list what refers to a digest, which changes: a pull-only mirror is not asked either.
    await c.referrers('app', img.digest);
    assert.ok(!full.requests.some((r) => /referrers|sha256-/.test(r.path)));
  });

  it('passes over a mirror answering 500 after one attempt', async () => {
    full.add({ method: 'GET', path: /^\/v2\/app\//, times: 100, fault: { kind: 'status', status: 500 } });
    const c = mirrored(up.host, { url: full.url });
    assert.equal((await c.resolveManifest('app', 'v1', hostPlatform())).digest, img.digest);
    assert.deepEqual(await readAll(await c.getBlob('app', layerDigest, img.layer.length)), img.layer);
    assert.deepEqual(
      full.requests.map((r) => r.status),
      [500, 500],
      'no retries on a mirror the upstream follows',
    );
    assert.deepEqual(
      warnings().map((w) => [w.endpoint, String(w.error).replace(/:.*/, '')]),
      [
        [`${full.url}/v2 (mirror)`, 'get manifest'],
        [`${full.url}/v2 (mirror)`, 'get blob'],
      ],
    );
    assert.match(String(warnings()[0].error), /registry answered 500/);
  });

  it("passes over a mirror that refuses authentication; a mirror gets its own credentials, never the upstream's, and they are not logged", async () => {
    const authed = await startRegistry({ auth: 'htpasswd', users: { mirroruser: 'mirror-s3cret' } });
    const proxy = await startFaultProxy(authed.host);
    const saved = process.env.DOCKER_CONFIG;
    try {
      const seed = new RegistryClient(authed.host, {
        plainHttp: true,
        credentials: { username: 'mirroruser', password: 'mirror-s3cret' },
      });
      const a = new RegistryClient(upstreamRegistry.host, { plainHttp: true, credentials: null });
      await copyImage(a, seed, 'app', 'v1');
      await Promise.all([seed.close(), a.close()]);

      const dockerConfig = (auths: Record<string, string>) => {
        const dir = fs.mkdtempSync(path.join(work, 'docker-'));
        const entries = Object.fromEntries(
          Object.entries(auths).map(([h, userPass]) => [h, { auth: Buffer.from(userPass).toString('base64') }]),
        );
        fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths: entries }));
        return dir;
      };
      const withCredentials = (host: string, config: RegistriesConfig) => {
        const c = new HostClient(host, hostEndpoints(host, config), { retryBaseMs: 20, timeoutMs: 10_000 });
        clients.push(c);
        return c;
      };

      // Credentials for the upstream only: the mirror gets none of them and refuses; the upstream serves.
      process.env.DOCKER_CONFIG = dockerConfig({ [up.host]: 'upuser:upstream-s3cret' });
      const c1 = withCredentials(up.host, { hosts: { [up.host]: { mirrors: [{ url: proxy.url }] } } });
      assert.deepEqual(await readAll(await c1.getBlob('app', layerDigest, img.layer.length)), img.layer);
      assert.ok(
        proxy.requests.length > 0 && proxy.requests.every((r) => !r.authorized),
        "nothing of the upstream's credentials reached the mirror",
      );
      assert.match(String(warnings()[0]?.error), /requires authentication \(Basic\) and there are no credentials/);
      assert.equal(up.requests.at(-1)?.status, 200);

      // Credentials for the mirror's own host: it serves.
      proxy.reset();
      up.reset();
      process.env.DOCKER_CONFIG = dockerConfig({ [proxy.host]: 'mirroruser:mirror-s3cret' });
      const c2 = withCredentials(up.host, { hosts: { [up.host]: { mirrors: [{ url: proxy.url }] } } });
      assert.deepEqual(await readAll(await c2.getBlob('app', layerDigest, img.layer.length)), img.layer);
      assert.ok(proxy.requests.some((r) => r.authorized && r.status === 200));
      assert.deepEqual(up.requests, []);
      const text = logs.text();
      assert.doesNotMatch(text, /s3cret|bWlycm9ydXNlcjptaXJyb3ItczNjcmV0|dXB1c2VyOnVwc3RyZWFtLXMzY3JldA/);
    } finally {
      if (saved === undefined) delete process.env.DOCKER_CONFIG;
      else process.env.DOCKER_CONFIG = saved;
      await proxy.stop();
      await authed.stop();
    }
  });

  it("never returns a mirror's corrupted blob: the stream fails naming the mirror, the next read and a restartable read get the upstream's bytes", async () => {
    full.add({ method: 'GET', path: /^\/v2\/app\/blobs\/sha256:/, times: 100, fault: { kind: 'corrupt' } });
    const c = mirrored(up.host, { url: full.url });
    const err = await rejectsWith(
      async () => readAll(await c.getBlob('app', layerDigest, img.layer.length)),
      new RegExp(`digest mismatch: expected ${layerDigest}, got sha256:`),
      quoted(`${full.url}/v2`),
      quoted(up.host),
    );
    assert.match(err.message, /endpoint/);
    assert.ok(
      warnings().some(
        (w) =>
          w.message === 'mirror passed over for this blob: its bytes failed' &&
          w.endpoint === `${full.url}/v2 (mirror)`,
      ),
    );
    // Asked again, the same client goes to the upstream for this blob.
    assert.deepEqual(await readAll(await c.getBlob('app', layerDigest, img.layer.length)), img.layer);
    assert.equal(up.requests.at(-1)?.status, 200);

    // A reader that can start over gets the right bytes in one call.
    full.reset();
    up.reset();
    full.add({ method: 'GET', path: /^\/v2\/app\/blobs\/sha256:/, times: 100, fault: { kind: 'corrupt' } });
    const fresh = mirrored(up.host, { url: full.url });
    assert.deepEqual(await fresh.readBlob('app', layerDigest, img.layer.length, readAll), img.layer);
    assert.deepEqual([full.requests.length, up.requests.length], [1, 1]);
    assert.ok(
      warnings().some((w) => w.message === 'blob from a mirror failed; reading it again from the next endpoint'),
    );

    // With no endpoint after the mirror, the error is the mirror's, clearly.
    const only = client(dead, { hosts: { [dead]: { mirrors: [{ url: full.url }], fallbackToUpstream: false } } });
    await rejectsWith(
      () => only.readBlob('app', layerDigest, img.layer.length, readAll),
      /digest mismatch/,
      quoted(`${full.url}/v2`),
    );
    await rejectsWith(
      () => only.readBlob('app', layerDigest, img.layer.length, readAll),
      /every endpoint that may serve it failed for this blob: .*\(mirror\): .*digest mismatch/,
    );
  });

  it('passes over a mirror whose manifests do not match their digest', async () => {
    full.add({ method: 'GET', path: /^\/v2\/app\/manifests\//, times: 100, fault: { kind: 'corrupt' } });
    const c = mirrored(up.host, { url: full.url });
    assert.deepEqual((await c.getManifest('app', img.digest)).raw, img.manifest);
    // By tag nothing pins the content but the mirror's own Docker-Content-Digest: it does not match either.
    assert.equal((await c.getManifest('app', 'v1')).digest, img.digest);
    assert.deepEqual(
      full.requests.map((r) => r.status),
      [200, 200],
    );
    assert.equal(warnings().length, 2);
    assert.match(String(warnings()[0].error), new RegExp(`digest mismatch: expected ${img.digest}, got sha256:`));
    assert.match(
      String(warnings()[1].error),
      /digest mismatch: registry says sha256:[0-9a-f]{64} \(Docker-Content-Digest\)/,
    );
  });

  it('leaves a mirror that could not be reached out for a while, then asks it again', async () => {
    full.add({ method: 'GET', path: /^\/v2\/app\//, fault: { kind: 'reset' } });
    const c = new HostClient(
      up.host,
      hostEndpoints(up.host, { hosts: { [up.host]: { mirrors: [{ url: full.url }] } } }),
      {
        retryBaseMs: 20,
        timeoutMs: 10_000,
        credentials: null,
        unreachablePauseMs: 500,
      },
    );
    clients.push(c);
    assert.equal((await c.getManifest('app', 'v1')).digest, img.digest);
    assert.deepEqual((await c.getManifest('app', img.digest)).raw, img.manifest);
    assert.deepEqual(
      full.requests.map((r) => r.status),
      ['reset'],
      'the second request did not wait on the mirror',
    );
    assert.equal(up.requests.length, 2);
    assert.ok(
      warnings().some(
        (w) =>
          w.message === 'mirror unreachable; not asking it again for a while' &&
          w.endpoint === `${full.url}/v2 (mirror)`,
      ),
    );
    await new Promise((r) => setTimeout(r, 600));
    assert.equal((await c.getManifest('app', 'v1')).digest, img.digest);
    assert.deepEqual(
      full.requests.map((r) => r.status),
      ['reset', 200],
      'asked again after the pause',
    );
  });

  it('builds mirror paths as configured: /v2 added below the url path, or the path as it is with overridePath', async () => {
    const c = mirrored(
      up.host,
      { url: `${full.url}/custom/root`, overridePath: true },
      { url: `${full.url}/custom/root` },
      { url: `${full.url}/v2`, overridePath: true },
    );
    assert.equal((await c.getManifest('app', 'v1')).digest, img.digest);
    assert.deepEqual(
      full.requests.map((r) => [r.path, r.status]),
      [
        [`/custom/root/app/manifests/v1?${ns(up.host)}`, 404],
        [`/custom/root/v2/app/manifests/v1?${ns(up.host)}`, 404],
        [`/v2/app/manifests/v1?${ns(up.host)}`, 200],
      ],
    );
    assert.deepEqual(up.requests, []);
  });

  describe('chunk Range GETs', () => {
    const expected = () => ({
      offset: Number(lazyBlob.annotations![Annotation.tableOffset]),
      digest: lazyBlob.annotations![Annotation.tableDigest],
    });
    const reader =
      (c: HostClient, mirrors = true): RangeReader =>
      (offset, length, verify) =>
        c.getBlobRange('lazy/app', lazyBlob.digest, offset, offset + length - 1, { verify, mirrors });
    /** The chunks of app/data.bin: the first ones of the blob, each the chunk size but the last. */
    const payloadChunks = (got: Buffer[]) => Buffer.concat(got).subarray(0, img.payload.length);

    it('go to the mirror, checked chunk by chunk, with the table checked against the manifest', async () => {
      const c = mirrored(dead, { url: full.url });
      const index = await loadBlobIndex(reader(c), lazyBlob.size, 'lazy blob', expected());
      assert.ok(index.chunks.length > 20, `${index.chunks.length} chunks`);
      const fetcher = new ChunkFetcher({ maxRequestBytes: 256 << 10, maxGap: 0 });
      const got = await fetchChunkBytes(
        fetcher,
        { digest: lazyBlob.digest, what: 'lazy blob', read: reader(c) },
        index.chunks,
      );
      assert.deepEqual(payloadChunks(got), img.payload);
      assert.equal(fetcher.stats.verifyFailures, 0);
      assert.ok(full.requests.length >= 3, 'the table and several merged chunk ranges');
      assert.ok(
        full.requests.every(
          (r) =>
            r.method === 'GET' && r.status === 206 && r.path === `/v2/lazy/app/blobs/${lazyBlob.digest}?${ns(dead)}`,
        ),
      );
      // The first range of the blob from this mirror is logged at info, the others at debug.
      assert.deepEqual(
        logs.records
          .filter((r) => r.message === 'registry endpoint serves ranges of this blob')
          .map((r) => [r.endpoint, r.digest]),
        [[`${full.url}/v2 (mirror)`, lazyBlob.digest]],
      );
    });

    it('pass over a mirror whose chunk bytes fail verification; what is returned is verified', async () => {
      const c = mirrored(up.host, { url: full.url });
      const index = await loadBlobIndex(reader(c), lazyBlob.size, 'lazy blob', expected());
      full.reset();
      full.add({ method: 'GET', path: /^\/v2\/lazy\/app\/blobs\//, times: 1000, fault: { kind: 'corrupt' } });
      up.reset();
      const fetcher = new ChunkFetcher({ maxRequestBytes: 256 << 10, maxGap: 0, concurrency: 1 });
      const got = await fetchChunkBytes(
        fetcher,
        { digest: lazyBlob.digest, what: 'lazy blob', read: reader(c) },
        index.chunks,
      );
      assert.deepEqual(payloadChunks(got), img.payload);
      assert.ok(fetcher.stats.verifyFailures >= 1, "the mirror's bad chunk was caught");
      assert.equal(full.requests.length, 1, 'after the first bad range the mirror is not asked for this blob again');
      assert.ok(up.requests.length >= 3 && up.requests.every((r) => r.status === 206));
      assert.ok(
        warnings().some(
          (w) =>
            w.message === 'mirror passed over for this blob: its bytes failed' && /chunk at \d+/.test(String(w.error)),
        ),
      );
    });

    it('pass over a mirror whose chunk table does not match the manifest; with no other endpoint it is an error', async () => {
      full.add({ method: 'GET', path: /^\/v2\/lazy\/app\/blobs\//, times: 1000, fault: { kind: 'corrupt' } });
      const c = mirrored(up.host, { url: full.url });
      const index = await loadBlobIndex(reader(c), lazyBlob.size, 'lazy blob', expected());
      assert.equal(index.trailer.tableOffset, expected().offset);
      assert.equal(up.requests.at(-1)?.status, 206);
      const only = client(dead, { hosts: { [dead]: { mirrors: [{ url: full.url }], fallbackToUpstream: false } } });
      await assert.rejects(
        loadBlobIndex(reader(only), lazyBlob.size, 'lazy blob', expected()),
        /lazy blob: chunk table digest mismatch: expected sha256:[0-9a-f]{64}, got sha256:/,
      );
    });

    it('bytes nothing can verify (a table without a digest) come from the upstream only', async () => {
      const c = mirrored(up.host, { url: full.url });
      const index = await loadBlobIndex(reader(c, false), lazyBlob.size, 'lazy blob');
      assert.equal(index.chunks.length > 20, true);
      assert.deepEqual(full.requests, []);
      const only = client(dead, { hosts: { [dead]: { mirrors: [{ url: full.url }], fallbackToUpstream: false } } });
      await rejectsWith(
        () => loadBlobIndex(reader(only, false), lazyBlob.size, 'lazy blob'),
        /bytes that cannot be verified need the upstream/,
      );
    });
  });

  describe('the CLI with --registries-config', () => {
    const writeConfig = (config: RegistriesConfig) => {
      const file = path.join(work, `registries-${Math.random().toString(36).slice(2)}.json`);
      fs.writeFileSync(file, JSON.stringify(config));
      return file;
    };

    it('convert pulls the source through the mirror and pushes only to the upstream', async () => {
      const config = writeConfig({ hosts: { [up.host]: { mirrors: [{ url: full.url }, { url: bare.url }] } } });
      const r = await cliAsync([
        'convert',
        '--json',
        '--chunk-size',
        '64K',
        '--registries-config',
        config,
        `${up.host}/app:v1`,
        `${up.host}/lazy/viamirror:v1`,
      ]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(JSON.parse(r.stdout).target.digest, /^sha256:/);
      assert.ok(
        full.requests.some((x) => x.path.startsWith(`/v2/app/blobs/${layerDigest}`) && x.status === 200),
        'the layer came from the mirror',
      );
      assert.ok(
        full.requests.every((x) => x.method === 'GET' || x.method === 'HEAD'),
        'nothing pushed to a mirror',
      );
      assert.deepEqual(bare.requests, [], 'the second mirror was not needed');
      assert.ok(
        !up.requests.some(
          (x) => x.method === 'GET' && (x.path === '/v2/app/manifests/v1' || x.path.startsWith('/v2/app/blobs/')),
        ),
        'the upstream served no pull',
      );
      assert.ok(
        up.requests.some((x) => x.method === 'PUT' && x.path === '/v2/lazy/viamirror/manifests/v1' && x.status === 201),
        'the lazy image went to the upstream',
      );
      assert.match(r.stderr, /"message":"registry endpoint served"/);
      assert.match(r.stderr, new RegExp(`"endpoint":"${full.url}/v2 \\(mirror\\)"`));
    });

    it('convert fails clearly, naming the mirror, when the mirror alters a layer; nothing is pushed', async () => {
      full.add({
        method: 'GET',
        path: new RegExp(`^/v2/app/blobs/${layerDigest}`),
        times: 10,
        fault: { kind: 'corrupt' },
      });
      const config = writeConfig({ hosts: { [up.host]: { mirrors: [{ url: full.url }] } } });
      const r = await cliAsync([
        'convert',
        '--registries-config',
        config,
        `${up.host}/app:v1`,
        `${up.host}/lazy/altered:v1`,
      ]);
      assert.equal(r.status, 1, r.stderr);
      // The first byte is altered: gunzip fails before the digest check could; the error names the mirror all the same.
      assert.match(
        r.stderr,
        new RegExp(
          `error: image "${up.host}/app:v1", layer "${layerDigest}", endpoint "${full.url}/v2 \\(mirror\\)": gunzip: not a gzip stream \\(incorrect header check\\)`,
        ),
      );
      assert.ok(!up.requests.some((x) => x.path.startsWith('/v2/lazy/altered/manifests/')), 'no manifest pushed');
    });

    it('inspect reads the lazy image from the mirror while the upstream refuses connections', async () => {
      const config = writeConfig({ hosts: { [dead]: { mirrors: [{ url: full.url }] } } });
      const r = await cliAsync(['inspect', '--json', '--registries-config', config, `${dead}/lazy/app:v1`]);
      assert.equal(r.status, 0, r.stderr);
      const report = JSON.parse(r.stdout);
      assert.equal(report.inodes.file, 2);
      assert.ok(full.requests.every((x) => x.path.endsWith(`?${ns(dead)}`)));
    });
  });
});
