// Pushes check what the registry answered at every step (the distribution spec's statuses, Location,
// Content-Length, Docker-Content-Digest): a target that answers something else fails the push with an
// error naming the registry and the step, never a conversion that "succeeds" having stored nothing.
// An in-memory registry in this process answers as the spec says, except where a test misanswers.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, afterEach, before, describe, it } from 'node:test';
import { convertImage } from '../../src/convert/convert';
import { InputError } from '../../src/errors';
import { log } from '../../src/log';
import { sha256Digest } from '../../src/oci/digest';
import { closeRegistryClients, openSource, openTarget } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, MediaType } from '../../src/oci/types';
import { runCliAsync } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startMemoryRegistry, writeLayout, type MemoryRegistry, type SeenRequest } from '../lib/memory-registry';
import { smallImage } from '../lib/small-image';

const HTML = '<!doctype html><html><body><h1>Welcome</h1></body></html>';
const htmlEverywhere = () => ({ status: 200, headers: { 'content-type': 'text/html' }, body: HTML });

const made: string[] = [];
let reg: MemoryRegistry;
let layout: string;
const savedLevel = log.level;

before(async () => {
  reg = await startMemoryRegistry();
  const dir = tempDir('push-answers');
  made.push(dir);
  layout = writeLayout(`${dir}/layout`, smallImage(), '1');
  log.level = 'error'; // a streamed upload that fails falls back with a warning: not what is tested here
});
afterEach(() => {
  reg.misanswer = undefined;
});
after(async () => {
  log.level = savedLevel;
  await closeRegistryClients();
  await reg.close();
  cleanup(...made);
});

async function convertTo(target: string) {
  const source = await openSource(layout);
  return convertImage(source, await openTarget(target, {}, source), {
    chunkBits: 16,
    platform: hostPlatform(),
    memoFile: null,
    workDir: made[0],
  });
}

describe('convert to a registry', () => {
  it('stores every blob and the manifest in a registry that answers as the spec says', async () => {
    const result = await convertTo(`${reg.host}/lazy/ok:1`);
    assert.ok(result.uploadedBlobs >= 3, `uploaded ${result.uploadedBlobs}`);
    for (const l of [result.manifest.config, ...result.manifest.layers]) assert.ok(reg.blobs.has(l.digest), l.digest);
    assert.equal(sha256Digest(reg.manifests.get('lazy/ok:1')!.raw), result.target.digest);
  });

  it('fails, naming the registry and the step, when the target answers 200 with HTML to everything', async () => {
    reg.misanswer = htmlEverywhere;
    await assert.rejects(convertTo(`${reg.host}/lazy/html:1`), (err: Error) => {
      assert.ok(err instanceof InputError, String(err));
      assert.ok(err.message.includes(`registry "${reg.host}"`), err.message);
      assert.match(err.message, /head blob: registry answered 200 with \d+ bytes for a blob of \d+ bytes/);
      return true;
    });
  });

  it('makes the CLI exit non-zero with that message', async () => {
    reg.misanswer = htmlEverywhere;
    const home = tempDir('push-answers-home');
    made.push(home);
    const r = await runCliAsync(['convert', '-q', layout, `${reg.host}/lazy/html:1`], {
      env: { XDG_CACHE_HOME: home },
    });
    assert.equal(r.status, 1, r.stderr);
    assert.ok(r.stderr.includes(`registry "${reg.host}"`), r.stderr);
    assert.match(r.stderr, /head blob: registry answered 200 with \d+ bytes for a blob of \d+ bytes/);
    assert.equal(r.stdout, '');
  });
});

describe('each push step checks its answer', () => {
  const data = Buffer.from('a blob of some bytes, pushed in chunks of eight\n');
  const digest = sha256Digest(data);
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, layers: [] }));
  // Small chunks: a blob longer than this goes in PATCHes.
  const client = () => new RegistryClient(reg.host, { plainHttp: true, retries: 1, chunkSize: 8 });
  const pushSmall = (c: RegistryClient) => c.pushBlob('steps/repo', digest, data.length, () => Readable.from([data]));
  const pushOnePut = () =>
    new RegistryClient(reg.host, { plainHttp: true, retries: 1 }).pushBlob('steps/repo', digest, data.length, () =>
      Readable.from([data]),
    );
  const is = (method: string, part: string) => (r: SeenRequest) => r.method === method && r.path.includes(part);
  const wrongDigest = `sha256:${'0'.repeat(64)}`;

  const cases: Array<{
    step: string;
    when: (r: SeenRequest) => boolean;
    answer: { status: number; headers?: Record<string, string>; body?: string };
    run: () => Promise<unknown>;
    error: RegExp;
  }> = [
    {
      step: 'HEAD of the blob says it exists with another size',
      when: is('HEAD', '/blobs/sha256:'),
      answer: { status: 200, body: 'x'.repeat(7) },
      run: () => pushSmall(client()),
      error: /head blob: registry answered 200 with 7 bytes for a blob of 48 bytes/,
    },
    {
      step: 'HEAD of the blob names another digest',
      when: is('HEAD', '/blobs/sha256:'),
      answer: { status: 200, headers: { 'docker-content-digest': wrongDigest }, body: data.toString() },
      run: () => pushSmall(client()),
      error: /head blob: registry answered with digest "sha256:0{64}"/,
    },
    {
      step: 'upload start answers 200',
      when: is('POST', '/blobs/uploads/'),
      answer: { status: 200 },
      run: () => pushSmall(client()),
      error: /start blob upload: registry answered 200/,
    },
    {
      step: 'upload start is refused: the error the registry gives is quoted',
      when: is('POST', '/blobs/uploads/'),
      answer: { status: 405, body: JSON.stringify({ errors: [{ code: 'UNSUPPORTED', message: 'read-only' }] }) },
      run: () => pushSmall(client()),
      error: /start blob upload: registry answered 405: UNSUPPORTED read-only/,
    },
    {
      step: 'upload start answers 202 without a Location',
      when: is('POST', '/blobs/uploads/'),
      answer: { status: 202 },
      run: () => pushSmall(client()),
      error: /registry answered 202 without a Location/,
    },
    {
      step: 'a mount answers 201 naming another digest',
      when: is('POST', '/blobs/uploads/'),
      answer: { status: 201, headers: { 'docker-content-digest': wrongDigest } },
      run: () =>
        client().pushBlob('steps/repo', digest, data.length, () => Readable.from([data]), { mountFrom: 'other' }),
      error: /registry committed the upload as sha256:0{64}/,
    },
    {
      step: 'a chunk answers 200',
      when: is('PATCH', '/blobs/uploads/'),
      answer: { status: 200 },
      run: () => pushSmall(client()),
      error: /upload blob chunk: registry answered 200/,
    },
    {
      step: 'the commit answers 200',
      when: is('PUT', '/blobs/uploads/'),
      answer: { status: 200 },
      run: () => pushSmall(client()),
      error: /commit blob upload: registry answered 200/,
    },
    {
      step: 'a one-PUT upload answers 200',
      when: is('PUT', '/blobs/uploads/'),
      answer: { status: 200 },
      run: pushOnePut,
      error: /upload blob: registry answered 200/,
    },
    {
      step: 'a one-PUT upload answers 201 naming another digest',
      when: is('PUT', '/blobs/uploads/'),
      answer: { status: 201, headers: { 'docker-content-digest': wrongDigest } },
      run: pushOnePut,
      error: /registry committed the upload as sha256:0{64}/,
    },
    {
      step: 'the manifest PUT answers 200',
      when: is('PUT', '/manifests/'),
      answer: { status: 200, body: HTML },
      run: () => client().putManifest('steps/repo', 'v1', manifest, MediaType.ociManifest),
      error: /put manifest: registry answered 200/,
    },
    {
      step: 'the manifest PUT answers 201 naming another digest',
      when: is('PUT', '/manifests/'),
      answer: { status: 201, headers: { 'docker-content-digest': wrongDigest } },
      run: () => client().putManifest('steps/repo', 'v1', manifest, MediaType.ociManifest),
      error: /registry stored the manifest as sha256:0{64}/,
    },
  ];

  for (const c of cases) {
    it(c.step, async () => {
      reg.blobs.clear();
      reg.misanswer = (r) => (c.when(r) ? c.answer : undefined);
      await assert.rejects(c.run(), (err: Error) => {
        assert.ok(err instanceof InputError, String(err));
        assert.ok(err.message.includes(`registry "${reg.host}"`), err.message);
        assert.match(err.message, c.error);
        return true;
      });
    });
  }

  it('and the same pushes succeed when the registry answers as the spec says', async () => {
    reg.blobs.clear();
    assert.equal(await pushSmall(client()), 'uploaded');
    reg.blobs.clear();
    assert.equal(await pushOnePut(), 'uploaded');
    assert.equal(await pushSmall(client()), 'exists');
    assert.equal(
      await client().pushBlob('steps/repo', digest, data.length, () => Readable.from([data]), { mountFrom: 'other' }),
      'exists',
    );
    assert.equal(
      await client().putManifest('steps/repo', 'v1', manifest, MediaType.ociManifest),
      sha256Digest(manifest),
    );
  });
});
