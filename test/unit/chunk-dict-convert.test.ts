// `convert --chunk-dict`, the planning part, in memory: chunks an older image's blobs store are
// referenced there (device and block of that blob), only new chunks go into the new image's blobs,
// only the older blobs some file uses are listed, first; without chunk-dict images nothing changes.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import { after, describe, it } from 'node:test';
import { BLOCK_SIZE } from '../../src/erofs/format';
import { validateBootstrap } from '../../src/erofs/validate';
import { chunkDictBlobs, type ChunkDictImage } from '../../src/convert/chunk-dict-images';
import { blobDescriptor, convertImage, lazyManifest } from '../../src/convert/convert';
import {
  convertLayers,
  type ConvertedBlob,
  type ConvertedLayers,
  type LayerInput,
} from '../../src/convert/convert-layers';
import { ConvertedLayerMemo } from '../../src/convert/layer-memo';
import { Annotation } from '../../src/convert/lazy-image';
import { InputError } from '../../src/errors';
import type { ImageSource, ImageTarget } from '../../src/oci/image-io';
import { MediaType } from '../../src/oci/types';
import { cleanup, tempDir } from '../lib/image';
import { memoryLayer, TAR } from '../lib/layers';
import { makeTar, type TestTarEntry } from '../lib/tar-writer';

const CHUNK_BITS = 16;
const CHUNK = 1 << CHUNK_BITS;
const made: string[] = [];
after(() => cleanup(...made));

// Three files of several chunks each (the last one short), and a new small file.
const files = ['a', 'b', 'c'].map((name, i) => ({
  name: `data/${name}`,
  body: randomBytes(3 * CHUNK + 1000 * (i + 1)),
}));
const newFile = { name: 'data/new', body: randomBytes(5000) };
const dirEntry: TestTarEntry = { name: 'data/', type: '5', mode: 0o755 };

function layer(entries: TestTarEntry[]): LayerInput {
  return memoryLayer(makeTar(entries), TAR);
}

async function convert(layers: LayerInput[], stored?: ReturnType<typeof chunkDictBlobs>): Promise<ConvertedLayers> {
  const work = tempDir('chunk-dict');
  made.push(work);
  return convertLayers(layers, work, { chunkBits: CHUNK_BITS, image: 'test/b:1', stored });
}

/** A lazy image in a registry as `chunkDictImage` in the CLI gives it: its blobs with their chunk tables. */
function dictImage(ref: string, blobs: ConvertedBlob[], chunkSize = CHUNK): ChunkDictImage {
  return {
    ref,
    registry: 'registry.test',
    repository: ref.split(':')[0],
    digest: `sha256:${'d'.repeat(64)}`,
    blobs: blobs.map((b) => ({
      desc: blobDescriptor(b),
      index: {
        trailer: {
          chunkSize,
          tableOffset: b.tableOffset,
          chunkCount: b.chunks.length,
          uncompressedSize: b.uncompressedSize,
        },
        chunks: b.chunks,
      },
    })),
  };
}

/** Each file's chunk map as the bootstrap has it, checked against the devices given. */
function chunkMaps(
  c: ConvertedLayers,
  devices: ConvertedBlob[],
): Map<string, Array<{ device: number; blkaddr: number } | null>> {
  const maps = new Map<string, Array<{ device: number; blkaddr: number } | null>>();
  validateBootstrap(
    fs.readFileSync(c.bootstrapPath),
    { devices: devices.map((d) => ({ id: d.id, size: d.uncompressedSize })) },
    (e) => {
      if (e.chunks.length > 0) maps.set(e.path().toString(), [...e.chunks]);
    },
  );
  return maps;
}

describe('convert with chunk-dict images', () => {
  it("references the older blob's chunks and stores only the new ones", async () => {
    const a = await convert([layer([dirEntry, ...files])]);
    assert.equal(a.blobs.length, 1);
    const stored = chunkDictBlobs([dictImage('lazy/a:1', a.blobs)], CHUNK);
    const b = await convert([layer([dirEntry, ...files, newFile])], stored);

    assert.deepEqual(b.storedUsed, [0]);
    assert.equal(b.blobs.length, 1, 'one blob of its own');
    assert.equal(b.blobs[0].chunks.length, 1, 'holding only the new file');
    assert.equal(b.layers[0].storedChunks, 1);
    const maps = chunkMaps(b, [a.blobs[0], b.blobs[0]]);
    // The older blob is device 1, at the blocks its chunk table gives; the new file is in device 2.
    const aMaps = chunkMaps(a, a.blobs);
    for (const f of files) assert.deepEqual(maps.get(`/${f.name}`), aMaps.get(`/${f.name}`), f.name);
    assert.deepEqual(maps.get(`/${newFile.name}`), [{ device: 2, blkaddr: 0 }]);
    assert.deepEqual(
      a.blobs[0].chunks.map((e) => e.uncompressedOffset / BLOCK_SIZE),
      [...aMaps.values()].flat().map((l) => l!.blkaddr),
    );
  });

  it('lists only the stored blobs some file of the result uses, first, in the order given', async () => {
    const other = await convert([layer([{ name: 'other', body: randomBytes(CHUNK) }])]);
    const a = await convert([layer([dirEntry, ...files])]);
    const stored = chunkDictBlobs([dictImage('lazy/other:1', other.blobs), dictImage('lazy/a:1', a.blobs)], CHUNK);
    const b = await convert([layer([dirEntry, ...files, newFile])], stored);
    assert.deepEqual(b.storedUsed, [1], 'the unrelated blob is not listed');
    const maps = chunkMaps(b, [a.blobs[0], b.blobs[0]]);
    assert.ok([...maps.values()].flat().every((l) => l && l.device <= 2));
  });

  it('does not list a stored blob whose files a later layer deletes', async () => {
    const a = await convert([layer([dirEntry, ...files])]);
    const stored = chunkDictBlobs([dictImage('lazy/a:1', a.blobs)], CHUNK);
    const b = await convert(
      [layer([dirEntry, ...files]), layer([{ name: 'data/.wh..wh..opq', body: '' }, newFile])],
      stored,
    );
    assert.deepEqual(b.storedUsed, []);
    assert.equal(b.blobs.length, 1, 'the first layer needs no blob: all its chunks are stored');
    assert.deepEqual(chunkMaps(b, b.blobs).get(`/${newFile.name}`), [{ device: 1, blkaddr: 0 }]);
  });

  it('takes a blob that two chunk-dict images list once, from the first', () => {
    const blob = blobOf();
    const planned = chunkDictBlobs([dictImage('lazy/a:1', [blob]), dictImage('lazy/a:2', [blob])], CHUNK);
    assert.equal(planned.length, 1);
    assert.equal(planned[0].image.ref, 'lazy/a:1');
    assert.equal(planned[0].desc.digest, `sha256:${blob.id}`);
  });

  it('refuses a chunk-dict image of another chunk size, naming it', () => {
    const blob = { ...blobOf(), chunkSize: 2 * CHUNK };
    assert.throws(
      () => chunkDictBlobs([dictImage('lazy/big:1', [blob], 2 * CHUNK)], CHUNK),
      (err: unknown) =>
        err instanceof InputError && /chunk-dict "lazy\/big:1"/.test(err.message) && /131072 bytes/.test(err.message),
    );
  });

  it('without chunk-dict images gives what it gave before: same bytes, same manifest, same memo keys', async () => {
    const layers = () => [layer([dirEntry, ...files, newFile])];
    const plain = await convert(layers());
    const empty = await convert(layers(), []);
    assert.equal(empty.bootstrapDigest, plain.bootstrapDigest);
    assert.deepEqual(
      empty.blobs.map((b) => b.id),
      plain.blobs.map((b) => b.id),
    );
    assert.deepEqual(plain.storedUsed, []);
    const config = { mediaType: MediaType.ociConfig, digest: `sha256:${'c'.repeat(64)}`, size: 2 };
    const m = lazyManifest(config, `sha256:${'5'.repeat(64)}`, plain);
    assert.deepEqual(Object.keys(m.annotations ?? {}).sort(), [Annotation.chunkSize, Annotation.sourceDigest].sort());
    assert.equal(m.layers.length, 2);
    const key = ConvertedLayerMemo.key(['sha256:x'], 0, 20, 'zstd');
    assert.equal(ConvertedLayerMemo.key(['sha256:x'], 0, 20, 'zstd', []), key);
    assert.notEqual(ConvertedLayerMemo.key(['sha256:x'], 0, 20, 'zstd', ['sha256:d']), key);
  });

  it('the manifest lists the chunk-dict blobs used before its own and names the chunk-dict images', async () => {
    const a = await convert([layer([dirEntry, ...files])]);
    const dict = dictImage('lazy/a:1', a.blobs);
    const stored = chunkDictBlobs([dict], CHUNK);
    const b = await convert([layer([dirEntry, ...files, newFile])], stored);
    const config = { mediaType: MediaType.ociConfig, digest: `sha256:${'c'.repeat(64)}`, size: 2 };
    const m = lazyManifest(config, `sha256:${'5'.repeat(64)}`, b, {
      blobs: b.storedUsed.map((k) => stored[k].desc),
      images: [dict.digest],
    });
    assert.deepEqual(
      m.layers.slice(1).map((l) => l.digest),
      [`sha256:${a.blobs[0].id}`, `sha256:${b.blobs[0].id}`],
    );
    assert.deepEqual(m.layers[1], blobDescriptor(a.blobs[0]), "the older blob's descriptor, unchanged");
    assert.equal(m.annotations?.[Annotation.chunkDict], dict.digest);
  });
});

function blobOf(): ConvertedBlob {
  return {
    id: 'e'.repeat(64),
    size: 4096 + 120,
    uncompressedSize: 4096,
    chunkSize: CHUNK,
    tableOffset: 100,
    tableDigest: `sha256:${'f'.repeat(64)}`,
    chunks: [
      {
        uncompressedOffset: 0,
        uncompressedSize: 4096,
        compressedOffset: 0,
        compressedSize: 100,
        digest: randomBytes(32),
      },
    ],
    path: '/nonexistent',
    sourceLayer: `sha256:${'1'.repeat(64)}`,
  };
}

describe('convertImage with chunk-dict images', () => {
  /** A target that records what it is given. */
  function recordingTarget(registry?: string): ImageTarget & { stored: string[] } {
    const stored: string[] = [];
    return {
      ref: 'registry.test/lazy/b:2',
      registry,
      stored,
      putBlob: async (desc) => (stored.push(desc.digest), true),
      putManifest: async () => (stored.push('manifest'), 'sha256:0'),
      ...(registry ? { linkBlob: async (desc) => (stored.push(desc.digest), false) } : {}),
    };
  }
  const source: ImageSource = {
    ref: 'registry.test/library/b:2',
    resolve: () => Promise.reject(new Error('not to be resolved')),
    openBlob: () => Promise.reject(new Error('not to be read')),
  };
  const dict = dictImage('registry.test/lazy/a:1', [blobOf()]);

  for (const [what, target] of [
    ['a target in another registry', recordingTarget('elsewhere.test')],
    ['a target that is no registry', recordingTarget()],
  ] as const) {
    it(`refuses ${what} before anything is pushed, naming the chunk-dict image`, async () => {
      const work = tempDir('chunk-dict-image');
      made.push(work);
      await assert.rejects(
        convertImage(source, target, {
          chunkBits: CHUNK_BITS,
          platform: { os: 'linux', architecture: 'amd64' },
          chunkDicts: [dict],
          workDir: work,
          memoFile: null,
        }),
        (err: unknown) => err instanceof InputError && /chunk-dict "registry.test\/lazy\/a:1"/.test(err.message),
      );
      assert.deepEqual(target.stored, []);
    });
  }
});
