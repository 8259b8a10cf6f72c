// Response bodies as byte streams: chunks come through as the stream emitted them, a reader that falls
// behind pauses the stream, and ending a stream early ends what is under it. Over real streams: a
// PassThrough, and an HTTP response from a loopback server.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { describe, it } from 'node:test';
import { bodyChunks, readAtMost, releaseBody, streamOver } from '../../src/oci/byte-stream';

const tick = () => new Promise((r) => setImmediate(r));

async function take(it: AsyncIterator<Buffer>, n: number): Promise<Buffer[]> {
  const got: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const r = await it.next();
    assert.equal(r.done, false);
    got.push(r.value);
  }
  return got;
}

describe('bodyChunks', () => {
  it('hands out each chunk as emitted, not joined with the ones buffered after it', async () => {
    const source = new PassThrough();
    const chunks = [Buffer.from('alpha'), Buffer.from('beta'), Buffer.from('gamma')];
    for (const c of chunks) source.write(c);
    source.end();
    await tick();
    const got: Buffer[] = [];
    for await (const b of bodyChunks(source)) got.push(b);
    assert.deepEqual(got, chunks);
  });

  it('pauses the stream while the reader is a mebibyte behind, and resumes it as the reader catches up', async () => {
    const source = new PassThrough({ highWaterMark: 1 });
    const it = bodyChunks(source)[Symbol.asyncIterator]();
    const first = it.next();
    const piece = Buffer.alloc(256 << 10, 7);
    for (let i = 0; i < 6; i++) source.write(piece);
    await first;
    await tick();
    assert.equal(source.isPaused(), true);
    await take(it, 3);
    assert.equal(source.isPaused(), false);
    source.end();
    let rest = 0;
    for (let r = await it.next(); !r.done; r = await it.next()) rest += r.value.length;
    assert.equal(rest, 2 * piece.length);
  });

  it('fails with the stream error, and fails when the stream closes before its end', async () => {
    const broken = new PassThrough();
    broken.write('x');
    setImmediate(() => broken.destroy(new Error('connection reset')));
    await assert.rejects(async () => {
      for await (const _ of bodyChunks(broken));
    }, /connection reset/);

    const cut = new PassThrough();
    setImmediate(() => cut.destroy());
    await assert.rejects(async () => {
      for await (const _ of bodyChunks(cut));
    }, /ended early/);
  });

  it('destroys the stream when the reader stops early, and can be read only once', async () => {
    const source = new PassThrough();
    source.write('one');
    source.write('two');
    const stream = bodyChunks(source);
    for await (const _ of stream) break;
    assert.equal(source.destroyed, true);
    assert.throws(() => stream[Symbol.asyncIterator](), /read only once/);
  });
});

describe('streamOver', () => {
  it('ends the response under it when the reader stops early or destroys it unread', async () => {
    const server = http.createServer((_req, res) => {
      res.write(Buffer.alloc(64 << 10));
      // Never ends: only the client side can end this response.
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    const get = () =>
      new Promise<http.IncomingMessage>((resolve, reject) => http.get(url, resolve).on('error', reject));
    try {
      const read = await get();
      const early = streamOver(bodyChunks(read), read);
      for await (const b of early) {
        assert.ok(b.length > 0);
        break;
      }
      assert.equal(read.destroyed, true);

      const unread = await get();
      streamOver(bodyChunks(unread), unread).destroy();
      assert.equal(unread.destroyed, true);
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('passes the bytes and the end through, and a failure of the source', async () => {
    const bytes = [Buffer.from('a'), Buffer.from('bc')];
    const under = Readable.from([]);
    const got: Buffer[] = [];
    for await (const b of streamOver(Readable.from(bytes), under)) got.push(b);
    assert.deepEqual(Buffer.concat(got), Buffer.from('abc'));
    await assert.rejects(async () => {
      for await (const _ of streamOver(
        (async function* () {
          yield Buffer.from('x');
          throw new Error('digest mismatch');
        })(),
        under,
      ));
    }, /digest mismatch/);
  });
});

describe('readAtMost', () => {
  it('collects a body up to its bound, and stops reading, ending the source, as soon as it runs past', async () => {
    assert.deepEqual(
      await readAtMost(Readable.from([Buffer.from('abc'), Buffer.from('def')]), 6),
      Buffer.from('abcdef'),
    );
    assert.deepEqual(await readAtMost(Readable.from([]), 0), Buffer.alloc(0));
    let pulled = 0;
    const source = Readable.from(
      (function* () {
        for (;;) {
          pulled++;
          yield Buffer.alloc(1000);
        }
      })(),
    );
    assert.equal(await readAtMost(source, 2500), null);
    assert.ok(pulled <= 4, `read ${pulled} chunks of an endless source`);
    await tick();
    assert.equal(source.destroyed, true);
  });

  it('with a size hint gives the same bytes whether the body is shorter, exact or longer than the hint', async () => {
    const pieces = () => Readable.from([Buffer.from('abc'), Buffer.from('defg'), Buffer.from('h')]);
    for (const hint of [1, 4, 7, 8, 9, 100]) {
      assert.deepEqual(await readAtMost(pieces(), 100, hint), Buffer.from('abcdefgh'), `hint ${hint}`);
    }
    assert.equal(await readAtMost(pieces(), 7, 7), null, 'the bound holds with a hint');
  });
});

describe('releaseBody', () => {
  const PAGE = 4096;
  const body = () => Readable.from([Buffer.alloc(3 * PAGE, 0xaa), Buffer.alloc(3 * PAGE, 0xbb)]);

  it('gives back the memory of a body readAtMost collected into its own buffer: its pages read as zeros', async () => {
    const got = (await readAtMost(body(), 6 * PAGE, 6 * PAGE))!;
    assert.equal(got[0], 0xaa);
    releaseBody(got);
    // Whole pages only: the buffer need not start on a page, so a part of a page may stay at each end.
    const kept = got.reduce((n, b) => n + (b === 0 ? 0 : 1), 0);
    assert.ok(kept < 2 * PAGE, `${kept} bytes of the body were not released`);
  });

  it('puts a body of whole huge pages in huge pages where the kernel gives them, and gives them back', async (t) => {
    const thp = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    if (/\[never\]/.test(thp)) return t.skip(`transparent huge pages are off: ${thp.trim()}`);
    // This process's anonymous memory in huge pages, in KiB.
    const hugeKiB = () =>
      Number(/^AnonHugePages:\s+(\d+) kB$/m.exec(fs.readFileSync('/proc/self/smaps_rollup', 'utf8'))![1]);
    const MiB = 1 << 20;
    const size = 5 * MiB + 100; // two whole huge pages, then a tail on small pages
    const pieces = Array.from({ length: 81 }, (_, i) => Buffer.alloc(i < 80 ? 64 * 1024 : 100, i & 0xff));
    const before = hugeKiB();
    const got = (await readAtMost(Readable.from(pieces), size, size))!;
    const held = hugeKiB() - before;
    assert.ok(got.equals(Buffer.concat(pieces)), 'the bytes as they came');
    assert.ok(held >= 4096 && held < 6144, `${held} KiB in huge pages for a body of two whole ones and a tail`);
    releaseBody(got);
    assert.ok(hugeKiB() - before <= 0, 'its huge pages are given back at once');
    assert.ok(
      got.subarray(0, 5 * MiB).every((b) => b === 0),
      'they read as zeros',
    );
  });

  it('leaves any other buffer as it is', async () => {
    const joined = (await readAtMost(body(), 6 * PAGE))!; // without a size hint: joined, not its own buffer
    const mine = Buffer.alloc(6 * PAGE, 0xcc);
    releaseBody(joined);
    releaseBody(mine);
    assert.equal(joined[0], 0xaa);
    assert.equal(joined[joined.length - 1], 0xbb);
    assert.ok(mine.equals(Buffer.alloc(6 * PAGE, 0xcc)));
  });
});
