// `convert --chunk-dict` against a real registry (docker-registry behind a recording proxy): a rebuild
// of an image stores only its new chunks, its manifest lists the older blob (mounted into its
// repository when that is another one), it mounts on a fresh node equal to `umoci unpack`, and a
// chunk-dict image that cannot be loaded stops the run before anything is pushed.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { Annotation, LazyMediaType } from '../../src/convert/lazy-image';
import { ImageStore } from '../../src/daemon/image-store';
import { closeRegistryClients } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import type { ImageManifest } from '../../src/oci/types';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { FanotifyTransport } from '../../src/transport/fanotify';
import { FuseTransport } from '../../src/transport/fuse';
import type { CacheMissTransport } from '../../src/transport/transport';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { runCliAsync, type ConvertJson } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, storedBytes, type RegistryServer } from '../lib/registry-server';
import { imageOf, layeredImage, layerText, pushSmallImage, smallImage } from '../lib/small-image';
import { makeTar, type TestTarEntry } from '../lib/tar-writer';
import { UmociImage } from '../lib/test-images';
import { compareTreesInChild } from '../lib/tree-compare';

const run = promisify(execFile);
const FILES = 12;
const LAYERS = 100;
const FILE_BYTES = 3_000_000;

describe('convert --chunk-dict: a rebuild stores only its new chunks', { timeout: 600_000 }, () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let client: RegistryClient;
  let work: string;
  /** A's lazy manifest (converted without a chunk dict). */
  let lazyA: ImageManifest;
  let host: string;

  /**
   * The CLI through the proxy (the requests of this run, then the proxy's rules are forgotten), with
   * a memo of converted layers of this test's own.
   */
  async function convert(...args: string[]) {
    proxy.requests.length = 0;
    const r = await runCliAsync(['convert', '--json', ...args], {
      env: { XDG_CACHE_HOME: work, EROFS_ONDEMAND_LOG_LEVEL: 'error' },
    });
    const pushed = proxy.requests.filter((q) => q.method !== 'GET' && q.method !== 'HEAD');
    proxy.reset();
    return { ...r, pushed, bytesPushed: pushed.reduce((n, q) => n + q.bytesIn, 0) };
  }

  async function manifest(repo: string, tag: string): Promise<ImageManifest> {
    return JSON.parse((await client.getManifest(repo, tag)).raw.toString('utf8'));
  }

  before(async () => {
    work = tempDir('chunk-dict');
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    host = proxy.host;
    client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    // A: one layer of twelve files of random bytes. B: a rebuild of it with one more small file, so
    // one layer of another digest holding the same twelve files.
    const dir: TestTarEntry = { name: 'data/', type: '5', mode: 0o755 };
    const files = Array.from({ length: FILES }, (_, i) => ({ name: `data/file-${i}`, body: randomBytes(FILE_BYTES) }));
    const added = { name: 'data/added.txt', body: 'the one new file of the rebuild\n' };
    await pushSmallImage(client, 'library/app', '1', imageOf([makeTar([dir, ...files])]));
    await pushSmallImage(client, 'library/app', '2', imageOf([makeTar([dir, ...files, added])]));
    await pushSmallImage(client, 'library/plain', '1', smallImage());
    const a = await convert(`${host}/library/app:1`, `${host}/lazy/app:1`);
    assert.equal(a.status, 0, a.stderr);
    lazyA = await manifest('lazy/app', '1');
    assert.equal(lazyA.layers.length, 2, 'a bootstrap and one blob');
  });
  after(async () => {
    await client?.close();
    await closeRegistryClients();
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it('uploads only the new chunks and metadata; the manifest lists the older blob', async () => {
    const before = storedBytes(registry);
    const b = await convert('--chunk-dict', `${host}/lazy/app:1`, `${host}/library/app:2`, `${host}/lazy/app:2`);
    assert.equal(b.status, 0, b.stderr);
    const out: ConvertJson = JSON.parse(b.stdout);
    const grown = storedBytes(registry) - before;
    const blobA = lazyA.layers[1];
    assert.deepEqual(out.chunkDictBlobs, [{ digest: blobA.digest, from: `${host}/lazy/app:1` }]);
    assert.equal(out.blobs.length, 1);
    assert.equal(out.blobs[0].chunks, 1, "B's own blob holds only the new file");
    // The new file, the bootstrap, the config, the manifests: nothing near one of the 3 MB files.
    assert.ok(b.bytesPushed < 256 << 10, `${b.bytesPushed} bytes pushed`);
    assert.ok(grown < 256 << 10, `the registry grew by ${grown} bytes`);

    const m = await manifest('lazy/app', '2');
    assert.equal(m.layers[0].mediaType, LazyMediaType.bootstrap);
    assert.deepEqual(m.layers[1], blobA, "A's blob, its descriptor unchanged, before B's own");
    assert.equal(m.layers[2].digest, out.blobs[0].digest);
    assert.equal(m.annotations?.[Annotation.chunkDict], (await client.getManifest('lazy/app', '1')).digest);
    const check = await runCliAsync(['inspect', '--check', `${host}/lazy/app:2`]);
    assert.equal(check.status, 0, check.stderr);

    // The control: the same conversion without the chunk dict stores all of it again.
    const plainBefore = storedBytes(registry);
    const plain = await convert(`${host}/library/app:2`, `${host}/lazy/app-plain:2`);
    assert.equal(plain.status, 0, plain.stderr);
    assert.ok(plain.bytesPushed > FILES * FILE_BYTES, `${plain.bytesPushed} bytes pushed without --chunk-dict`);
    assert.ok(storedBytes(registry) - plainBefore > FILES * FILE_BYTES);
  });

  it('mounts on a fresh node, reading from both blobs, every file equal to umoci unpack', async () => {
    const b = await convert('--chunk-dict', `${host}/lazy/app:1`, `${host}/library/app:2`, `${host}/lazy/app:2`);
    assert.equal(b.status, 0, b.stderr);
    const layout = path.join(work, 'layout-b');
    execFileSync('skopeo', [
      'copy',
      '-q',
      '--src-tls-verify=false',
      `docker://${registry.host}/library/app:2`,
      `oci:${layout}:2`,
    ]);
    const reference = new UmociImage(layout, '2').unpack(path.join(work, 'reference-b'));

    const cache = path.join(work, 'node-cache');
    const fetcher = new ChunkFetcher();
    const store = new ImageStore(cache, new BlobStore(path.join(cache, 'blobs'), fetcher));
    const image = await store.prepare(`${host}/lazy/app:2`);
    assert.equal(image.blobs.length, 2, "A's blob and B's own: two devices");
    const transport = new FanotifyTransport();
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await transport.mount(image, mnt);
    try {
      assert.deepEqual(await compareTreesInChild(reference, mnt), []);
      assert.equal(fetcher.stats.verifyFailures, 0);
      assert.ok(fetcher.stats.bytesFetched > FILES * FILE_BYTES * 0.9, "the files came from A's blob");
    } finally {
      await transport.unmount(mnt);
      await transport.close();
    }
  });

  it('takes a chunk-dict image from another repository, by its original reference, and mounts its blob', async () => {
    const before = storedBytes(registry);
    const b = await convert('--chunk-dict', `${host}/library/app:1`, `${host}/library/app:2`, `${host}/other/app:2`);
    assert.equal(b.status, 0, b.stderr);
    const blobA = lazyA.layers[1];
    const mount = b.pushed.find(
      (q) => q.method === 'POST' && q.path.includes(`mount=${encodeURIComponent(blobA.digest)}`),
    );
    assert.ok(mount, `no cross-repository mount of A's blob in ${JSON.stringify(b.pushed.map((q) => q.path))}`);
    assert.match(mount.path, /^\/v2\/other\/app\/blobs\/uploads\/\?.*from=lazy%2Fapp/);
    assert.equal(mount.status, 201);
    assert.equal(await client.headBlob('other/app', blobA.digest), blobA.size, 'the target repository holds it');
    assert.ok(b.bytesPushed < 256 << 10, `${b.bytesPushed} bytes pushed`);
    assert.ok(storedBytes(registry) - before < 256 << 10);
    assert.deepEqual((await manifest('other/app', '2')).layers[1], blobA);
  });

  it('copies the blob into the target repository when the registry declines the mount', async () => {
    const blobA = lazyA.layers[1];
    // The proxy opens a plain upload session instead, as a registry that does not mount would.
    proxy.add({
      method: 'POST',
      path: new RegExp(`^/v2/declined/app/blobs/uploads/\\?.*mount=${encodeURIComponent(blobA.digest)}`),
      fault: {
        kind: 'respond',
        respond: (req, res) => {
          const [hostname, port] = registry.host.split(':');
          const headers = { host: req.headers.host ?? host, 'content-length': '0' };
          const upstream = http.request(
            { hostname, port: Number(port), method: 'POST', path: '/v2/declined/app/blobs/uploads/', headers },
            (up) => {
              res.writeHead(up.statusCode ?? 502, up.headers);
              up.pipe(res);
            },
          );
          req.resume();
          upstream.end();
        },
      },
    });
    const b = await convert('--chunk-dict', `${host}/lazy/app:1`, `${host}/library/app:2`, `${host}/declined/app:2`);
    assert.equal(b.status, 0, b.stderr);
    assert.ok(b.bytesPushed >= blobA.size, `${b.bytesPushed} bytes pushed: the blob was copied`);
    assert.equal(await client.headBlob('declined/app', blobA.digest), blobA.size);
    assert.deepEqual((await manifest('declined/app', '2')).layers[1], blobA);
  });

  it(`a chunk-dict image of ${LAYERS} layers: each of its blobs a device of the new image, which mounts`, async () => {
    // v2 is v1 and one more layer: v1's layers (the same bytes) give no blob of v2's own.
    await pushSmallImage(client, 'library/layers', '1', layeredImage(LAYERS));
    await pushSmallImage(client, 'library/layers', '2', layeredImage(LAYERS + 1));
    const v1 = await convert(`${host}/library/layers:1`, `${host}/lazy/layers:1`);
    assert.equal(v1.status, 0, v1.stderr);
    const v2 = await convert(
      '--chunk-dict',
      `${host}/lazy/layers:1`,
      `${host}/library/layers:2`,
      `${host}/lazy/layers:2`,
    );
    assert.equal(v2.status, 0, v2.stderr);
    const out: ConvertJson = JSON.parse(v2.stdout);
    assert.equal(out.chunkDictBlobs.length, LAYERS);
    assert.equal(out.blobs.length, 1);
    const transports: Record<string, (cache: string) => CacheMissTransport> = {
      fanotify: () => new FanotifyTransport(),
      fuse: (cache) => new FuseTransport({ dir: path.join(cache, 'fuse'), backing: 'file' }),
    };
    for (const [name, create] of Object.entries(transports)) {
      const cache = path.join(work, `layers-cache-${name}`);
      const store = new ImageStore(cache, new BlobStore(path.join(cache, 'blobs'), new ChunkFetcher()));
      const image = await store.prepare(`${host}/lazy/layers:2`);
      assert.equal(image.blobs.length, LAYERS + 1, name);
      const transport = create(cache);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await transport.mount(image, mnt);
      try {
        // Read by another process: with FUSE this one answers the reads.
        for (const i of [0, LAYERS - 1, LAYERS]) {
          const { stdout } = await run('cat', [path.join(mnt, 'layers', `${i}.txt`)]);
          assert.equal(stdout, layerText(i), `${name}: layers/${i}.txt`);
        }
      } finally {
        await transport.unmount(mnt);
        await transport.close();
      }
    }
  });

  for (const [what, ref, message] of [
    ['one that is not there', 'lazy/missing:1', /manifest|not found|404/i],
    ['one that is not a lazy image', 'library/plain:1', /not in the lazy format/],
  ] as const) {
    it(`fails naming a chunk-dict image that is ${what}; pushes nothing`, async () => {
      const r = await convert('--chunk-dict', `${host}/${ref}`, `${host}/library/app:2`, `${host}/lazy/app:3`);
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`chunk-dict "${host}/${ref}"`.replace(/[.:/]/g, '\\$&')));
      assert.match(r.stderr, message);
      assert.deepEqual(r.pushed, [], 'no request that stores anything');
      assert.equal(await client.headManifest('lazy/app', '3'), null);
    });
  }
});
