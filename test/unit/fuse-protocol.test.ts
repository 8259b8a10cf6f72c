// The FUSE protocol without the kernel: requests as bytes into BlobFs, replies out. Garbage never
// crashes it, and every request that can be answered is answered exactly once.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { it } from 'node:test';
import fc from 'fast-check';
import type { RangeSource } from '../../src/storage/range-source';
import { BlobFs } from '../../src/transport/fuse';
import * as P from '../../src/transport/fuse-protocol';

function collect() {
  const replies: Buffer[] = [];
  const fs = new BlobFs((r) => replies.push(Buffer.from(r)));
  return { fs, replies };
}

function header(r: Buffer) {
  return { len: r.readUInt32LE(0), error: r.readInt32LE(4), unique: r.readBigUInt64LE(8) };
}

const flush = () => new Promise((r) => setTimeout(r, 10));

function memoryFile(data: Buffer, opts: { fail?: boolean; gate?: Promise<void> } = {}): RangeSource {
  return {
    size: data.length,
    what: 'memory',
    serve: async (start, end, sink) => {
      await opts.gate;
      if (opts.fail) throw new Error('chunk does not match its digest');
      if (sink.kind === 'buffer') data.copy(sink.buf, sink.offset, start, end);
      return 1;
    },
  };
}

function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(v.length * 4);
  v.forEach((x, i) => b.writeUInt32LE(x, i * 4));
  return b;
}

function readBody(fh: bigint, offset: number, size: number): Buffer {
  const b = Buffer.alloc(40);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  return b;
}

it('negotiates 7.31 at most, with async reads, async direct I/O and 1 MiB requests, and refuses old kernels', () => {
  const { fs, replies } = collect();
  const all = 0xffffffff;
  fs.handle(
    P.encodeRequest({ opcode: P.Op.INIT, unique: 1n }, Buffer.concat([u32s(7, 45, 131072, all), Buffer.alloc(48)])),
  );
  assert.equal(replies.length, 1);
  const r = replies[0];
  assert.deepEqual(header(r), { len: 16 + 64, error: 0, unique: 1n });
  assert.equal(r.readUInt32LE(16), 7);
  assert.equal(r.readUInt32LE(20), 31);
  const flags = r.readUInt32LE(28);
  assert.equal(flags, P.InitFlag.ASYNC_READ | P.InitFlag.ASYNC_DIO | P.InitFlag.PARALLEL_DIROPS | P.InitFlag.MAX_PAGES);
  assert.equal(r.readUInt16LE(16 + 28), 256, 'max_pages');
  // Only flags the kernel offers are taken.
  fs.handle(
    P.encodeRequest(
      { opcode: P.Op.INIT, unique: 2n },
      Buffer.concat([u32s(7, 26, 131072, P.InitFlag.ASYNC_READ), Buffer.alloc(48)]),
    ),
  );
  assert.equal(replies[1].readUInt32LE(20), 26);
  assert.equal(replies[1].readUInt32LE(28), P.InitFlag.ASYNC_READ);
  fs.handle(
    P.encodeRequest({ opcode: P.Op.INIT, unique: 3n }, Buffer.concat([u32s(7, 22, 131072, 0), Buffer.alloc(48)])),
  );
  assert.equal(header(replies[2]).error, -P.Errno.EPROTO);
});

it('lists, looks up, opens and reads attached files; errors for the rest', async () => {
  const { fs, replies } = collect();
  const data = randomBytes(10_000);
  fs.attach('a'.repeat(64), memoryFile(data));
  const last = () => replies[replies.length - 1];
  fs.handle(
    P.encodeRequest({ opcode: P.Op.LOOKUP, unique: 10n, nodeid: P.ROOT_ID }, Buffer.from(`${'a'.repeat(64)}\0`)),
  );
  assert.equal(header(last()).error, 0);
  const ino = Number(last().readBigUInt64LE(16));
  assert.equal(Number(last().readBigUInt64LE(16 + 40 + 8)), data.length, 'size');
  assert.equal(last().readUInt32LE(16 + 40 + 60), P.S_IFREG | 0o444, 'mode');
  fs.handle(P.encodeRequest({ opcode: P.Op.LOOKUP, unique: 11n, nodeid: P.ROOT_ID }, Buffer.from('missing\0')));
  assert.equal(header(last()).error, -P.Errno.ENOENT);
  fs.handle(P.encodeRequest({ opcode: P.Op.OPEN, unique: 12n, nodeid: ino }, u32s(0, 0)));
  assert.equal(last().readUInt32LE(24), P.OpenFlag.DIRECT_IO | P.OpenFlag.NOFLUSH);
  fs.handle(P.encodeRequest({ opcode: P.Op.OPEN, unique: 13n, nodeid: ino }, u32s(2, 0)));
  assert.equal(header(last()).error, -P.Errno.EROFS, 'no writing');
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 14n, nodeid: ino }, readBody(0n, 9000, 4096)));
  await flush();
  assert.deepEqual(header(last()), { len: 16 + 1000, error: 0, unique: 14n }, 'short at end of file');
  assert.ok(last().subarray(16).equals(data.subarray(9000)));
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 15n, nodeid: ino }, readBody(0n, 2 ** 60, 4096)));
  await flush();
  assert.deepEqual(header(last()), { len: 16, error: 0, unique: 15n }, 'past the end: nothing');
  fs.handle(P.encodeRequest({ opcode: P.Op.OPENDIR, unique: 16n, nodeid: P.ROOT_ID }, u32s(0, 0)));
  const fh = last().readBigUInt64LE(16);
  fs.handle(P.encodeRequest({ opcode: P.Op.READDIR, unique: 17n, nodeid: P.ROOT_ID }, readBody(fh, 0, 4096)));
  const names: string[] = [];
  for (let at = 16; at < last().length;) {
    const len = last().readUInt32LE(at + 16);
    names.push(
      last()
        .subarray(at + 24, at + 24 + len)
        .toString(),
    );
    at += (24 + len + 7) & ~7;
  }
  assert.deepEqual(names, ['.', '..', 'a'.repeat(64)]);
  fs.handle(P.encodeRequest({ opcode: P.Op.READDIR, unique: 18n, nodeid: P.ROOT_ID }, readBody(fh, 3, 4096)));
  assert.equal(header(last()).len, 16, 'end of directory');
  fs.handle(
    P.encodeRequest(
      { opcode: P.Op.GETXATTR, unique: 19n, nodeid: ino },
      Buffer.concat([u32s(100, 0), Buffer.from('user.x\0')]),
    ),
  );
  assert.equal(header(last()).error, -P.Errno.ENODATA);
  fs.handle(P.encodeRequest({ opcode: P.Op.SETATTR, unique: 20n, nodeid: ino }, Buffer.alloc(88)));
  assert.equal(header(last()).error, -P.Errno.ENOSYS, 'unknown opcodes: ENOSYS');
  fs.handle(P.encodeRequest({ opcode: 9999, unique: 21n, nodeid: ino }));
  assert.equal(header(last()).error, -P.Errno.ENOSYS);
  const before = replies.length;
  fs.handle(P.encodeRequest({ opcode: P.Op.FORGET, unique: 22n, nodeid: ino }, Buffer.alloc(8)));
  fs.handle(P.encodeRequest({ opcode: P.Op.INTERRUPT, unique: 23n }, Buffer.alloc(8)));
  assert.equal(replies.length, before, 'FORGET and INTERRUPT take no reply');
  // Detached: no longer found or opened, and a read through a cached entry fails with EIO.
  fs.detach('a'.repeat(64));
  fs.handle(
    P.encodeRequest({ opcode: P.Op.LOOKUP, unique: 24n, nodeid: P.ROOT_ID }, Buffer.from(`${'a'.repeat(64)}\0`)),
  );
  assert.equal(header(last()).error, -P.Errno.ENOENT);
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 25n, nodeid: ino }, readBody(0n, 0, 4096)));
  await flush();
  assert.equal(header(last()).error, -P.Errno.EIO);
});

it('a read whose chunks cannot be fetched and verified is EIO, never data', async () => {
  const { fs, replies } = collect();
  fs.attach('bad', memoryFile(randomBytes(8192), { fail: true }));
  fs.handle(P.encodeRequest({ opcode: P.Op.LOOKUP, unique: 1n, nodeid: P.ROOT_ID }, Buffer.from('bad\0')));
  const ino = Number(replies[0].readBigUInt64LE(16));
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 2n, nodeid: ino }, readBody(0n, 0, 8192)));
  await flush();
  assert.deepEqual(header(replies[1]), { len: 16, error: -P.Errno.EIO, unique: 2n });
});

it('close answers every pending request with EIO, and later completions are dropped', async () => {
  const { fs, replies } = collect();
  let open = () => undefined as void;
  fs.attach('slow', memoryFile(randomBytes(8192), { gate: new Promise<void>((r) => (open = r)) }));
  fs.handle(P.encodeRequest({ opcode: P.Op.LOOKUP, unique: 1n, nodeid: P.ROOT_ID }, Buffer.from('slow\0')));
  const ino = Number(replies[0].readBigUInt64LE(16));
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 2n, nodeid: ino }, readBody(0n, 0, 4096)));
  fs.handle(P.encodeRequest({ opcode: P.Op.READ, unique: 3n, nodeid: ino }, readBody(0n, 4096, 4096)));
  await flush();
  assert.equal(fs.pendingCount, 2);
  fs.close();
  assert.deepEqual(
    replies.slice(1).map((r) => [header(r).unique, header(r).error]),
    [
      [2n, -P.Errno.EIO],
      [3n, -P.Errno.EIO],
    ],
  );
  open();
  await flush();
  assert.equal(replies.length, 3, 'nothing more after close');
});

it('malformed requests: truncated, inconsistent lengths, missing NULs, random bytes — never a throw, never two answers', () => {
  const { fs, replies } = collect();
  fs.attach('f', memoryFile(randomBytes(100)));
  // Too short for a header: nothing can be answered.
  fs.handle(Buffer.alloc(0));
  fs.handle(randomBytes(39));
  assert.equal(replies.length, 0);
  // Header length disagreeing with the bytes: EINVAL, to that unique.
  const wrongLen = P.encodeRequest({ opcode: P.Op.GETATTR, unique: 5n, nodeid: 1 });
  wrongLen.writeUInt32LE(1000, 0);
  fs.handle(wrongLen);
  assert.deepEqual(header(replies[0]), { len: 16, error: -P.Errno.EINVAL, unique: 5n });
  // Bodies too short for their opcode, names without NUL.
  for (const [opcode, body] of [
    [P.Op.READ, Buffer.alloc(8)],
    [P.Op.INIT, Buffer.alloc(4)],
    [P.Op.LOOKUP, Buffer.from('no-nul')],
    [P.Op.GETXATTR, Buffer.concat([u32s(10, 0), Buffer.from('user.x')])],
    [P.Op.BATCH_FORGET, u32s(1000, 0)],
    [P.Op.OPEN, Buffer.alloc(0)],
  ] as Array<[number, Buffer]>) {
    const n: number = replies.length;
    fs.handle(P.encodeRequest({ opcode, unique: 100n + BigInt(opcode), nodeid: 1 }, body));
    const expected = opcode === P.Op.BATCH_FORGET ? 0 : 1;
    assert.equal(replies.length - n, expected, `opcode ${opcode}`);
    if (expected) assert.equal(header(replies[replies.length - 1]).error, -P.Errno.EINVAL);
  }
  assert.throws(() => P.parseHeader(Buffer.alloc(10)), P.ProtocolError);
  // Random requests with valid framing: at most one answer each, to the right unique.
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 60 }),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      fc.integer({ min: 0, max: 5 }),
      fc.uint8Array({ maxLength: 200 }),
      (opcode, unique, nodeid, body) => {
        const n = replies.length;
        fs.handle(P.encodeRequest({ opcode, unique, nodeid }, Buffer.from(body)));
        assert.ok(replies.length - n <= 1);
        if (replies.length > n) assert.equal(header(replies[replies.length - 1]).unique, unique);
      },
    ),
    { numRuns: 2000 },
  );
  // Pure garbage.
  for (let i = 0; i < 2000; i++) fs.handle(randomBytes(Math.floor(Math.random() * 300)));
});
