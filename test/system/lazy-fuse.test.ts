// End to end on this kernel through FUSE: a converted debootstrap image in a real registry, mounted
// lazily with EROFS over this process's FUSE files (file-backed, and through loop devices), programs
// run from it and every file compared with `umoci unpack` of the source. This process serves the FUSE
// requests: everything that touches the mounts runs in child processes, asynchronously.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type http from 'node:http';
import { ImageStore } from '../../src/daemon/image-store';
import { mounts } from '../../src/mount/mountinfo';
import { closeRegistryClients } from '../../src/oci/open-image';
import { BlobStore } from '../../src/storage/blob-store';
import { ChunkFetcher } from '../../src/storage/chunk-fetcher';
import { FuseTransport, FUSE_FSTYPE, fuseTransport } from '../../src/transport/fuse';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { minbaseImage } from '../lib/test-images';
import { compareTreesInChild } from '../lib/tree-compare';
import { publishLazy } from '../lib/harness';

const run = promisify(execFile);

async function dropCaches(): Promise<void> {
  await run('sh', ['-c', 'sync && echo 3 > /proc/sys/vm/drop_caches']);
}

async function sha256(file: string): Promise<string> {
  return (await run('sha256sum', [file])).stdout.split(' ')[0];
}

describe('lazy mount through FUSE', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let shm: string;
  let reference: string;

  before(async () => {
    const image = minbaseImage();
    work = tempDir('lazy-fuse');
    shm = fs.mkdtempSync('/dev/shm/eo-lazy-fuse-');
    reference = image.unpack(path.join(work, 'reference'));
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    publishLazy(image.ref, registry.host, 'minbase');
  });
  after(async () => {
    await closeRegistryClients();
    await proxy?.stop();
    await registry?.stop();
    cleanup(work, shm);
  });

  for (const backing of ['file', 'loop'] as const) {
    it(`${backing}: runs a program fetching a small share of the image, reads every file correctly, and leaves nothing mounted`, async () => {
      const fetcher = new ChunkFetcher();
      const cache = path.join(work, `cache-${backing}`);
      const store = new ImageStore(cache, new BlobStore(path.join(cache, 'blobs'), fetcher));
      const image = await store.prepare(`${registry.host}/library/minbase:1`);
      let misses = 0;
      const transport = new FuseTransport({ dir: path.join(cache, 'fuse'), backing, onMiss: () => misses++ });
      assert.equal(transport.backing, backing);
      assert.equal(fuseTransport.zerosWithoutDaemon, false);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      const blobFiles = image.blobs.map((b) => transport.blobFile(b));
      try {
        await transport.mount(image, mnt);
        const m = mounts().find((e) => e.target === mnt)!;
        assert.equal(m.fstype, 'erofs');
        if (backing === 'loop') {
          assert.match(m.source, /^\/dev\/loop\d+$/);
          const { stdout } = await run('losetup', [
            '--list',
            '--noheadings',
            '--output',
            'NAME,BACK-FILE,DIO,RO,AUTOCLEAR',
          ]);
          for (const f of blobFiles)
            assert.match(
              stdout,
              new RegExp(`^/dev/loop\\d+ +${f} +1 +1 +1$`, 'm'),
              `a read-only direct-I/O autoclear loop device over ${f}`,
            );
        } else {
          assert.equal(m.source, image.bootstrapPath, 'file-backed on the bootstrap file');
        }
        assert.ok(transport.bdis.has(mnt), 'EROFS read-ahead raised');
        assert.equal(fs.readFileSync(path.join(transport.bdis.get(mnt)!, 'read_ahead_kb'), 'utf8').trim(), '4096');
        const total = image.blobs.reduce((n, b) => n + b.index.chunks.reduce((s, c) => s + c.compressedSize, 0), 0);
        const { stdout } = await run('chroot', [mnt, '/opt/app/run.sh']);
        assert.equal(stdout, 'lazy hello\n');
        const afterRun = fetcher.stats.bytesFetched;
        assert.ok(afterRun > 0 && afterRun < total * 0.2, `a small workload fetched ${afterRun} of ${total} bytes`);
        assert.ok(misses > 0, 'misses reported');
        assert.deepEqual(await compareTreesInChild(reference, mnt), []);
        assert.equal(fetcher.stats.verifyFailures, 0);
        // The FUSE directory lists the attached blobs (read by another process).
        const { stdout: ls } = await run('ls', [transport.dir]);
        assert.deepEqual(ls.trim().split('\n').sort(), image.blobs.map((b) => path.basename(b.path)).sort());
      } finally {
        await transport.unmount(mnt);
        await transport.close();
      }
      assert.ok(!mounts().some((e) => e.target === mnt || e.target === transport.dir), 'nothing left mounted');
      const { stdout: loops } = await run('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE']);
      assert.ok(!loops.includes(transport.dir), `loop devices released: ${loops}`);
    });
  }

  it('gives EIO for data the registry altered, caches nothing wrong, then reads correctly', async () => {
    const store = new ImageStore(
      path.join(work, 'cache-corrupt'),
      new BlobStore(path.join(path.join(work, 'cache-corrupt'), 'blobs'), new ChunkFetcher()),
    );
    const image = await store.prepare(`${proxy.host}/lazy/minbase:1`);
    const transport = new FuseTransport({ dir: path.join(work, 'cache-corrupt', 'fuse') });
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await transport.mount(image, mnt);
    try {
      proxy.add({ method: 'GET', path: /\/v2\/lazy\/minbase\/blobs\//, times: 1000, fault: { kind: 'corrupt' } });
      await assert.rejects(run('sha256sum', [path.join(mnt, 'opt', 'app', 'bash-copy')]), (err: { stderr: string }) =>
        /Input\/output error/.test(err.stderr),
      );
      proxy.reset();
      // Read-ahead chunks that shared the corrupted response may be cached, verified: never a wrong one.
      for (const b of image.blobs) assert.deepEqual(await b.verify(), [], 'nothing wrong was cached');
      assert.ok(
        image.blobs.reduce((n, b) => n + b.presentChunks, 0) < image.blobs.reduce((n, b) => n + b.totalChunks, 0),
      );
      assert.equal(
        await sha256(path.join(mnt, 'opt', 'app', 'bash-copy')),
        await sha256(path.join(reference, 'opt', 'app', 'bash-copy')),
      );
    } finally {
      await transport.unmount(mnt);
      await transport.close();
    }
  });

  it('a read of cached data completes while another read waits for a stalled fetch', async () => {
    const store = new ImageStore(
      path.join(work, 'cache-parallel'),
      new BlobStore(path.join(path.join(work, 'cache-parallel'), 'blobs'), new ChunkFetcher()),
    );
    const image = await store.prepare(`${proxy.host}/lazy/minbase:1`);
    const transport = new FuseTransport({ dir: path.join(work, 'cache-parallel', 'fuse') });
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await transport.mount(image, mnt);
    const stalled: http.ServerResponse[] = [];
    try {
      const cached = path.join(mnt, 'usr', 'bin', 'bash');
      const missing = path.join(mnt, 'usr', 'bin', 'perl');
      const expectedCached = await sha256(path.join(reference, 'usr', 'bin', 'bash'));
      assert.equal(await sha256(cached), expectedCached); // now in the blob cache
      await dropCaches(); // and out of the page cache: the next read is a FUSE READ again
      proxy.reset();
      proxy.add({
        method: 'GET',
        path: /\/v2\/lazy\/minbase\/blobs\//,
        times: 1,
        fault: { kind: 'respond', respond: (_req, res) => stalled.push(res) },
      });
      const order: string[] = [];
      const slow = sha256(missing).then((sum) => (order.push('missing'), sum));
      for (let i = 0; i < 400 && stalled.length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal(stalled.length, 1, 'the fetch for the missing file is stalled');
      assert.equal(await sha256(cached), expectedCached);
      order.push('cached');
      // Release the stall: a 503, which the fetcher retries.
      stalled[0].writeHead(503).end();
      assert.equal(await slow, await sha256(path.join(reference, 'usr', 'bin', 'perl')));
      assert.deepEqual(order, ['cached', 'missing']);
    } finally {
      for (const res of stalled) if (!res.writableEnded) res.destroy();
      proxy.reset();
      await transport.unmount(mnt);
      await transport.close();
    }
  });

  it('serves a cache on tmpfs (the bootstrap through FUSE too: tmpfs cannot back an EROFS mount), to two mounts of one image', async () => {
    const cache = path.join(shm, 'cache');
    const store = new ImageStore(cache, new BlobStore(path.join(cache, 'blobs'), new ChunkFetcher()));
    const image = await store.prepare(`${registry.host}/lazy/minbase:1`);
    const transport = new FuseTransport({ dir: path.join(cache, 'fuse'), backing: 'file' });
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    const second = fs.mkdtempSync(path.join(work, 'mnt-'));
    await transport.mount(image, mnt);
    await transport.mount(image, second);
    try {
      const m = mounts().find((e) => e.target === mnt)!;
      assert.equal(m.source, path.join(transport.dir, `bootstrap-${path.basename(image.bootstrapPath)}`));
      assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
      // The later mount goes; the first, sharing its FUSE files, reads on (metadata not cached yet).
      await transport.unmount(second);
      await dropCaches();
      assert.equal(
        await sha256(path.join(mnt, 'opt', 'app', 'bash-copy')),
        await sha256(path.join(reference, 'opt', 'app', 'bash-copy')),
      );
      assert.equal((await run('ls', [path.join(mnt, 'usr', 'share')])).stdout.includes('zoneinfo'), true);
    } finally {
      if (mounts().some((e) => e.target === second)) await transport.unmount(second);
      await transport.unmount(mnt);
      await transport.close();
    }
    assert.ok(!mounts().some((e) => e.target === transport.dir && e.fstype === FUSE_FSTYPE));
  });
});
