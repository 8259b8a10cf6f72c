// The persistent blob cache filled by Range GETs from a real registry: verified chunks only, reused
// after a restart, nothing written when the registry's bytes are wrong.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadBlobIndex, type BlobIndex } from '../../src/blob/blob-index';
import { materializeBlob } from '../../src/blob/materialize';
import { convertLayers, type ConvertedLayers } from '../../src/convert/convert-layers';
import { native } from '../../src/native';
import { RegistryClient } from '../../src/oci/registry';
import { BlobCache } from '../../src/storage/blob-cache';
import { ChunkFetcher, type RemoteBlob } from '../../src/storage/chunk-fetcher';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { makeKitchenSink } from '../lib/fixtures';
import { cleanup, tempDir } from '../lib/image';
import { gzipLayer, tarDirectory } from '../lib/layers';
import { startRegistry, type RegistryServer } from '../lib/registry-server';

const CACHE = { kind: 'cache' } as const;

describe('blob cache over registry Range GETs', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let client: RegistryClient;
  let work: string;
  let converted: ConvertedLayers;
  let raw: Buffer;
  let index: BlobIndex;
  let digest: string;

  before(async () => {
    work = tempDir('blob-cache');
    const src = path.join(work, 'src');
    fs.mkdirSync(src);
    makeKitchenSink(src);
    fs.rmSync(path.join(src, 'sock'));
    converted = await convertLayers([gzipLayer(tarDirectory(src))], path.join(work), {
      chunkBits: 20,
      image: 'cache-test',
    });
    const blob = converted.blobs[0];
    digest = `sha256:${blob.id}`;
    await materializeBlob(blob.path, path.join(work, 'raw'));
    raw = fs.readFileSync(path.join(work, 'raw'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    client = new RegistryClient(proxy.host, { plainHttp: true, retries: 1 });
    await client.pushBlob('lazy/cache', digest, blob.size, () => fs.createReadStream(blob.path));
    index = await loadBlobIndex((o, l) => client.getBlobRange('lazy/cache', digest, o, o + l - 1), blob.size, digest);
  });
  after(async () => {
    await client?.close();
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  const remote = (): RemoteBlob => ({
    digest,
    what: `blob ${digest}`,
    read: (o, l) => client.getBlobRange('lazy/cache', digest, o, o + l - 1),
  });

  it('fills a range with verified bytes and only that range', async () => {
    const file = path.join(work, 'cache-a');
    const cache = BlobCache.open(file, remote(), index, new ChunkFetcher());
    try {
      assert.equal(cache.presentChunks, 0);
      const c = index.chunks[2];
      proxy.reset();
      const fetched = await cache.serve(c.uncompressedOffset + 10, c.uncompressedOffset + 20, CACHE);
      assert.equal(fetched, 1);
      assert.equal(proxy.requests.length, 1, 'one Range GET');
      const got = Buffer.alloc(c.uncompressedSize);
      const fd = fs.openSync(file, 'r');
      fs.readSync(fd, got, 0, got.length, c.uncompressedOffset);
      assert.ok(got.equals(raw.subarray(c.uncompressedOffset, c.uncompressedOffset + c.uncompressedSize)));
      assert.equal(native.seekData(fd, 0), c.uncompressedOffset, 'nothing before it was written');
      fs.closeSync(fd);
      assert.equal(
        await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, CACHE),
        0,
        'a hit fetches nothing',
      );
    } finally {
      cache.close();
    }
  });

  it('after a restart, present chunks are found on disk and not fetched again', async () => {
    const file = path.join(work, 'cache-b');
    const first = BlobCache.open(file, remote(), index, new ChunkFetcher());
    await first.serve(0, index.trailer.uncompressedSize, CACHE);
    first.close();
    const again = BlobCache.open(file, remote(), index, new ChunkFetcher());
    try {
      assert.equal(again.presentChunks, index.chunks.length);
      proxy.reset();
      assert.equal(await again.serve(0, index.trailer.uncompressedSize, CACHE), 0);
      assert.equal(proxy.requests.length, 0);
      assert.ok(fs.readFileSync(file).equals(raw));
    } finally {
      again.close();
    }
  });

  it('writes nothing when the registry alters the bytes', async () => {
    const file = path.join(work, 'cache-c');
    const fetcher = new ChunkFetcher();
    const cache = BlobCache.open(file, remote(), index, fetcher);
    // Without read-ahead: a chunk that shared the corrupted response could pass its own check and be
    // cached, rightly; here the one chunk asked for is all the response holds.
    cache.readAhead = { maxBytes: 0 };
    try {
      proxy.add({ method: 'GET', path: /\/blobs\//, times: 10, fault: { kind: 'corrupt' } });
      const c = index.chunks[1];
      await assert.rejects(cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, CACHE), /does not match|zstd/);
      proxy.reset();
      assert.equal(fetcher.stats.verifyFailures, 1);
      const fd = fs.openSync(file, 'r');
      assert.equal(native.seekData(fd, 0), -1, 'the cache file is still all hole');
      fs.closeSync(fd);
      assert.equal(cache.presentChunks, 0);
    } finally {
      cache.close();
    }
  });

  it('evicts the oldest unpinned chunks by punching holes; a later read fetches them again', async () => {
    const file = path.join(work, 'cache-d');
    const cache = BlobCache.open(file, remote(), index, new ChunkFetcher());
    try {
      assert.ok(index.chunks.length >= 3, 'the fixture has several chunks');
      for (const c of index.chunks) await cache.serve(c.uncompressedOffset, c.uncompressedOffset + 1, CACHE);
      const before = cache.allocatedBytes;
      const [oldest, second] = index.chunks;
      const freed = await cache.evictOldest(1); // one chunk is enough for one byte
      assert.ok(freed >= oldest.uncompressedSize && freed < oldest.uncompressedSize + 4096, `freed ${freed}`);
      assert.equal(cache.presentChunks, index.chunks.length - 1);
      assert.ok(cache.allocatedBytes <= before - oldest.uncompressedSize + 4096);
      const fd = fs.openSync(file, 'r');
      assert.notEqual(
        native.seekData(fd, oldest.uncompressedOffset),
        oldest.uncompressedOffset,
        'a hole where the oldest chunk was',
      );
      fs.closeSync(fd);
      // A read pins its chunks: an eviction meanwhile takes others, and the bytes are right.
      proxy.reset();
      const data = Buffer.alloc(oldest.uncompressedSize);
      const reading = cache.serve(oldest.uncompressedOffset, oldest.uncompressedOffset + oldest.uncompressedSize, {
        kind: 'buffer',
        buf: data,
        offset: 0,
      });
      const evicting = cache.evictOldest(second.uncompressedSize);
      const [fetched] = await Promise.all([reading, evicting]);
      assert.equal(fetched, 1);
      assert.equal(proxy.requests.length, 1);
      assert.ok(
        data.equals(raw.subarray(oldest.uncompressedOffset, oldest.uncompressedOffset + oldest.uncompressedSize)),
      );
    } finally {
      cache.close();
    }
  });
});
