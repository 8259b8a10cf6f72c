// End to end on this kernel: a converted debootstrap image in a real registry, found through the
// source image's referrer, mounted lazily (file-backed EROFS + fanotify pre-content), programs run
// from it, and every file compared with `umoci unpack` of the source.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { ImageStore } from '../../src/daemon/image-store';
import { closeRegistryClients } from '../../src/oci/open-image';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { FanotifyTransport } from '../../src/transport/fanotify';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { minbaseImage } from '../lib/test-images';
import { compareTreesInChild } from '../lib/tree-compare';
import { publishLazy } from '../lib/harness';

const run = promisify(execFile);

describe('lazy mount through fanotify', () => {
  let registry: RegistryServer;
  let work: string;
  let reference: string;

  before(async () => {
    const image = minbaseImage();
    work = tempDir('lazy');
    reference = image.unpack(path.join(work, 'reference'));
    registry = await startRegistry();
    publishLazy(image.ref, registry.host, 'minbase');
  });
  after(async () => {
    await closeRegistryClients();
    await registry?.stop();
    cleanup(work);
  });

  it('runs a program fetching a small share of the image, then reads every file correctly', async () => {
    const fetcher = new ChunkFetcher();
    const store = new ImageStore(
      path.join(work, 'cache'),
      new BlobStore(path.join(path.join(work, 'cache'), 'blobs'), fetcher),
    );
    const image = await store.prepare(`${registry.host}/library/minbase:1`); // the source ref: found via its referrer
    const transport = new FanotifyTransport();
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await transport.mount(image, mnt);
    try {
      const total = image.blobs.reduce((n, b) => n + b.index.chunks.reduce((m, c) => m + c.compressedSize, 0), 0);
      const { stdout } = await run('chroot', [mnt, '/opt/app/run.sh']);
      assert.equal(stdout, 'lazy hello\n');
      const afterRun = fetcher.stats.bytesFetched;
      assert.ok(afterRun > 0 && afterRun < total * 0.2, `a small workload fetched ${afterRun} of ${total} bytes`);
      assert.deepEqual(await compareTreesInChild(reference, mnt), []);
      assert.equal(fetcher.stats.verifyFailures, 0);
    } finally {
      await transport.unmount(mnt);
      await transport.close();
    }
  });
});
