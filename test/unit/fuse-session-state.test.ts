// What a FUSE session keeps for the daemon that takes it over: node ids, directory handles and INIT
// settings come back from the saved state, never from the order in which the new daemon attaches.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, it } from 'node:test';
import type { RangeSource } from '../../src/storage/range-source';
import { BlobFs } from '../../src/transport/fuse';
import * as P from '../../src/transport/fuse-protocol';
import { loadFuseSessionState, saveFuseSessionState, type BlobFsState } from '../../src/transport/fuse-session-state';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fuse-session-state-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(byte: number, size = 8192): RangeSource {
  const data = Buffer.alloc(size, byte);
  return {
    size,
    what: `file of ${byte}`,
    serve: async (start, end, sink) => {
      if (sink.kind === 'buffer') data.copy(sink.buf, sink.offset, start, end);
      return 0;
    },
  };
}

/** A BlobFs whose replies and saved states are collected. */
function session(restore?: BlobFsState) {
  const replies: Buffer[] = [];
  const saved: BlobFsState[] = [];
  const blobFs = new BlobFs((r) => replies.push(Buffer.from(r)), { restore, persist: (s) => saved.push(s) });
  const last = () => replies[replies.length - 1];
  const lookup = (name: string, unique: bigint): number => {
    blobFs.handle(P.encodeRequest({ opcode: P.Op.LOOKUP, unique, nodeid: P.ROOT_ID }, Buffer.from(`${name}\0`)));
    assert.equal(last().readInt32LE(4), 0, `lookup of ${name}`);
    return Number(last().readBigUInt64LE(16));
  };
  const read = async (ino: number, unique: bigint): Promise<Buffer> => {
    const body = Buffer.alloc(40);
    body.writeUInt32LE(4096, 16);
    blobFs.handle(P.encodeRequest({ opcode: P.Op.READ, unique, nodeid: ino }, body));
    await new Promise((r) => setTimeout(r, 10));
    return last();
  };
  const readdir = (fh: bigint, unique: bigint): string[] => {
    const body = Buffer.alloc(24);
    body.writeBigUInt64LE(fh, 0);
    body.writeUInt32LE(4096, 16);
    blobFs.handle(P.encodeRequest({ opcode: P.Op.READDIR, unique, nodeid: P.ROOT_ID }, body));
    const r = last();
    if (r.readInt32LE(4) !== 0) return [`error ${-r.readInt32LE(4)}`];
    const names: string[] = [];
    for (let at = 16; at < r.length;) {
      const len = r.readUInt32LE(at + 16);
      names.push(r.subarray(at + 24, at + 24 + len).toString());
      at += (24 + len + 7) & ~7;
    }
    return names;
  };
  return { blobFs, replies, saved, last, lookup, read, readdir };
}

it('a session taken over keeps the node ids, directory handles and INIT settings of the one before', async () => {
  const a = session();
  const init = Buffer.concat([Buffer.from(new Uint32Array([7, 45, 131072, 0xffffffff]).buffer), Buffer.alloc(48)]);
  a.blobFs.handle(P.encodeRequest({ opcode: P.Op.INIT, unique: 1n }, init));
  assert.deepEqual(a.saved.at(-1)?.init, a.blobFs.negotiated, 'INIT settings saved as they are settled');
  a.blobFs.attach('one', file(1));
  a.blobFs.attach('two', file(2));
  a.blobFs.attach('gone', file(3));
  a.blobFs.detach('gone');
  const ids = { one: a.lookup('one', 2n), two: a.lookup('two', 4n) };
  assert.deepEqual(a.saved.at(-1)?.nodes, { one: ids.one, two: ids.two, gone: ids.two + 1 }, 'saved before any lookup');
  a.blobFs.handle(P.encodeRequest({ opcode: P.Op.OPENDIR, unique: 6n, nodeid: P.ROOT_ID }, Buffer.alloc(8)));
  const oldHandle = a.last().readBigUInt64LE(16);

  // The next daemon: restored from what was saved, attaching in the other order, 'gone' never again.
  const state = a.saved.at(-1)!;
  const b = session({ ...state, generation: state.generation + 1 });
  assert.deepEqual(b.blobFs.negotiated, a.blobFs.negotiated);
  b.blobFs.attach('two', file(2));
  b.blobFs.attach('one', file(1));
  assert.deepEqual({ one: b.lookup('one', 8n), two: b.lookup('two', 10n) }, ids);
  // Reads through the kernel's inodes (old node ids) reach the same files.
  assert.ok((await b.read(ids.two, 12n)).subarray(16).equals(Buffer.alloc(4096, 2)));
  assert.ok((await b.read(ids.one, 14n)).subarray(16).equals(Buffer.alloc(4096, 1)));
  // A node id known but not attached by this daemon is not served, and never given to another name.
  assert.equal((await b.read(ids.two + 1, 16n)).readInt32LE(4), -P.Errno.EIO);
  b.blobFs.attach('three', file(4));
  assert.equal(b.lookup('three', 18n), ids.two + 2, 'a new node id past every saved one');
  // A directory opened under the daemon before still lists; a new handle is not an old one.
  assert.deepEqual(b.readdir(oldHandle, 20n), ['.', '..', 'one', 'two', 'three']);
  b.blobFs.handle(P.encodeRequest({ opcode: P.Op.OPENDIR, unique: 22n, nodeid: P.ROOT_ID }, Buffer.alloc(8)));
  assert.notEqual(b.last().readBigUInt64LE(16), oldHandle);
  assert.deepEqual(b.readdir((1n << 32n) + 1000n, 24n), [`error ${P.Errno.EBADF}`], 'a handle never given out');
});

it('the state file: saved and loaded whole; a corrupt or inconsistent one is an error naming it', () => {
  const f = path.join(dir, 'fuse-session.json');
  const state = { dev: '0:61', generation: 2, nodes: { a: 2, b: 3 }, init: { minor: 31, maxPages: 256, flags: 1 } };
  saveFuseSessionState(f, state);
  assert.deepEqual(loadFuseSessionState(f), state);
  assert.throws(() => loadFuseSessionState(path.join(dir, 'missing.json')), /FUSE session state .*missing\.json/);
  for (const bad of ['{', '{"dev":"0:61","generation":0,"nodes":{"a":1}}', '{"dev":"x","generation":0,"nodes":{}}']) {
    fs.writeFileSync(f, bad);
    assert.throws(() => loadFuseSessionState(f), new RegExp(`FUSE session state ${f}`));
  }
  fs.writeFileSync(f, JSON.stringify({ dev: '0:61', generation: 0, nodes: { a: 2, b: 2 } }));
  assert.throws(() => loadFuseSessionState(f), /two names share a node id/);
});
