// TraceStore without a registry: traces pushed as artifacts to an in-memory registry and found again,
// the newer of the node's and the registry's chosen, anything unfit ignored with a warning.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, beforeEach, describe, it } from 'node:test';
import { TraceStore, type TracedImage } from '../../src/daemon/trace-store';
import { CREATED_ANNOTATION, pushArtifact } from '../../src/oci/artifacts';
import { digestHex, sha256Digest } from '../../src/oci/digest';
import type { HostClient } from '../../src/oci/host-client';
import type { RegistryClient } from '../../src/oci/registry';
import { MediaType, type Descriptor } from '../../src/oci/types';
import { TRACE_MEDIA_TYPE, type AccessTrace } from '../../src/storage/access-trace';
import { BlobCache } from '../../src/storage/blob-cache';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { makeFakeBlob } from '../lib/fake-blob';
import { captureLogs, type LogCapture } from '../lib/log-capture';

/** A registry without the referrers API's server side: what putManifest stores with a subject is listed as its referrer. */
class FakeRegistry {
  readonly host = 'registry.test';
  readonly blobs = new Map<string, Buffer>();
  readonly manifests = new Map<string, Buffer>();
  readonly listed: Descriptor[] = [];
  failure: Error | null = null;

  readonly upstream = {
    pushBlob: async (_repo: string, digest: string, _size: number, open: () => Readable) => {
      const parts: Buffer[] = [];
      for await (const b of open()) parts.push(b as Buffer);
      this.blobs.set(digest, Buffer.concat(parts));
      return 'uploaded';
    },
    putManifest: async (_repo: string, _ref: string, raw: Buffer, mediaType: string) => {
      const digest = sha256Digest(raw);
      this.manifests.set(digest, raw);
      const doc = JSON.parse(raw.toString()) as { artifactType?: string; annotations?: Record<string, string> };
      this.listed.push({
        mediaType,
        digest,
        size: raw.length,
        artifactType: doc.artifactType,
        annotations: doc.annotations,
      });
      return digest;
    },
  };

  async referrers(_repo: string, _digest: string, artifactType?: string): Promise<Descriptor[]> {
    if (this.failure) throw this.failure;
    return this.listed.filter((d) => !artifactType || d.artifactType === artifactType);
  }

  async getManifest(_repo: string, reference: string) {
    const raw = this.manifests.get(reference);
    if (!raw) throw new Error(`manifest ${reference} unknown`);
    return { raw, mediaType: MediaType.ociManifest, digest: reference };
  }

  async readBlob<T>(_repo: string, digest: string, _size: number, consume: (b: AsyncIterable<Buffer>) => Promise<T>) {
    const data = this.blobs.get(digest);
    if (!data) throw new Error(`blob ${digest} unknown`);
    return consume(
      (async function* () {
        yield data;
      })(),
    );
  }
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-trace-store-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const SUBJECT: Descriptor = { mediaType: MediaType.ociManifest, digest: `sha256:${'c'.repeat(64)}`, size: 1234 };
const WHEN = Date.parse('2026-01-01T00:00:00.000Z');

describe('TraceStore', () => {
  let blobs: BlobCache[];
  let registry: FakeRegistry;
  let store: TraceStore;
  let image: TracedImage;
  let logs: LogCapture;
  let n = 0;

  /** A trace of the image naming `chunks` of its one blob. */
  const traceOf = (...chunks: number[]): AccessTrace => ({
    version: 1,
    image: SUBJECT.digest,
    blobs: [blobs[0].remote.digest],
    entries: chunks.map((chunk, i) => ({
      blob: 0,
      chunk,
      ms: i,
      digest: blobs[0].index.chunks[chunk].digest.toString('hex'),
    })),
  });

  /** Pushes `trace` as an artifact created at `createdMs`. */
  const pushAt = (trace: unknown, createdMs: number) =>
    pushArtifact(
      registry.upstream as unknown as RegistryClient,
      'lazy/app',
      SUBJECT,
      'application/vnd.erofs-ondemand.trace.v1',
      { [CREATED_ANNOTATION]: new Date(createdMs).toISOString() },
      { mediaType: TRACE_MEDIA_TYPE, data: Buffer.from(JSON.stringify(trace)) },
    );

  /** Keeps `trace` as this node's, its file dated `ms`. */
  const saveAt = (trace: AccessTrace, ms: number) => {
    store.save(trace);
    const file = path.join(store.dir, `${digestHex(trace.image)}.json`);
    fs.utimesSync(file, ms / 1000, ms / 1000);
  };

  const chunksOf = (t: AccessTrace | undefined) => t?.entries.map((e) => e.chunk);
  const warnings = () => logs.records.filter((r) => r.level === 'warn').map((r) => `${r.message}: ${r.error}`);

  before(async () => {
    const blob = await makeFakeBlob({ size: 8 * (64 << 10) });
    blobs = [BlobCache.open(path.join(work, 'blob'), blob.remote(), blob.index, new ChunkFetcher())];
  });
  beforeEach(() => {
    registry = new FakeRegistry();
    store = new TraceStore(path.join(work, `traces-${n++}`));
    image = {
      digest: SUBJECT.digest,
      blobs,
      client: registry as unknown as HostClient,
      repo: 'lazy/app',
      subject: SUBJECT,
    };
    logs?.stop();
    logs = captureLogs();
  });
  after(() => logs?.stop());

  it('pushes a trace as a referrer of the image and finds it again, checked', async () => {
    const trace = traceOf(3, 1, 2);
    const artifact = await store.push(trace, image);
    const manifest = JSON.parse(registry.manifests.get(artifact)!.toString());
    assert.equal(manifest.artifactType, 'application/vnd.erofs-ondemand.trace.v1');
    assert.deepEqual(manifest.subject, SUBJECT);
    assert.equal(manifest.config.mediaType, 'application/vnd.oci.empty.v1+json');
    assert.equal(manifest.layers.length, 1);
    assert.equal(manifest.layers[0].mediaType, TRACE_MEDIA_TYPE);
    assert.ok(!Number.isNaN(Date.parse(manifest.annotations[CREATED_ANNOTATION])));
    const found = await store.find(image);
    assert.equal(found?.source, artifact);
    assert.deepEqual(found?.trace, trace);
  });

  it('refuses to push a trace of another image', async () => {
    await assert.rejects(store.push({ ...traceOf(1), image: `sha256:${'d'.repeat(64)}` }, image), /not one of/);
  });

  it("takes the registry's newest trace by its creation time", async () => {
    await pushAt(traceOf(1), WHEN);
    await pushAt(traceOf(2), WHEN + 2000);
    await pushAt(traceOf(3), WHEN + 1000);
    assert.deepEqual(chunksOf((await store.find(image))?.trace), [2]);
  });

  it("takes this node's trace when it is newer than the registry's, or as new", async () => {
    await pushAt(traceOf(1), WHEN);
    saveAt(traceOf(5), WHEN + 1000);
    assert.deepEqual(chunksOf((await store.find(image))?.trace), [5]);
    saveAt(traceOf(6), WHEN);
    const found = await store.find(image);
    assert.deepEqual(chunksOf(found?.trace), [6]);
    assert.equal(found?.source, 'local');
    saveAt(traceOf(7), WHEN - 1000);
    assert.deepEqual(chunksOf((await store.find(image))?.trace), [1], "the registry's when it is newer");
  });

  it("ignores, with a warning, a registry trace that does not fit, and falls back on this node's", async () => {
    const bad = traceOf(1, 2);
    bad.entries[1].digest = bad.entries[0].digest;
    await pushAt(bad, WHEN + 1000);
    assert.equal(await store.find(image), null);
    assert.match(warnings().join('\n'), /access trace in the registry ignored: .*entry 1: chunk 2 of blob .* digest/);
    saveAt(traceOf(4), WHEN);
    assert.deepEqual(chunksOf((await store.find(image))?.trace), [4]);
  });

  it('ignores, with a warning, a trace of another image and one that is not JSON', async () => {
    await pushAt({ ...traceOf(1), image: `sha256:${'d'.repeat(64)}` }, WHEN);
    assert.equal(await store.find(image), null);
    assert.match(warnings().join('\n'), /it is the trace of "sha256:d/);
    await pushArtifact(
      registry.upstream as unknown as RegistryClient,
      'lazy/app',
      SUBJECT,
      'application/vnd.erofs-ondemand.trace.v1',
      { [CREATED_ANNOTATION]: new Date(WHEN + 1000).toISOString() },
      { mediaType: TRACE_MEDIA_TYPE, data: Buffer.from('{not json') },
    );
    assert.equal(await store.find(image), null);
    assert.match(warnings().join('\n'), /access trace in the registry not read: .*JSON/);
  });

  it("warns and goes on without the registry's trace when the registry fails", async () => {
    saveAt(traceOf(2), WHEN);
    registry.failure = new Error('connection refused');
    assert.deepEqual(chunksOf((await store.find(image))?.trace), [2]);
    assert.match(warnings().join('\n'), /access trace in the registry not read: connection refused/);
  });

  it('finds nothing when there is no trace anywhere', async () => {
    assert.equal(await store.find(image), null);
    assert.deepEqual(warnings(), []);
  });
});
