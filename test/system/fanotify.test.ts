// fanotify pre-content events on a file-backed EROFS mount (Linux 6.14+): the blob starts as an
// empty sparse file and is filled range by range as the kernel asks.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { native, type FanotifyGroup } from '../../src/native';
import { FanotifyTransport } from '../../src/transport/fanotify';
import type { FdKeeper } from '../../src/transport/transport';
import { mountFileBacked, unmount } from '../../src/mount/file-backed';
import { makeKitchenSink } from '../lib/fixtures';
import { build, cleanup, tempDir } from '../lib/image';
import { compareTreesInChild } from '../lib/tree-compare';

const run = promisify(execFile);

describe('fanotify pre-content transport primitives', () => {
  let work: string;
  let src: string;
  let built: ReturnType<typeof build>;

  before(() => {
    work = tempDir('fanotify');
    src = path.join(work, 'src');
    fs.mkdirSync(src);
    makeKitchenSink(src);
    built = build(src);
  });
  after(() => cleanup(work, built.outDir));

  async function withLazyMount(
    answer: (g: FanotifyGroup, e: { fd: number; offset: number; count: number }) => void,
    fn: (mnt: string) => Promise<void>,
  ) {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const blob = path.join(cache, 'blob');
    fs.writeFileSync(blob, '');
    fs.truncateSync(blob, built.blob!.size);
    const g = new native.FanotifyGroup();
    g.mark(blob); // before mounting: a mark set later sees no events
    g.start((e) => answer(g, e));
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    mountFileBacked({ bootstrap: built.bootstrapPath, blobs: [blob], target: mnt });
    try {
      await fn(mnt);
    } finally {
      unmount(mnt);
      g.close();
    }
  }

  it('fills the ranges the kernel asks for, and the mount reads back the source tree', async () => {
    const truth = fs.openSync(built.blobPath!, 'r');
    let events = 0;
    await withLazyMount(
      (g, e) => {
        events++;
        assert.ok(e.offset >= 0 && e.count > 0, 'events carry a range');
        const start = e.offset - (e.offset % 4096);
        const end = Math.min(built.blob!.size, Math.ceil((e.offset + e.count) / 4096) * 4096);
        const buf = Buffer.alloc(end - start);
        fs.readSync(truth, buf, 0, buf.length, start);
        fs.writeSync(e.fd, buf, 0, buf.length, start);
        g.respond(e.fd, 0);
      },
      async (mnt) => {
        assert.deepEqual(await compareTreesInChild(src, mnt), []);
      },
    );
    fs.closeSync(truth);
    assert.ok(events > 0);
  });

  it('a denied range reads as EIO, never as zeros', async () => {
    await withLazyMount(
      (g, e) => g.respond(e.fd, 5),
      async (mnt) => {
        await assert.rejects(run('cat', [path.join(mnt, 'one-chunk')]), (err: { stderr: string }) =>
          /Input\/output error/.test(err.stderr),
        );
        // Metadata needs no blob: listing still works.
        assert.ok(fs.readdirSync(mnt).includes('one-chunk'));
      },
    );
  });

  it("allows in the reader thread the reads of a watched file's present chunks, and reports their first reads", async () => {
    const cache = fs.mkdtempSync(path.join(work, 'cache-'));
    const blob = path.join(cache, 'blob');
    fs.copyFileSync(built.blobPath!, blob); // the bytes are right whoever allows the read
    const size = built.blob!.size;
    const CHUNK = 64 << 10;
    const count = Math.ceil(size / CHUNK);
    const extents = new Float64Array(count * 2);
    for (let i = 0; i < count; i++) extents.set([i * CHUNK, Math.min(size, (i + 1) * CHUNK)], i * 2);
    const present = new Uint8Array(count).fill(1);
    present[0] = 0; // only reads touching chunk 0 reach JS
    const g = new native.FanotifyGroup();
    const toJs: Array<{ offset: number; count: number }> = [];
    g.mark(blob);
    g.watch(blob, extents, present);
    const ino = fs.statSync(blob).ino;
    g.start((e) => {
      toJs.push({ offset: e.offset, count: e.count });
      g.respond(e.fd, 0);
    });
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    mountFileBacked({ bootstrap: built.bootstrapPath, blobs: [blob], target: mnt });
    try {
      assert.deepEqual(await compareTreesInChild(src, mnt), []);
    } finally {
      unmount(mnt);
    }
    const { touches, hits } = g.drain();
    g.close();
    assert.ok(toJs.length > 0, 'chunk 0 was read');
    for (const e of toJs) assert.ok(e.offset < CHUNK, `event at ${e.offset} (${e.count} bytes) touches chunk 0`);
    assert.equal(hits[0], ino);
    assert.ok(hits[1] > 0, 'reads allowed in the reader thread');
    const firstReads = [...touches].filter((_, i) => i % 2 === 1);
    assert.ok(firstReads.length > 0);
    assert.ok([...touches].filter((_, i) => i % 2 === 0).every((id) => id === ino));
    assert.equal(new Set(firstReads).size, firstReads.length, 'each chunk reported once');
    assert.ok(!firstReads.includes(0));
    assert.equal(g.drain().touches.length, 0, 'drained');
  });

  it('adopts only a fanotify group fd; sweeps only before reading', () => {
    const file = path.join(work, 'not-a-group');
    fs.writeFileSync(file, '');
    const fd = fs.openSync(file, 'r');
    try {
      assert.throws(() => new native.FanotifyGroup(fd), /inherited fd \d+ is .*not-a-group, not a fanotify group/);
    } finally {
      fs.closeSync(fd);
    }
    const g = new native.FanotifyGroup();
    try {
      assert.ok(g.fd >= 0);
      assert.equal(g.sweep(), 0, 'a new group has no event left unanswered');
      g.start(() => undefined);
      assert.throws(() => g.sweep(), /after the reader started/);
    } finally {
      g.close();
    }
    assert.equal(g.fd, -1);
  });

  it('a transport handed an fd that is no fanotify group drops it and keeps a new group', async () => {
    const file = path.join(work, 'not-a-group-either');
    fs.writeFileSync(file, '');
    const calls: string[] = [];
    const keeper: FdKeeper = {
      kind: 'systemd',
      inherited: (name) => (name === 'fanotify' ? fs.openSync(file, 'r') : undefined),
      keep: (name, fd) => (calls.push(`keep ${name} ${fd >= 0}`), true),
      drop: (name) => void calls.push(`drop ${name}`),
    };
    const t = new FanotifyTransport({}, keeper);
    try {
      assert.deepEqual(t.settings(), { inherited: false });
      assert.deepEqual(calls, ['drop fanotify', 'keep fanotify true']);
    } finally {
      await t.close();
    }
    assert.deepEqual(calls.slice(2), ['drop fanotify'], 'a planned stop drops the kept group');
  });
});
