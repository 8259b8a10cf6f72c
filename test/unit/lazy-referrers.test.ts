// The referrer that leads a node from a source image to its lazy form: written next to the source only
// when the lazy image went to a registry, and, when a source has referrers that lead nowhere (a local
// `oci:` path an older convert wrote there, an image that is not lazy), passed over by the lookup
// rather than failing it. An in-memory registry in this process stands for the source's.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { convertImage } from '../../src/convert/convert';
import { Annotation, LazyMediaType } from '../../src/convert/lazy-image';
import { findLazyForm, findLazyImage } from '../../src/daemon/image-store';
import { InputError } from '../../src/errors';
import { pushArtifact } from '../../src/oci/artifacts';
import { closeRegistryClients, openSource, openTarget } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, MediaType, type Descriptor } from '../../src/oci/types';
import { cleanup, tempDir } from '../lib/image';
import { captureLogs } from '../lib/log-capture';
import { startMemoryRegistry, type MemoryRegistry } from '../lib/memory-registry';
import { pushSmallImage, smallImage, type TestImage } from '../lib/small-image';

const PUSHES = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
const refusePushes = (r: { method: string }) =>
  PUSHES.has(r.method)
    ? { status: 405, body: JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'read-only registry' }] }) }
    : undefined;

let reg: MemoryRegistry;
let client: RegistryClient;
let work: string;
const img: TestImage = smallImage();
const subject: Descriptor = { mediaType: MediaType.ociManifest, digest: img.digest, size: 0 };

before(async () => {
  reg = await startMemoryRegistry();
  client = new RegistryClient(reg.host, { plainHttp: true, retries: 1 });
  subject.size = img.manifest.length;
  work = tempDir('lazy-referrers');
});
afterEach(() => {
  reg.misanswer = undefined;
});
after(async () => {
  await closeRegistryClients();
  await client.close();
  await reg.close();
  cleanup(work);
});

async function convert(source: string, target: string) {
  const src = await openSource(source);
  return convertImage(src, await openTarget(target, {}, src), {
    chunkBits: 16,
    platform: hostPlatform(),
    memoFile: null,
    workDir: work,
  });
}

/** A referrer of `repo`'s image naming `image`, as a convert might have written it. */
const addReferrer = (repo: string, image: string) =>
  pushArtifact(client, repo, subject, LazyMediaType.referrer, { [Annotation.image]: image });

describe('the referrer next to the source', () => {
  it('is not written when the target is a local layout, so a read-only source registry is enough', async () => {
    await pushSmallImage(client, 'library/readonly', '1', img);
    reg.misanswer = refusePushes;
    reg.requests.length = 0;
    const out = path.join(work, 'out');
    const result = await convert(`${reg.host}/library/readonly:1`, `oci:${out}:lazy`);
    assert.equal(result.referrer, null);
    assert.deepEqual(
      reg.requests.filter((r) => PUSHES.has(r.method)),
      [],
      'nothing is sent to the source registry but reads',
    );
    const index = JSON.parse(fs.readFileSync(path.join(out, 'index.json'), 'utf8'));
    assert.equal(index.manifests[0].digest, result.target.digest);
  });

  it('is written, naming the registry image by digest, when the target is a registry', async () => {
    await pushSmallImage(client, 'library/pushed', '1', img);
    const result = await convert(`${reg.host}/library/pushed:1`, `${reg.host}/lazy/pushed:1`);
    assert.ok(result.referrer);
    const refs = await client.referrers('library/pushed', img.digest, LazyMediaType.referrer);
    assert.deepEqual(
      refs.map((r) => r.annotations?.[Annotation.image]),
      [`${reg.host}/lazy/pushed:1@${result.target.digest}`],
    );
  });
});

describe('finding the lazy image through referrers', () => {
  it('passes over referrers that name a local path or an image that is not lazy, and takes the one that works', async () => {
    await pushSmallImage(client, 'library/mixed', '1', img);
    // Listed before the good one, as an older convert to `oci:` left them.
    await addReferrer('library/mixed', `oci:out/mixed@${img.digest}`);
    await addReferrer('library/mixed', `oci:mixed@${img.digest}`); // would parse as Docker Hub's library/oci
    await addReferrer('library/mixed', `${reg.host}/library/mixed@${img.digest}`); // the source: not lazy
    await addReferrer('library/mixed', `${reg.host}/lazy/mixed:1`); // not pinned by digest
    const result = await convert(`${reg.host}/library/mixed:1`, `${reg.host}/lazy/mixed:1`);

    const logs = captureLogs();
    try {
      const found = await findLazyImage(`${reg.host}/library/mixed:1`);
      assert.equal(found.digest, result.target.digest);
      assert.equal(found.repo, 'lazy/mixed');
    } finally {
      logs.stop();
    }
    const warned = logs.records.filter((r) => r.level === 'warn').map((r) => String(r.referrer));
    assert.deepEqual(warned, [
      `oci:out/mixed@${img.digest}`,
      `oci:mixed@${img.digest}`,
      `${reg.host}/library/mixed@${img.digest}`,
      `${reg.host}/lazy/mixed:1`,
    ]);
  });

  it('finds the lazy form of a manifest given by digest without resolving the tag again', async () => {
    await pushSmallImage(client, 'library/known', '1', img);
    const result = await convert(`${reg.host}/library/known:1`, `${reg.host}/lazy/known:1`);
    reg.requests.length = 0;
    const found = await findLazyForm(`${reg.host}/library/known:1`, img.digest);
    assert.equal(found.digest, result.target.digest);
    const asked = reg.requests.map((r) => r.path);
    assert.ok(!asked.includes('/v2/library/known/manifests/1'), `the tag was resolved: ${asked.join(' ')}`);
    // Another manifest of the repository (the tag moved after containerd resolved it) has no lazy form.
    await assert.rejects(findLazyForm(`${reg.host}/library/known:1`, `sha256:${'0'.repeat(64)}`), InputError);
  });

  it('names the referrers it passed over when none leads to a lazy image', async () => {
    await pushSmallImage(client, 'library/stale', '1', img);
    await addReferrer('library/stale', `oci:out/stale@${img.digest}`);
    const logs = captureLogs();
    try {
      await assert.rejects(findLazyImage(`${reg.host}/library/stale:1`), (err: Error) => {
        assert.ok(err instanceof InputError, String(err));
        assert.ok(err.message.includes(`image "${reg.host}/library/stale:1"`), err.message);
        assert.match(err.message, /no referrer leads to a lazy image: "oci:out\/stale@sha256:[0-9a-f]{64}"/);
        assert.match(err.message, /oci:PATH names a local image, not one in a registry/);
        return true;
      });
    } finally {
      logs.stop();
    }
  });
});

describe('a registry without the referrers API', () => {
  it('is asked through the tag schema at once, and after its first 404 through the tag schema alone', async () => {
    await pushSmallImage(client, 'library/tags', '1', img);
    await addReferrer('library/tags', `${reg.host}/lazy/tags:1@${img.digest}`);
    const fresh = new RegistryClient(reg.host, { plainHttp: true, retries: 1 });
    try {
      reg.requests.length = 0;
      const first = await fresh.referrers('library/tags', img.digest, LazyMediaType.referrer);
      assert.equal(first.length, 1);
      const paths = () => reg.requests.map((r) => r.path.replace(/\?.*$/, ''));
      const tag = `/v2/library/tags/manifests/${img.digest.replace(':', '-')}`;
      // Both asked on the first lookup: which one answers is not known yet.
      assert.deepEqual(paths().sort(), [`/v2/library/tags/referrers/${img.digest}`, tag].sort());
      reg.requests.length = 0;
      const again = await fresh.referrers('library/tags', img.digest, LazyMediaType.referrer);
      assert.deepEqual(again, first);
      assert.deepEqual(paths(), [tag], 'the API that answered 404 is not asked again');
    } finally {
      await fresh.close();
    }
  });
});
