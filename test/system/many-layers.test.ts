// An image with 100 layers, each its own blob, mounted lazily through fanotify and FUSE: file-backed
// EROFS takes one `device` per blob, which mount(2)'s one-page option string cannot carry for so many.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { ImageStore } from '../../src/daemon/image-store';
import { mounts } from '../../src/mount/mountinfo';
import { closeRegistryClients } from '../../src/oci/open-image';
import { RegistryClient } from '../../src/oci/registry';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { FanotifyTransport } from '../../src/transport/fanotify';
import { FuseTransport } from '../../src/transport/fuse';
import type { CacheMissTransport } from '../../src/transport/transport';
import { runCliAsync } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { layeredImage, layerText, pushSmallImage } from '../lib/small-image';

const run = promisify(execFile);
const LAYERS = 100;

describe(`an image of ${LAYERS} layers`, { timeout: 300_000 }, () => {
  let registry: RegistryServer;
  let work: string;
  let lazy: string;

  before(async () => {
    work = tempDir('many-layers');
    registry = await startRegistry();
    const client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    await pushSmallImage(client, 'library/layers', '1', layeredImage(LAYERS));
    lazy = `${registry.host}/lazy/layers:1`;
    // Not blocking: the registry's log pipe is read by this process. Its own memo of converted layers.
    const convert = await runCliAsync(['convert', '-q', `${registry.host}/library/layers:1`, lazy], {
      env: { XDG_CACHE_HOME: work },
    });
    assert.equal(convert.status, 0, convert.stderr);
  });
  after(async () => {
    await closeRegistryClients();
    await registry?.stop();
    cleanup(work);
  });

  const transports: Record<string, (cache: string) => CacheMissTransport> = {
    fanotify: () => new FanotifyTransport(),
    fuse: (cache) => new FuseTransport({ dir: path.join(cache, 'fuse'), backing: 'file' }),
  };
  for (const [name, create] of Object.entries(transports)) {
    it(`${name}: mounts it, one device per layer, and reads the first and the last layer's files`, async () => {
      const cache = path.join(work, `cache-${name}`);
      const store = new ImageStore(cache, new BlobStore(path.join(cache, 'blobs'), new ChunkFetcher()));
      const image = await store.prepare(lazy);
      assert.equal(image.blobs.length, LAYERS, 'one blob per layer');
      const transport = create(cache);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      try {
        await transport.mount(image, mnt);
        // Read by another process: with FUSE this one answers the reads.
        for (const i of [0, LAYERS - 1]) {
          const { stdout } = await run('cat', [path.join(mnt, 'layers', `${i}.txt`)]);
          assert.equal(stdout, layerText(i));
        }
        const { stdout: listed } = await run('ls', [path.join(mnt, 'layers')]);
        assert.equal(listed.trim().split('\n').length, LAYERS);
      } finally {
        if (mounts().some((m) => m.target === mnt)) await transport.unmount(mnt);
        await transport.close();
      }
    });
  }
});
