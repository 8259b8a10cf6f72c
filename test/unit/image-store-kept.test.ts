// A mount's image prepared again from what the cache kept when it was mounted (a restarted daemon
// taking its mounts over): exactly that image, with no registry request when all of it was kept, even
// when its tag has moved on; a kept file that fails its check is deleted and fetched again, by digest.
// The second ImageStore on the same cache directory stands for the restarted daemon.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { convertImage } from '../../src/convert/convert';
import { Annotation } from '../../src/convert/lazy-image';
import { ImageStore, lazyReference, type PreparedImage } from '../../src/daemon/image-store';
import { lazySnapshots } from '../../src/daemon/lazy-snapshots';
import { digestHex, sha256Digest } from '../../src/oci/digest';
import { closeRegistryClients, openSource, openTarget } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, MediaType, type ImageManifest } from '../../src/oci/types';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { cleanup, tempDir } from '../lib/image';
import { captureLogs } from '../lib/log-capture';
import { startMemoryRegistry, type MemoryRegistry } from '../lib/memory-registry';
import { pushSmallImage, smallImage } from '../lib/small-image';

let reg: MemoryRegistry;
let client: RegistryClient;
let work: string;
const opened: BlobStore[] = [];
/** The lazy image's ref, and the digest its tag named when first converted. */
let ref = '';
let firstDigest = '';

/** The registry answers nothing: 404 (not retried) to every request. */
const down = () => ({ status: 404, body: '{"errors":[{"code":"UNKNOWN","message":"down"}]}' });

function store(cache: string): ImageStore {
  const blobs = new BlobStore(path.join(cache, 'blobs'), new ChunkFetcher());
  opened.push(blobs);
  return new ImageStore(cache, blobs);
}

async function convert(source: string, target: string): Promise<string> {
  const src = await openSource(source);
  const result = await convertImage(src, await openTarget(target, {}, src), {
    chunkBits: 16,
    platform: hostPlatform(),
    memoFile: null,
    workDir: work,
  });
  return result.target.digest;
}

/** What a mount serves and where its traces go: equal for the image mounted and the one prepared again. */
function served(image: PreparedImage) {
  return {
    digest: image.digest,
    bootstrap: image.bootstrapDigest,
    lazy: lazyReference(image),
    subject: image.subject,
    blobs: image.blobs.map((b) => ({ digest: b.remote.digest, index: b.index })),
  };
}

before(async () => {
  reg = await startMemoryRegistry();
  client = new RegistryClient(reg.host, { plainHttp: true, retries: 1 });
  work = tempDir('image-store-kept');
  await pushSmallImage(client, 'library/app', '1', smallImage());
  ref = `${reg.host}/lazy/app:1`;
  firstDigest = await convert(`${reg.host}/library/app:1`, ref);
});
afterEach(() => {
  reg.misanswer = undefined;
  for (const b of opened.splice(0)) for (const c of b.all()) c.close();
});
after(async () => {
  await closeRegistryClients();
  await client.close();
  await reg.close();
  cleanup(work);
});

describe('a mounted image prepared again from the cache', () => {
  it('needs no registry request, and is the image mounted', async () => {
    const cache = path.join(work, 'offline');
    const mounted = await store(cache).prepare(ref);
    assert.equal(mounted.digest, firstDigest);
    reg.misanswer = down;
    reg.requests.length = 0;
    const again = await store(cache).prepare(ref, lazyReference(mounted));
    assert.deepEqual(reg.requests, [], 'nothing asked of the registry');
    assert.deepEqual(served(again), served(mounted));
  });

  it('without the kept files, it needs the registry (so the test above measures the cache)', async () => {
    const cache = path.join(work, 'not-kept');
    const mounted = await store(cache).prepare(ref);
    fs.rmSync(path.join(cache, 'manifests'), { recursive: true });
    fs.rmSync(path.join(cache, 'tables'), { recursive: true });
    reg.misanswer = down;
    await assert.rejects(store(cache).prepare(ref, lazyReference(mounted)), /404|down/);
  });

  it('is still the image mounted after its tag moved to another one', async () => {
    const cache = path.join(work, 'moved');
    const mounted = await store(cache).prepare(ref);
    await pushSmallImage(client, 'library/app', '2', smallImage());
    const moved = await convert(`${reg.host}/library/app:2`, ref);
    try {
      assert.notEqual(moved, firstDigest);
      const again = await store(cache).prepare(ref, lazyReference(mounted));
      assert.deepEqual(served(again), served(mounted));
      assert.equal((await store(cache).prepare(ref)).digest, moved, 'a new mount takes what the tag names now');
    } finally {
      // Later tests mount the first image by its tag.
      const first = reg.manifests.get(`lazy/app@${firstDigest}`)!;
      await client.putManifest('lazy/app', '1', first.raw, first.mediaType);
    }
  });

  it('fetches a kept manifest or chunk table that fails its check again, by digest', async () => {
    const cache = path.join(work, 'corrupt');
    const mounted = await store(cache).prepare(ref);
    const manifestFile = path.join(cache, 'manifests', digestHex(mounted.digest));
    const tableFiles = mounted.blobs.map((b) => path.join(cache, 'tables', digestHex(b.remote.digest)));
    assert.ok(tableFiles.length > 0);
    for (const file of [manifestFile, ...tableFiles]) {
      const bytes = fs.readFileSync(file);
      bytes[bytes.length >> 1] ^= 0xff;
      fs.writeFileSync(file, bytes);
    }
    reg.requests.length = 0;
    const logs = captureLogs();
    let again: PreparedImage;
    try {
      again = await store(cache).prepare(ref, lazyReference(mounted));
    } finally {
      logs.stop();
    }
    assert.deepEqual(served(again), served(mounted));
    assert.deepEqual(
      reg.requests.filter((r) => r.path.includes('/manifests/')).map((r) => r.path),
      [`/v2/lazy/app/manifests/${mounted.digest}`],
      'the manifest is fetched by its digest, not by the tag',
    );
    const warned = logs.records.filter((r) => r.level === 'warn').map((r) => String(r.message));
    assert.equal(warned.filter((m) => /kept manifest does not match/.test(m)).length, 1, warned.join('\n'));
    assert.equal(warned.filter((m) => /kept chunk table failed its check/.test(m)).length, tableFiles.length);
    // Kept again, whole: the next restart needs nothing.
    reg.misanswer = down;
    reg.requests.length = 0;
    assert.deepEqual(served(await store(cache).prepare(ref, lazyReference(mounted))), served(mounted));
    assert.deepEqual(reg.requests, []);
  });

  it('keeps the digest of a chunk table the manifest gives none for, and checks the table against it', async () => {
    // An image as older converts wrote it: no digest (nor place) of the chunk tables in the manifest.
    const first = reg.manifests.get(`lazy/app@${firstDigest}`)!;
    const m = JSON.parse(first.raw.toString('utf8')) as ImageManifest;
    for (const l of m.layers) {
      delete l.annotations?.[Annotation.tableDigest];
      delete l.annotations?.[Annotation.tableOffset];
    }
    const raw = Buffer.from(JSON.stringify(m));
    await client.putManifest('lazy/old', '1', raw, MediaType.ociManifest); // blobs: shared by every repository here
    const oldRef = `${reg.host}/lazy/old:1`;
    const cache = path.join(work, 'unannotated');
    const mounted = await store(cache).prepare(oldRef);
    assert.equal(mounted.digest, sha256Digest(raw));
    const tableFile = path.join(cache, 'tables', digestHex(mounted.blobs[0].remote.digest));
    assert.match(fs.readFileSync(`${tableFile}.digest`, 'utf8'), /^sha256:[0-9a-f]{64}$/);

    reg.misanswer = down;
    reg.requests.length = 0;
    assert.deepEqual(served(await store(cache).prepare(oldRef, lazyReference(mounted))), served(mounted));
    assert.deepEqual(reg.requests, []);

    const bytes = fs.readFileSync(tableFile);
    bytes[0] ^= 0xff;
    fs.writeFileSync(tableFile, bytes);
    const logs = captureLogs();
    try {
      await assert.rejects(store(cache).prepare(oldRef, lazyReference(mounted)), /404|down/, 'not taken as it is');
    } finally {
      logs.stop();
    }
    assert.equal(fs.existsSync(tableFile), false, 'deleted');
    reg.misanswer = undefined;
    assert.deepEqual(served(await store(cache).prepare(oldRef, lazyReference(mounted))), served(mounted));
  });

  it('takes the chunk tables kept by an earlier mount on a new mount of the image', async () => {
    const cache = path.join(work, 'warm');
    const mounted = await store(cache).prepare(ref);
    reg.requests.length = 0;
    const again = await store(cache).prepare(ref);
    assert.deepEqual(served(again), served(mounted));
    assert.deepEqual(
      reg.requests.filter((r) => r.path.includes('/blobs/')),
      [],
      'no blob read: the bootstrap and the chunk tables are in the cache',
    );
  });

  it('prepares the lazy image a pull found without asking for its manifest again', async () => {
    const source = `${reg.host}/library/app:1`;
    const sourceDigest = (await client.resolveManifest('library/app', '1', hostPlatform())).digest;
    const nobody = () => {
      throw new Error('not used by find');
    };
    const cache = path.join(work, 'pulled');
    const pulling = store(cache);
    const mounter = { mount: nobody, warm: nobody, umount: nobody, isMounted: nobody };
    const found = await lazySnapshots({}, path.join(work, 'mnt'), mounter, pulling.kept).find(source, sourceDigest);
    assert.ok(found, 'the source has a lazy form');
    assert.equal(found.image, `${reg.host}/lazy/app@${firstDigest}`);
    const manifestAsks = () => reg.requests.filter((r) => r.path.includes('/manifests/')).map((r) => r.path);
    reg.requests.length = 0;
    const warmed = await pulling.prepare(found.image);
    assert.equal(warmed.digest, firstDigest);
    assert.deepEqual(manifestAsks(), [], 'the manifest the pull found is the one prepared');
    // Without it (another cache): asked once, by digest, so the assertion above measures the kept one.
    reg.requests.length = 0;
    const fresh = await store(path.join(work, 'not-pulled')).prepare(found.image);
    assert.deepEqual(served(fresh), served(warmed));
    assert.deepEqual(manifestAsks(), [`/v2/lazy/app/manifests/${firstDigest}`]);
  });
});
