// The addon's cachefiles side, as far as a kernel without CACHEFILES allows: the message parser
// (exactly what the reader thread delivers), the aligned writer and the errors. The protocol itself
// runs end to end in a VM: `make kernel-test` (kernel-tests/cachefiles-smoke.ts).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import { native } from '../../src/native';
import { cleanup, tempDir } from '../lib/image';

const dir = tempDir('cachefiles');
after(() => cleanup(dir));

function header(msgId: number, opcode: number, len: number, objectId: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(msgId, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeUInt32LE(len, 8);
  b.writeUInt32LE(objectId, 12);
  return b;
}

function openMsg(volumeKey: Buffer, cookieKey: Buffer, fd = 7, sizes?: [number, number]): Buffer {
  const body = Buffer.alloc(16);
  body.writeUInt32LE(sizes?.[0] ?? volumeKey.length, 0);
  body.writeUInt32LE(sizes?.[1] ?? cookieKey.length, 4);
  body.writeUInt32LE(fd, 8);
  body.writeUInt32LE(0, 12);
  const len = 32 + volumeKey.length + cookieKey.length;
  return Buffer.concat([header(5, 0, len, 3), body, volumeKey, cookieKey]);
}

describe('parseCachefilesMessage', () => {
  it('parses OPEN with binary keys, READ and CLOSE', () => {
    const cookie = Buffer.from([0, 1, 2, 0xff]);
    const open = native.parseCachefilesMessage(openMsg(Buffer.from('erofs,img\0'), cookie, 42));
    assert.equal(open.opcode, 'open');
    assert.ok(open.opcode === 'open');
    assert.equal(open.msgId, 5);
    assert.equal(open.objectId, 3);
    assert.equal(open.fd, 42);
    assert.equal(open.volumeKey.toString(), 'erofs,img');
    assert.deepEqual([...open.cookieKey], [0, 1, 2, 0xff]);

    const read = Buffer.concat([header(9, 2, 32, 3), Buffer.alloc(16)]);
    read.writeBigUInt64LE(1n << 40n, 16);
    read.writeBigUInt64LE(131072n, 24);
    assert.deepEqual(native.parseCachefilesMessage(read), {
      opcode: 'read',
      msgId: 9,
      objectId: 3,
      offset: 2 ** 40,
      length: 131072,
    });
    assert.deepEqual(native.parseCachefilesMessage(header(10, 1, 16, 3)), { opcode: 'close', msgId: 10, objectId: 3 });
  });

  it('turns malformed messages into invalid ones, keeping an OPEN fd so it can be refused', () => {
    const cases: [Buffer, RegExp][] = [
      [Buffer.alloc(0), /short message/],
      [Buffer.alloc(15), /short message/],
      [header(1, 1, 17, 1), /header len 17/],
      [Buffer.concat([header(1, 1, 20, 1), Buffer.alloc(4)]), /CLOSE of 20 bytes/],
      [Buffer.concat([header(1, 2, 24, 1), Buffer.alloc(8)]), /READ of 24 bytes/],
      [header(1, 7, 16, 1), /unknown opcode 7/],
      [Buffer.concat([header(1, 0, 24, 1), Buffer.alloc(8)]), /OPEN of 24 bytes/],
      [openMsg(Buffer.from('erofs,x'), Buffer.from('k')), /not NUL-terminated/],
      [openMsg(Buffer.alloc(0), Buffer.from('k')), /not NUL-terminated/],
      [openMsg(Buffer.from('erofs,x\0'), Buffer.from('k'), 7, [8, 2]), /key sizes 8\+2/],
      [openMsg(Buffer.from('erofs,x\0'), Buffer.from('k'), 7, [0xffffffff, 0xffffffff]), /key sizes/],
    ];
    for (const [bytes, reason] of cases) {
      const m = native.parseCachefilesMessage(bytes);
      assert.equal(m.opcode, 'invalid', reason.source);
      assert.ok(m.opcode === 'invalid');
      assert.match(m.reason, reason);
      assert.deepEqual(m.raw, bytes);
    }
    const bad = native.parseCachefilesMessage(openMsg(Buffer.from('v'), Buffer.from('k'), 99));
    assert.ok(bad.opcode === 'invalid');
    assert.equal(bad.fd, 99);
    assert.equal(bad.msgId, 5);
    const huge = Buffer.concat([header(1, 2, 32, 1), Buffer.alloc(16)]);
    huge.writeBigUInt64LE(1n << 60n, 16);
    assert.equal(native.parseCachefilesMessage(huge).opcode, 'invalid');
  });

  it('never throws on arbitrary bytes, with or without a consistent length field', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1100 }), fc.boolean(), (bytes, fixLen) => {
        const b = Buffer.from(bytes);
        if (fixLen && b.length >= 12) b.writeUInt32LE(b.length, 8);
        const m = native.parseCachefilesMessage(b);
        assert.ok(['open', 'read', 'close', 'invalid'].includes(m.opcode));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('CachefilesDevice', () => {
  it('writes through page-aligned memory, padding only the final block of an object', () => {
    const dev = new native.CachefilesDevice();
    const p = path.join(dir, 'object');
    const fd = fs.openSync(p, 'w+');
    try {
      const page = Buffer.alloc(4096, 0xab);
      assert.equal(dev.writeAligned(fd, 8192, page), 4096);
      assert.throws(() => dev.writeAligned(fd, 100, page), RangeError);
      assert.throws(() => dev.writeAligned(fd, 0, Buffer.alloc(100)), /no objectSize/);
      assert.throws(() => dev.writeAligned(fd, 0, Buffer.alloc(100), 5000), /does not end at the object's end/);
      assert.equal(dev.writeAligned(fd, 12288, Buffer.alloc(100, 0xcd), 12388), 4096);
      const back = fs.readFileSync(p);
      assert.equal(back.length, 16384);
      assert.ok(back.subarray(8192, 12288).equals(page));
      assert.ok(back.subarray(12288, 12388).equals(Buffer.alloc(100, 0xcd)));
      assert.ok(back.subarray(12388).equals(Buffer.alloc(16384 - 12388)));
      assert.equal(dev.writeAligned(fd, 0, Buffer.alloc(0)), 0);
      assert.throws(() => dev.readComplete(fd, 1), { code: 'ENOTTY', syscall: 'ioctl(CACHEFILES_IOC_READ_COMPLETE)' });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('reports errors with codes, and close() is idempotent', () => {
    const dev = new native.CachefilesDevice();
    assert.throws(() => dev.open(path.join(dir, 'no-such-device')), { code: 'ENOENT', syscall: 'open' });
    assert.throws(() => dev.command('tag x'), /not open/);
    assert.throws(() => dev.copen(1, 4096), /not open/);
    assert.throws(() => dev.start(() => {}), /not open/);
    assert.throws(() => dev.closeFd(-1), { code: 'EBADF' });
    dev.close();
    dev.close();
    assert.equal(dev.fd, -1);
  });

  it('a command that the device refuses becomes an error carrying the command', () => {
    // Any writable fd stands in for the device here: /dev/full refuses every write with ENOSPC.
    const dev = new native.CachefilesDevice();
    dev.open('/dev/full');
    try {
      assert.throws(() => dev.command('bind ondemand'), { code: 'ENOSPC', command: 'bind ondemand' });
      assert.throws(() => dev.copen(3, -2), { code: 'ENOSPC', command: 'copen 3,-2' });
      assert.throws(() => dev.command('a\0b'), TypeError);
      assert.throws(() => dev.copen(-1, 0), RangeError);
    } finally {
      dev.close();
    }
  });

  it('delivers messages from its reader thread in order, and close() stops the thread, also from a callback', async () => {
    // A FIFO opened read-write stands in for the device: the reader polls and reads it the same way.
    const fifo = path.join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const dev = new native.CachefilesDevice();
    dev.open(fifo);
    const got: string[] = [];
    let wake: () => void = () => {};
    dev.start((m) => {
      got.push(m.opcode === 'invalid' || m.opcode === 'error' ? `${m.opcode}:${m.reason}` : `${m.opcode}:${m.msgId}`);
      wake();
      if (got.length === 3) dev.close();
    });
    const writer = fs.openSync(fifo, 'w');
    try {
      const send = async (b: Buffer) => {
        const delivered = new Promise<void>((r) => (wake = r));
        fs.writeSync(writer, b);
        await delivered;
      };
      await send(header(1, 1, 16, 1));
      await send(Buffer.alloc(3));
      await send(header(2, 1, 16, 1));
    } finally {
      fs.closeSync(writer);
    }
    assert.deepEqual(got, ['close:1', 'invalid:short message: 3 bytes, header needs 16', 'close:2']);
    assert.equal(dev.fd, -1);
    dev.close();

    const idle = new native.CachefilesDevice();
    idle.open(fifo);
    idle.start(() => assert.fail('nothing was sent'));
    idle.close(); // joins a reader blocked in poll()
  });
});
