// The registry client against a real registry (Debian's docker-registry, distribution 2.8) on
// 127.0.0.1, through a proxy that records requests and injects faults.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { after, before, beforeEach, describe, it } from 'node:test';
import { sha256Digest } from '../../src/oci/digest';
import { readAll } from '../../src/oci/image-io';
import { referrersTag } from '../../src/oci/manifests';
import { RegistryClient, type RegistryClientOptions } from '../../src/oci/registry';
import {
  MAX_MANIFEST_BYTES,
  MediaType,
  type Descriptor,
  type ImageIndex,
  type ImageManifest,
} from '../../src/oci/types';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { rejectsWith } from '../lib/assertions';

const CHUNK = 256 << 10;
const EMPTY_JSON = Buffer.from('{}');

interface Blob {
  data: Buffer;
  digest: string;
  size: number;
}

function blob(data: Buffer): Blob {
  return { data, digest: sha256Digest(data), size: data.length };
}

function source(b: Blob): () => Readable {
  // Several buffers, so that the chunker has to re-cut them.
  return () =>
    Readable.from(
      [b.data.subarray(0, 1000), b.data.subarray(1000, 70_000), b.data.subarray(70_000)].filter((x) => x.length),
    );
}

function quoted(s: string): RegExp {
  return new RegExp(JSON.stringify(s).replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
}

describe('registry client against distribution 2.8', { timeout: 180_000 }, () => {
  let reg: RegistryServer;
  let proxy: FaultProxy;
  const clients: RegistryClient[] = [];

  const client = (opts: RegistryClientOptions = {}) => {
    const c = new RegistryClient(proxy.host, {
      plainHttp: true,
      credentials: null,
      retryBaseMs: 20,
      chunkSize: CHUNK,
      timeoutMs: 10_000,
      ...opts,
    });
    clients.push(c);
    return c;
  };
  const seen = (method: string, path: RegExp) => proxy.requests.filter((r) => r.method === method && path.test(r.path));

  before(async () => {
    reg = await startRegistry();
    proxy = await startFaultProxy(reg.host);
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await proxy?.stop();
    await reg?.stop();
  });
  beforeEach(() => proxy.reset());

  /** Pushes a small image (config + one layer + manifest under `tag`) and returns its pieces. */
  async function pushImage(c: RegistryClient, repo: string, tag: string, mediaType: string = MediaType.ociManifest) {
    const config = blob(
      Buffer.from(
        JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, tag }),
      ),
    );
    const layer = blob(randomBytes(5000));
    await c.pushBlob(repo, config.digest, config.size, source(config));
    await c.pushBlob(repo, layer.digest, layer.size, source(layer));
    const docker = mediaType === MediaType.dockerManifest;
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType,
      config: {
        mediaType: docker ? MediaType.dockerConfig : MediaType.ociConfig,
        digest: config.digest,
        size: config.size,
      },
      layers: [
        {
          mediaType: docker ? MediaType.dockerLayerGzip : MediaType.ociLayerGzip,
          digest: layer.digest,
          size: layer.size,
        },
      ],
    };
    const raw = Buffer.from(JSON.stringify(manifest));
    const digest = await c.putManifest(repo, tag, raw, mediaType);
    return { config, layer, manifest, raw, digest, desc: { mediaType, digest, size: raw.length } as Descriptor };
  }

  describe('blobs', () => {
    it('pushes a small blob in one PUT, finds it again, reads it back', async () => {
      const c = client();
      const b = blob(randomBytes(10_000));
      assert.equal(await c.pushBlob('small/one', b.digest, b.size, source(b)), 'uploaded');
      assert.equal(seen('POST', /\/blobs\/uploads\/$/).length, 1);
      assert.equal(seen('PUT', /\/blobs\/uploads\/.*[?&]digest=sha256%3A/).length, 1);
      assert.equal(seen('PATCH', /./).length, 0);

      proxy.reset();
      assert.equal(await c.pushBlob('small/one', b.digest, b.size, source(b)), 'exists');
      assert.deepEqual(
        proxy.requests.map((r) => r.method),
        ['HEAD'],
        'a blob the repository has is not uploaded again',
      );
      assert.equal(await c.headBlob('small/one', b.digest), b.size);
      assert.deepEqual(await readAll(await c.getBlob('small/one', b.digest, b.size)), b.data);
      assert.deepEqual(await readAll(await c.getBlob('small/one', b.digest)), b.data);
    });

    it('pushes a blob larger than the chunk size in PATCH chunks', async () => {
      const c = client();
      const b = blob(randomBytes(3 * CHUNK + 12_345));
      assert.equal(await c.pushBlob('big/one', b.digest, b.size, source(b)), 'uploaded');
      assert.equal(seen('PATCH', /\/blobs\/uploads\//).length, 4);
      assert.equal(seen('PUT', /[?&]digest=/).length, 1);
      assert.equal(await c.headBlob('big/one', b.digest), b.size);
      assert.deepEqual(await readAll(await c.getBlob('big/one', b.digest, b.size)), b.data);
    });

    it('pushes a blob of exactly one chunk, and an empty blob, in one PUT', async () => {
      const c = client();
      for (const b of [blob(randomBytes(CHUNK)), blob(Buffer.alloc(0))]) {
        proxy.reset();
        assert.equal(await c.pushBlob('edge/sizes', b.digest, b.size, () => Readable.from([b.data])), 'uploaded');
        assert.equal(seen('PATCH', /./).length, 0);
        assert.deepEqual(await readAll(await c.getBlob('edge/sizes', b.digest, b.size)), b.data);
      }
    });

    it('refuses to commit a chunked upload whose source does not match the digest or size', async () => {
      const c = client();
      const b = blob(randomBytes(2 * CHUNK + 1));
      const other = randomBytes(b.size);
      await rejectsWith(
        () => c.pushBlob('bad/source', b.digest, b.size, () => Readable.from([other])),
        /digest mismatch: expected sha256:[0-9a-f]{64}, got sha256:/,
        /upload not committed/,
      );
      await rejectsWith(
        () => c.pushBlob('bad/source', b.digest, b.size, () => Readable.from([b.data.subarray(0, CHUNK + 5)])),
        /gave 262149 bytes, expected 524289/,
      );
      assert.equal(await c.headBlob('bad/source', b.digest), null);
    });

    it('reports a missing blob as null from HEAD and as an error naming registry, repository and digest from GET', async () => {
      const c = client();
      const d = sha256Digest(Buffer.from('nope'));
      assert.equal(await c.headBlob('missing/blob', d), null);
      await rejectsWith(
        () => c.getBlob('missing/blob', d),
        /blob unknown \(404\)/,
        quoted(proxy.host),
        quoted('missing/blob'),
        quoted(d),
      );
    });

    it('fails early when the registry offers another size than the descriptor says', async () => {
      const c = client();
      const b = blob(randomBytes(3000));
      await c.pushBlob('size/check', b.digest, b.size, source(b));
      await rejectsWith(() => c.getBlob('size/check', b.digest, 2999), /offers 3000 bytes, the descriptor says 2999/);
    });

    it('reads byte ranges (206) and says clearly when the registry ignores Range', async () => {
      const c = client();
      const b = blob(randomBytes(100_000));
      await c.pushBlob('ranges/one', b.digest, b.size, source(b));
      for (const [start, end] of [
        [0, 0],
        [0, 4095],
        [12_345, 67_890],
        [99_999, 99_999],
      ]) {
        assert.deepEqual(
          await c.getBlobRange('ranges/one', b.digest, start, end),
          b.data.subarray(start, end + 1),
          `bytes ${start}-${end}`,
        );
      }
      proxy.add({ method: 'GET', path: /\/blobs\//, fault: { kind: 'ignore-range' } });
      await rejectsWith(
        () => c.getBlobRange('ranges/one', b.digest, 10, 20),
        /registry ignored the Range request \(answered 200 with the whole blob of 100000 bytes\)/,
        quoted(b.digest),
        quoted('ranges/one'),
      );
      await rejectsWith(
        () => c.getBlobRange('ranges/one', b.digest, 100_000, 100_010),
        /range not satisfiable \(416\)/,
      );
      // Past the end the registry answers a shorter range than asked for: not what was asked.
      await rejectsWith(
        () => c.getBlobRange('ranges/one', b.digest, 99_990, 100_010),
        /Content-Range "bytes 99990-99999\/100000", not bytes 99990-100010/,
      );
      await rejectsWith(() => c.getBlobRange('ranges/one', b.digest, 20, 10), /invalid byte range/);
    });

    it('mounts a blob from another repository instead of uploading it', async () => {
      const c = client();
      const b = blob(randomBytes(2 * CHUNK + 99));
      assert.equal(await c.pushBlob('mount/src', b.digest, b.size, source(b)), 'uploaded');
      proxy.reset();
      assert.equal(await c.pushBlob('mount/dst', b.digest, b.size, source(b), { mountFrom: 'mount/src' }), 'mounted');
      const mountPosts = seen(
        'POST',
        /^\/v2\/mount\/dst\/blobs\/uploads\/\?mount=sha256%3A[0-9a-f]{64}&from=mount%2Fsrc$/,
      );
      assert.equal(mountPosts.length, 1);
      assert.equal(mountPosts[0].status, 201);
      assert.equal(seen('PATCH', /./).length + seen('PUT', /./).length, 0, 'nothing uploaded');
      assert.deepEqual(await readAll(await c.getBlob('mount/dst', b.digest, b.size)), b.data);
    });

    it('uploads when the repository to mount from lacks the blob (202 starts an upload)', async () => {
      const c = client();
      const b = blob(randomBytes(4000));
      assert.equal(
        await c.pushBlob('mount/dst2', b.digest, b.size, source(b), { mountFrom: 'mount/empty' }),
        'uploaded',
      );
      assert.equal(seen('POST', /mount=/).length, 1);
      assert.equal(seen('POST', /./).length, 1, 'the upload continues in the session the mount attempt opened');
      assert.equal(seen('PUT', /[?&]digest=/).length, 1);
      assert.equal(await c.headBlob('mount/dst2', b.digest), b.size);
    });

    it('follows relative upload Locations', async () => {
      const relative = await startRegistry({ relativeUrls: true });
      const c = new RegistryClient(relative.host, { plainHttp: true, credentials: null, chunkSize: CHUNK });
      try {
        const probe = await fetch(`${relative.url}/v2/rel/probe/blobs/uploads/`, { method: 'POST' });
        assert.match(probe.headers.get('location') ?? '', /^\/v2\//, 'the registry gives relative Locations');
        for (const b of [blob(randomBytes(1234)), blob(randomBytes(2 * CHUNK + 7))]) {
          assert.equal(await c.pushBlob('rel/blob', b.digest, b.size, source(b)), 'uploaded');
          assert.deepEqual(await readAll(await c.getBlob('rel/blob', b.digest, b.size)), b.data);
        }
      } finally {
        await c.close();
        await relative.stop();
      }
    });
  });

  describe('manifests', () => {
    it('puts and gets a manifest by tag and by digest; HEAD gives digest, type and size', async () => {
      const c = client();
      const img = await pushImage(c, 'man/one', 'v1');
      assert.equal(img.digest, sha256Digest(img.raw));
      for (const ref of ['v1', img.digest]) {
        const got = await c.getManifest('man/one', ref);
        assert.deepEqual(got.raw, img.raw);
        assert.equal(got.digest, img.digest);
        assert.equal(got.mediaType, MediaType.ociManifest);
      }
      assert.deepEqual(await c.headManifest('man/one', 'v1'), {
        mediaType: MediaType.ociManifest,
        digest: img.digest,
        size: img.raw.length,
      });
      assert.equal(await c.headManifest('man/one', 'nope'), null);
      await rejectsWith(
        () => c.getManifest('man/one', 'nope'),
        /manifest unknown \(404\)/,
        quoted(proxy.host),
        quoted('man/one'),
        quoted('nope'),
      );
    });

    it('handles Docker schema2 manifests', async () => {
      const c = client();
      const img = await pushImage(c, 'man/docker', 'v2', MediaType.dockerManifest);
      const got = await c.getManifest('man/docker', 'v2');
      assert.equal(got.mediaType, MediaType.dockerManifest);
      assert.equal(got.digest, img.digest);
    });

    it('resolves an index to the manifest for a platform', async () => {
      const c = client();
      const amd = await pushImage(c, 'man/multi', 'amd');
      const arm = await pushImage(c, 'man/multi', 'arm');
      const index: ImageIndex = {
        schemaVersion: 2,
        mediaType: MediaType.ociIndex,
        manifests: [
          { ...amd.desc, platform: { os: 'linux', architecture: 'amd64' } },
          { ...arm.desc, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
        ],
      };
      const indexDigest = await c.putManifest(
        'man/multi',
        'latest',
        Buffer.from(JSON.stringify(index)),
        MediaType.ociIndex,
      );
      assert.equal((await c.getManifest('man/multi', 'latest')).mediaType, MediaType.ociIndex);
      const onArm = await c.resolveManifest('man/multi', 'latest', { os: 'linux', architecture: 'arm64' });
      assert.equal(onArm.digest, arm.digest);
      assert.deepEqual(onArm.manifest, arm.manifest);
      const onAmd = await c.resolveManifest('man/multi', indexDigest, { os: 'linux', architecture: 'amd64' });
      assert.equal(onAmd.digest, amd.digest);
      await rejectsWith(
        () => c.resolveManifest('man/multi', 'latest', { os: 'linux', architecture: 's390x' }),
        /no manifest for platform linux\/s390x/,
        quoted('man/multi'),
      );
    });

    it('rejects manifests over the size bound without reading them whole', async () => {
      const c = client();
      const huge = Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20);
      await rejectsWith(
        () => c.putManifest('man/huge', 'v1', huge, MediaType.ociManifest),
        /exceeds the 4194304-byte bound/,
        quoted('man/huge'),
      );
      assert.equal(proxy.requests.length, 0, 'refused before sending');

      proxy.add({
        method: 'GET',
        path: /\/manifests\/big$/,
        fault: {
          kind: 'respond',
          respond: (_req, res) =>
            res
              .writeHead(200, { 'content-type': MediaType.ociManifest, 'content-length': String(huge.length) })
              .end(huge),
        },
      });
      await rejectsWith(
        () => c.getManifest('man/huge', 'big'),
        /manifest of 4194305 bytes exceeds the 4194304-byte bound/,
        quoted('man/huge'),
        quoted('big'),
      );
      // Without a Content-Length the bound applies while reading.
      proxy.add({
        method: 'GET',
        path: /\/manifests\/big$/,
        fault: {
          kind: 'respond',
          respond: (_req, res) => {
            res.writeHead(200, { 'content-type': MediaType.ociManifest });
            for (let i = 0; i < 5; i++) res.write(Buffer.alloc(1 << 20, 0x20));
            res.end();
          },
        },
      });
      await rejectsWith(() => c.getManifest('man/huge', 'big'), /manifest exceeds the 4194304-byte bound/);
    });

    it('checks manifest bytes against the digest asked for and Docker-Content-Digest', async () => {
      const c = client();
      const img = await pushImage(c, 'man/check', 'v1');
      proxy.add({ method: 'GET', path: /\/manifests\/sha256:/, fault: { kind: 'corrupt' } });
      await rejectsWith(
        () => c.getManifest('man/check', img.digest),
        new RegExp(`digest mismatch: expected ${img.digest}, got sha256:`),
        quoted('man/check'),
      );
      const lie = sha256Digest(Buffer.from('something else'));
      proxy.add({
        method: 'GET',
        path: /\/manifests\/v1$/,
        fault: {
          kind: 'respond',
          respond: (_req, res) =>
            res.writeHead(200, { 'content-type': MediaType.ociManifest, 'docker-content-digest': lie }).end(img.raw),
        },
      });
      await rejectsWith(
        () => c.getManifest('man/check', 'v1'),
        new RegExp(`registry says ${lie} \\(Docker-Content-Digest\\), content hashes to ${img.digest}`),
        quoted('v1'),
      );
    });
  });

  describe('referrers without the referrers API (tag schema)', () => {
    it('finds artifacts pushed with a subject through the sha256-<hex> index', async () => {
      const c = client();
      const repo = 'ref/app';
      const img = await pushImage(c, repo, 'v1');
      const empty = blob(EMPTY_JSON);
      await c.pushBlob(repo, empty.digest, empty.size, source(empty));
      const payload = blob(Buffer.from('{"sbom":true}'));
      await c.pushBlob(repo, payload.digest, payload.size, source(payload));

      proxy.reset();
      assert.deepEqual(await c.referrers(repo, img.digest), [], 'nothing refers to it yet');
      assert.equal(seen('GET', /\/referrers\/sha256:/)[0]?.status, 404, 'distribution 2.8 has no referrers API');
      const sbom = {
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        artifactType: 'application/vnd.example.sbom.v1',
        config: { mediaType: MediaType.ociEmpty, digest: empty.digest, size: empty.size },
        layers: [{ mediaType: 'application/vnd.example.sbom.v1+json', digest: payload.digest, size: payload.size }],
        subject: img.desc,
        annotations: { 'org.example.kind': 'sbom' },
      };
      const sbomRaw = Buffer.from(JSON.stringify(sbom));
      proxy.reset();
      const sbomDigest = await c.putManifest(repo, sha256Digest(sbomRaw), sbomRaw, MediaType.ociManifest);
      assert.equal(
        seen('PUT', new RegExp(`/manifests/${referrersTag(img.digest)}$`)).length,
        1,
        'the fallback index was written',
      );

      // An image manifest without artifactType is listed under its config's media type.
      const sig = {
        ...sbom,
        artifactType: undefined,
        config: { mediaType: 'application/vnd.example.sig.config', digest: empty.digest, size: empty.size },
        annotations: undefined,
      };
      const sigRaw = Buffer.from(JSON.stringify(sig));
      const sigDigest = await c.putManifest(repo, 'sig', sigRaw, MediaType.ociManifest);
      // Pushing the same artifact again does not list it twice.
      await c.putManifest(repo, sbomDigest, sbomRaw, MediaType.ociManifest);

      proxy.reset();
      const all = await c.referrers(repo, img.digest);
      assert.deepEqual(seen('GET', /\/referrers\/sha256:/), [], 'the client remembers the API is missing');
      assert.deepEqual(all, [
        {
          mediaType: MediaType.ociManifest,
          digest: sbomDigest,
          size: sbomRaw.length,
          artifactType: 'application/vnd.example.sbom.v1',
          annotations: { 'org.example.kind': 'sbom' },
        },
        {
          mediaType: MediaType.ociManifest,
          digest: sigDigest,
          size: sigRaw.length,
          artifactType: 'application/vnd.example.sig.config',
        },
      ]);
      assert.deepEqual(
        (await c.referrers(repo, img.digest, 'application/vnd.example.sig.config')).map((d) => d.digest),
        [sigDigest],
      );
      assert.deepEqual(await c.referrers(repo, img.digest, 'application/vnd.example.none'), []);
      const tagged = await c.getManifest(repo, referrersTag(img.digest));
      assert.equal(tagged.mediaType, MediaType.ociIndex);
    });
  });

  describe('retries and faults', () => {
    it('waits out 429 with Retry-After (seconds) and tries again', async () => {
      const c = client();
      const img = await pushImage(c, 'retry/a', 'v1');
      proxy.reset();
      proxy.add({
        method: 'GET',
        path: /\/manifests\/v1$/,
        fault: { kind: 'status', status: 429, headers: { 'retry-after': '1' } },
      });
      const t0 = Date.now();
      assert.equal((await c.getManifest('retry/a', 'v1')).digest, img.digest);
      assert.ok(Date.now() - t0 >= 950, `waited ${Date.now() - t0} ms`);
      assert.deepEqual(
        seen('GET', /\/manifests\/v1$/).map((r) => r.status),
        [429, 200],
      );
    });

    it('honours Retry-After as an HTTP date, capped', async () => {
      const c = client({ maxRetryDelayMs: 300 });
      const b = blob(randomBytes(100));
      await c.pushBlob('retry/date', b.digest, b.size, source(b));
      proxy.add({
        method: 'HEAD',
        path: /\/blobs\//,
        fault: {
          kind: 'status',
          status: 503,
          headers: { 'retry-after': new Date(Date.now() + 3_600_000).toUTCString() },
        },
      });
      const t0 = Date.now();
      assert.equal(await c.headBlob('retry/date', b.digest), 100);
      const waited = Date.now() - t0;
      assert.ok(waited >= 250 && waited < 3000, `waited ${waited} ms`);
    });

    it('retries 503 twice then succeeds', async () => {
      const c = client();
      const b = blob(randomBytes(50_000));
      await c.pushBlob('retry/b', b.digest, b.size, source(b));
      proxy.reset();
      proxy.add({ method: 'GET', path: /\/blobs\/sha256:/, times: 2, fault: { kind: 'status', status: 503 } });
      assert.deepEqual(await readAll(await c.getBlob('retry/b', b.digest, b.size)), b.data);
      assert.deepEqual(
        seen('GET', /\/blobs\//).map((r) => r.status),
        [503, 503, 200],
      );
    });

    it('gives up after the bounded attempts with an error naming registry, repository and digest', async () => {
      const c = client({ retries: 3 });
      const d = sha256Digest(Buffer.from('x'));
      proxy.add({ method: 'GET', path: /\/blobs\//, times: 10, fault: { kind: 'status', status: 500 } });
      await rejectsWith(
        () => c.getBlob('retry/c', d),
        /get blob: registry answered 500: UNAVAILABLE injected \(after 3 attempts\)/,
        quoted(proxy.host),
        quoted('retry/c'),
        quoted(d),
      );
      assert.equal(seen('GET', /\/blobs\//).length, 3);
    });

    it('does not retry other client errors', async () => {
      const c = client();
      const d = sha256Digest(Buffer.from('y'));
      proxy.add({
        method: 'GET',
        path: /\/blobs\//,
        fault: { kind: 'status', status: 400, body: '{"errors":[{"code":"NAME_INVALID","message":"bad name"}]}' },
      });
      await rejectsWith(() => c.getBlob('retry/d', d), /get blob: registry answered 400: NAME_INVALID bad name/);
      assert.equal(seen('GET', /\/blobs\//).length, 1);
    });

    it('retries a reset connection', async () => {
      const c = client();
      const b = blob(randomBytes(20_000));
      await c.pushBlob('reset/a', b.digest, b.size, source(b));
      proxy.reset();
      proxy.add({ method: 'GET', path: /\/blobs\/sha256:/, fault: { kind: 'reset' } });
      assert.deepEqual(await readAll(await c.getBlob('reset/a', b.digest, b.size)), b.data);
      assert.deepEqual(
        seen('GET', /\/blobs\//).map((r) => r.status),
        ['reset', 200],
      );
    });

    it('starts a chunked upload again when a chunk fails', async () => {
      const c = client();
      const b = blob(randomBytes(3 * CHUNK));
      proxy.add({ method: 'PATCH', path: /\/blobs\/uploads\//, fault: { kind: 'reset' } });
      proxy.add({ method: 'PATCH', path: /\/blobs\/uploads\//, fault: { kind: 'status', status: 503 } });
      assert.equal(await c.pushBlob('reset/chunks', b.digest, b.size, source(b)), 'uploaded');
      assert.equal(seen('POST', /\/blobs\/uploads\/$/).length, 3, 'three upload sessions');
      assert.deepEqual(await readAll(await c.getBlob('reset/chunks', b.digest, b.size)), b.data);
    });

    it('starts a monolithic upload again when its PUT is refused with 503', async () => {
      const c = client();
      const b = blob(randomBytes(5000));
      proxy.add({ method: 'PUT', path: /\/blobs\/uploads\//, fault: { kind: 'status', status: 503 } });
      assert.equal(await c.pushBlob('retry/put', b.digest, b.size, source(b)), 'uploaded');
      assert.equal(seen('PUT', /\/blobs\/uploads\//).length, 2);
    });

    it('times out a registry that does not answer', async () => {
      const c = client({ timeoutMs: 300, retries: 2 });
      const d = sha256Digest(Buffer.from('z'));
      const held: import('node:http').ServerResponse[] = [];
      proxy.add({
        method: 'HEAD',
        path: /\/blobs\//,
        times: 2,
        fault: { kind: 'respond', respond: (_req, res) => held.push(res) },
      });
      await rejectsWith(
        () => c.headBlob('slow/a', d),
        /head blob: .*UND_ERR_HEADERS_TIMEOUT.*after 2 attempts/,
        quoted('slow/a'),
        quoted(d),
      );
      for (const res of held) res.destroy();
    });

    it('fails a blob whose bytes were altered, naming the digest expected and got', async () => {
      const c = client();
      const b = blob(randomBytes(100_000));
      await c.pushBlob('corrupt/a', b.digest, b.size, source(b));
      proxy.add({ method: 'GET', path: /\/blobs\/sha256:/, fault: { kind: 'corrupt' } });
      const err = await rejectsWith(
        async () => readAll(await c.getBlob('corrupt/a', b.digest, b.size)),
        new RegExp(`digest mismatch: expected ${b.digest}, got sha256:[0-9a-f]{64}`),
        quoted(proxy.host),
        quoted('corrupt/a'),
      );
      assert.doesNotMatch(err.message, new RegExp(`got ${b.digest}`));
    });

    it('follows a redirect to storage on another origin', async () => {
      const c = client();
      const b = blob(randomBytes(30_000));
      await c.pushBlob('redirect/a', b.digest, b.size, source(b));
      // The "storage" is the registry itself, reached directly, as a different origin.
      proxy.add({
        method: 'GET',
        path: /\/blobs\/sha256:/,
        fault: {
          kind: 'respond',
          respond: (req, res) => res.writeHead(307, { location: `${reg.url}${req.url}` }).end(),
        },
      });
      assert.deepEqual(await readAll(await c.getBlob('redirect/a', b.digest, b.size)), b.data);
      proxy.add({
        method: 'GET',
        path: /\/blobs\/sha256:/,
        fault: {
          kind: 'respond',
          respond: (req, res) => res.writeHead(302, { location: `${reg.url}${req.url}` }).end(),
        },
      });
      assert.deepEqual(await c.getBlobRange('redirect/a', b.digest, 5, 9), b.data.subarray(5, 10));
    });
  });
});
