// Access traces and prefetch across images that share chunks (issue 20): image B, a rebuild of image
// A's one layer with one more file, converted with `--chunk-dict A` (B's manifest lists A's blob) and
// without it (the same chunks in a blob of B's own). A trace recorded on the chunk-dict B names A's
// blob and replays on a fresh node; on a node that has read A, replaying plain B's trace and the
// background prefetch of plain B copy the chunks A's cache file holds instead of fetching them; and
// `trace rebase` carries A's trace over to plain B by chunk digest.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RegistryClient } from '../../src/oci/registry';
import type { ImageManifest } from '../../src/oci/types';
import type { AccessTrace } from '../../src/storage/access-trace';
import { until } from '../lib/assertions';
import { execCli, execCliSync, publishLazy, runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { CHUNKS_PER_FILE, FILES, NEW_FILE_BYTES, rebuiltPair } from '../lib/rebuilt-images';
import { compareTreesInChild } from '../lib/tree-compare';

/** The files a workload reads: a trace of them is a part of the image, not all of it. */
const READ = 4;

interface Status {
  fetch: { bytesFetched: number; chunksFetched: number; verifyFailures: number };
  localCopies: { chunks: number; bytes: number; staleSources: number };
  mounts: Array<{ target: string; blobs: Array<{ cached: number }> }>;
}

describe('access traces and prefetch across images sharing chunks', { timeout: 600_000 }, () => {
  let registry: RegistryServer;
  let work: string;
  let socket: string;
  let daemon: Daemon | undefined;
  let refB: string;
  let lazyA: string;
  let lazyB: string;
  let dictB: string;
  let blobA: string;
  let n = 0;

  before(async () => {
    work = tempDir('trace-dedup');
    socket = path.join(work, 'control.sock');
    const { a, b } = rebuiltPair(work);
    refB = b.unpack(path.join(work, 'ref-b'));
    registry = await startRegistry();
    lazyA = publishLazy(a.ref, registry.host, 'a').lazy;
    const published = publishLazy(b.ref, registry.host, 'b');
    lazyB = published.lazy;
    dictB = `${registry.host}/lazy/b-dict:1`;
    execCliSync(['convert', '-q', '--chunk-dict', lazyA, published.source, dictB]);
    const client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    try {
      blobA = (JSON.parse((await client.getManifest('lazy/a', '1')).raw.toString('utf8')) as ImageManifest).layers[1]
        .digest;
    } finally {
      await client.close();
    }
  });
  after(async () => {
    await daemon?.stop();
    await registry?.stop();
    cleanup(work);
  });

  async function freshDaemon(cache: string, flags: string[] = []): Promise<Daemon> {
    await daemon?.stop();
    daemon = await startDaemon({
      cacheDir: path.join(work, cache),
      socket,
      flags: ['--transport', 'fanotify', '--metrics-address', '', ...flags],
    });
    return daemon;
  }
  const cli = (...args: string[]) => execCli(...args, '--socket', socket);
  const status = async (): Promise<Status> => JSON.parse((await cli('status', '--json')).stdout) as Status;
  const cachedOf = (s: Status, target: string) =>
    s.mounts.find((m) => m.target === target)?.blobs.reduce((k, b) => k + b.cached, 0) ?? 0;
  async function mount(ref: string): Promise<string> {
    const mnt = path.join(work, `mnt-${n++}`);
    fs.mkdirSync(mnt);
    await cli('mount', ref, mnt);
    return mnt;
  }
  const readFiles = (mnt: string, from: number, to: number) => {
    for (let i = from; i < to; i++) fs.readFileSync(path.join(mnt, 'data', `data-${i}`));
  };
  /** Reads `READ` files of `ref` on a fresh node and pushes the mount's trace. */
  async function recordTrace(ref: string, cache: string): Promise<AccessTrace> {
    await freshDaemon(cache);
    const mnt = await mount(ref);
    try {
      readFiles(mnt, 0, READ);
      await cli('trace', 'push', mnt);
      return JSON.parse((await cli('trace', 'show', '--json', mnt)).stdout) as AccessTrace;
    } finally {
      await cli('umount', mnt);
    }
  }

  it("a trace of the chunk-dict image names A's blob, passes the check and replays on a fresh node", async () => {
    const trace = await recordTrace(dictB, 'cache-dict-record');
    assert.ok(trace.blobs.includes(blobA), "B's blobs include A's");
    const inA = trace.entries.filter((e) => trace.blobs[e.blob] === blobA);
    assert.ok(inA.length >= READ * CHUNKS_PER_FILE, `${inA.length} entries in A's blob`);
    const d = await freshDaemon('cache-dict-replay');
    const mnt = await mount(dictB);
    try {
      await until(() => /"message":"access trace replayed"/.test(d.log), 'the trace replayed', 60_000);
      assert.doesNotMatch(d.log, /access trace in the registry ignored/);
      const replayed = await status();
      assert.equal(cachedOf(replayed, mnt), new Set(trace.entries.map((e) => `${e.blob}:${e.chunk}`)).size);
      readFiles(mnt, 0, READ);
      assert.equal((await status()).fetch.chunksFetched, replayed.fetch.chunksFetched, 'nothing fetched on demand');
      assert.deepEqual(await compareTreesInChild(refB, mnt), []);
    } finally {
      await cli('umount', mnt);
    }
  });

  it("replaying plain B's trace on a node that has read A copies A's chunks instead of fetching them", async () => {
    const trace = await recordTrace(lazyB, 'cache-plain-record');
    const d = await freshDaemon('cache-plain-replay');
    const a = await mount(lazyA);
    readFiles(a, 0, FILES);
    const afterA = await status();
    const b = await mount(lazyB);
    try {
      await until(() => /"message":"access trace replayed"/.test(d.log), 'the trace replayed', 60_000);
      const replayed = await status();
      const traced = new Set(trace.entries.map((e) => `${e.blob}:${e.chunk}`)).size;
      assert.equal(cachedOf(replayed, b), traced, 'the traced chunks are present');
      assert.equal(replayed.localCopies.chunks, traced, 'every one of them copied from A');
      assert.equal(replayed.fetch.bytesFetched, afterA.fetch.bytesFetched, 'none fetched');
      readFiles(b, 0, READ);
      assert.equal((await status()).fetch.bytesFetched, afterA.fetch.bytesFetched, 'nor on demand');
      assert.deepEqual(await compareTreesInChild(refB, b), []);
      assert.equal((await status()).fetch.verifyFailures, 0);
    } finally {
      await cli('umount', b);
      await cli('umount', a);
    }
  });

  it("background prefetch of plain B on a node that has read A fetches only B's new file", async () => {
    await freshDaemon('cache-prefetch', ['--prefetch', '2']);
    const a = await mount(lazyA);
    // Read whole (its own background prefetch may take part): all of A is cached.
    readFiles(a, 0, FILES);
    const chunksA = FILES * CHUNKS_PER_FILE;
    const afterA = await status();
    assert.equal(cachedOf(afterA, a), chunksA);
    const b = await mount(lazyB);
    try {
      const chunksB = chunksA + 1;
      let s = await status();
      for (const deadline = Date.now() + 60_000; cachedOf(s, b) < chunksB && Date.now() < deadline; s = await status())
        await new Promise((r) => setTimeout(r, 100));
      assert.equal(cachedOf(s, b), chunksB, 'B prefetched whole');
      const fetched = s.fetch.bytesFetched - afterA.fetch.bytesFetched;
      assert.equal(s.localCopies.chunks, chunksA, "A's chunks copied");
      assert.ok(fetched < 2 * NEW_FILE_BYTES, `B's prefetch fetched ${fetched} bytes, about its new file`);
      assert.deepEqual(await compareTreesInChild(refB, b), []);
    } finally {
      await cli('umount', b);
      await cli('umount', a);
    }
  });

  it("`trace rebase` carries A's trace over to plain B by chunk digest, and B replays it", async () => {
    const none = await runCliAsync(['trace', 'rebase', lazyA, lazyB]);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /the registry holds no access trace of this image/);
    const traceA = await recordTrace(lazyA, 'cache-rebase-record');
    const r = await runCliAsync(['trace', 'rebase', '--json', lazyA, lazyB]);
    assert.equal(r.status, 0, r.stderr);
    const result = JSON.parse(r.stdout) as { entries: number; leftOut: number; image: string };
    assert.equal(result.entries, traceA.entries.length, 'every chunk of A read is in B');
    assert.equal(result.leftOut, 0);
    const shown = JSON.parse((await execCli('trace', 'show', '--json', lazyB)).stdout) as AccessTrace;
    assert.equal(shown.image, result.image);
    assert.deepEqual(
      shown.entries.map((e) => e.digest),
      traceA.entries.map((e) => e.digest),
      "A's trace, in its order",
    );
    const d = await freshDaemon('cache-rebase-replay');
    const mnt = await mount(lazyB);
    try {
      await until(() => /"message":"access trace replayed"/.test(d.log), 'the trace replayed', 60_000);
      const replayed = await status();
      assert.equal(cachedOf(replayed, mnt), traceA.entries.length);
      readFiles(mnt, 0, READ);
      assert.equal((await status()).fetch.chunksFetched, replayed.fetch.chunksFetched, 'nothing fetched on demand');
    } finally {
      await cli('umount', mnt);
    }
  });
});
