// The node-wide chunk index end to end: image B, a rebuild of image A's one layer with one more small
// file (a new layer digest, converted without any chunk dictionary), mounted on a node that has read A:
// B's chunks that A's cache holds are copied from there, only the new file's are fetched, and every
// file of B is what `umoci unpack` gives. Also with A's blob evicted while B is mounted (B fetches
// again), and after a daemon restart (the index rebuilt from the cache files).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execCli, publishLazy, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { CHUNKS_PER_FILE, FILE_BYTES, FILES, NEW_FILE_BYTES, rebuiltPair } from '../lib/rebuilt-images';
import { compareTreesInChild } from '../lib/tree-compare';

interface Status {
  fetch: { bytesFetched: number; verifyFailures: number };
  localCopies: { chunks: number; bytes: number; savedBytes: number; staleSources: number; indexedChunks: number };
  metricsPort: number;
  mounts: Array<{ blobs: Array<{ cached: number }> }>;
}

for (const transport of ['fanotify', 'fuse'] as const) {
  describe(`chunks shared by two images, copied on the node (${transport})`, () => {
    let registry: RegistryServer;
    let work: string;
    let socket: string;
    let daemon: Daemon | undefined;
    let refA: string;
    let refB: string;
    let n = 0;

    before(async () => {
      work = tempDir(`chunk-copies-${transport}`);
      const { a, b } = rebuiltPair(work);
      refA = a.unpack(path.join(work, 'ref-a'));
      refB = b.unpack(path.join(work, 'ref-b'));
      registry = await startRegistry();
      publishLazy(a.ref, registry.host, 'a');
      publishLazy(b.ref, registry.host, 'b');
      socket = path.join(work, 'control.sock');
    });
    after(async () => {
      await daemon?.stop();
      await registry?.stop();
      cleanup(work);
    });

    const cli = (...args: string[]) => execCli(...args, '--socket', socket);
    const status = async (): Promise<Status> => JSON.parse((await cli('status', '--json')).stdout) as Status;
    const start = async (cache: string) => {
      daemon = await startDaemon({
        cacheDir: path.join(work, cache),
        socket,
        flags: ['--transport', transport, '--metrics-address', '127.0.0.1:0'],
      });
    };
    const mount = async (name: 'a' | 'b'): Promise<string> => {
      const mnt = path.join(work, `mnt-${n++}`);
      fs.mkdirSync(mnt);
      await cli('mount', `${registry.host}/lazy/${name}:1`, mnt);
      return mnt;
    };
    const readFiles = (mnt: string, from: number, to: number) => {
      for (let i = from; i < to; i++) fs.readFileSync(path.join(mnt, 'data', `data-${i}`));
    };

    it("B after A fetches only B's new file: the rest is copied from A's cache file", async (t) => {
      await start('cache-shared');
      const a = await mount('a');
      const b = await mount('b');
      try {
        assert.deepEqual(await compareTreesInChild(refA, a), []);
        const afterA = await status();
        assert.ok(afterA.fetch.bytesFetched > FILES * FILE_BYTES, 'A was fetched whole');
        assert.deepEqual(await compareTreesInChild(refB, b), []);
        const afterB = await status();
        const fetched = afterB.fetch.bytesFetched - afterA.fetch.bytesFetched;
        t.diagnostic(
          `A fetched ${afterA.fetch.bytesFetched} bytes; B after A ${fetched}: ${JSON.stringify(afterB.localCopies)}`,
        );
        assert.ok(fetched < 2 * NEW_FILE_BYTES, `B fetched ${fetched} bytes, about its new file`);
        assert.equal(afterB.localCopies.chunks, FILES * CHUNKS_PER_FILE);
        assert.equal(afterB.localCopies.bytes, FILES * FILE_BYTES);
        assert.ok(afterB.localCopies.savedBytes >= FILES * FILE_BYTES, JSON.stringify(afterB.localCopies));
        assert.equal(afterB.fetch.verifyFailures, 0);
        assert.match(
          (await cli('status')).stdout,
          new RegExp(`^copied ${FILES * CHUNKS_PER_FILE} chunks from other cached blobs instead of fetching `, 'm'),
        );
        const metrics = await (await fetch(`http://127.0.0.1:${afterB.metricsPort}/metrics`)).text();
        assert.match(metrics, new RegExp(`^erofs_ondemand_local_copy_chunks_total ${FILES * CHUNKS_PER_FILE}$`, 'm'));
        assert.match(
          metrics,
          new RegExp(`^erofs_ondemand_local_copy_saved_bytes_total ${afterB.localCopies.savedBytes}$`, 'm'),
        );
      } finally {
        await cli('umount', a);
        await cli('umount', b);
        await daemon?.stop();
      }
    });

    it("A's blob evicted while B is mounted: B fetches what it had not copied yet, and reads correctly", async () => {
      await start('cache-evicted');
      const a = await mount('a');
      const b = await mount('b');
      try {
        readFiles(a, 0, FILES);
        readFiles(b, 0, FILES / 2); // copied from A (and what read-ahead takes after them)
        const copied = await status();
        assert.ok(copied.localCopies.chunks >= (FILES / 2) * CHUNKS_PER_FILE, JSON.stringify(copied.localCopies));
        assert.ok(copied.localCopies.chunks < FILES * CHUNKS_PER_FILE, 'B has chunks left to read');
        await cli('umount', a);
        const gc = JSON.parse((await cli('gc', '--json', '--max-size', '0')).stdout) as { removed: string[] };
        assert.equal(gc.removed.length, 1, "A's blob, which no mounted image uses");
        const evicted = await status();
        assert.equal(
          evicted.localCopies.indexedChunks,
          evicted.mounts[0].blobs[0].cached,
          "only B's chunks are listed",
        );
        assert.deepEqual(await compareTreesInChild(refB, b), []);
        const after = await status();
        assert.equal(after.localCopies.chunks, copied.localCopies.chunks, 'nothing copied from the evicted blob');
        const fetched = after.fetch.bytesFetched - copied.fetch.bytesFetched;
        // Random data does not compress: a chunk fetched takes at least its uncompressed size.
        assert.ok(
          fetched >= FILES * FILE_BYTES - after.localCopies.bytes,
          `the rest of B was fetched: ${fetched} bytes`,
        );
        assert.equal(after.fetch.verifyFailures, 0);
      } finally {
        await cli('umount', b);
        await daemon?.stop();
      }
    });

    it('after a daemon restart, the index rebuilt from the cache files serves copies from a blob no mount uses', async () => {
      await start('cache-restart');
      const a = await mount('a');
      readFiles(a, 0, FILES);
      await cli('umount', a);
      await daemon?.stop();
      await start('cache-restart');
      const restarted = await status();
      assert.equal(restarted.localCopies.indexedChunks, FILES * CHUNKS_PER_FILE, "A's chunks, from its cache file");
      const b = await mount('b');
      try {
        assert.deepEqual(await compareTreesInChild(refB, b), []);
        const after = await status();
        assert.equal(after.localCopies.chunks, FILES * CHUNKS_PER_FILE);
        assert.ok(after.fetch.bytesFetched < 2 * NEW_FILE_BYTES, `B fetched ${after.fetch.bytesFetched} bytes`);
      } finally {
        await cli('umount', b);
        await daemon?.stop();
      }
    });
  });
}
