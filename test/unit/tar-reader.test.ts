// TarReader over a stream of large buffers, as gunzip yields them, and the numeric header fields that
// tar writers fill in different ways (GNU, old Unix tar, base-256 for large values); and over a source
// that skips bodies by position, as a docker archive is indexed.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { readByPosition } from '../../src/read-at';
import { bytesRead } from '../lib/assertions';
import { TarFormatError, TarReader } from '../../src/tar/reader';
import { makeTar, type TestTarEntry } from '../lib/tar-writer';

async function* inOneBuffer(data: Buffer): AsyncIterable<Buffer> {
  const big = Buffer.alloc(4 << 20);
  data.copy(big);
  yield big.subarray(0, data.length);
}

describe('TarReader', () => {
  it('hands out names, link targets and PAX values that do not pin the input buffer', async () => {
    const tar = makeTar([
      { name: 'link', type: '2', linkname: 'target' },
      { name: 'file', body: 'data', pax: { 'SCHILY.xattr.user.k': 'value' } },
    ]);
    const reader = new TarReader(inOneBuffer(tar));
    const link = (await reader.next())!;
    assert.equal(link.linkname.toString(), 'target');
    const file = (await reader.next())!;
    assert.equal(file.xattrs[0].value.toString(), 'value');
    assert.equal(Buffer.concat(await reader.readBody(4)).toString(), 'data');
    assert.equal(await reader.next(), null);
    // The tree keeps these for the whole conversion: a subarray would keep the 4 MiB input alive.
    for (const b of [link.name, link.linkname, file.name, file.xattrs[0].value])
      assert.ok(b.buffer.byteLength < 64 << 10);
  });

  /** One file entry whose uid and gid fields hold these raw bytes (checksum recomputed). */
  async function withIds(uid: Buffer, gid: Buffer) {
    const tar = makeTar([{ name: 'f', body: 'x' }]);
    uid.copy(tar.fill(0, 108, 116), 108);
    gid.copy(tar.fill(0, 116, 124), 116);
    tar.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += tar[i];
    tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return (await new TarReader(inOneBuffer(tar)).next())!;
  }

  it('reads octal fields padded with zeros, spaces or NULs, and empty fields as 0', async () => {
    const gnu = await withIds(Buffer.from('0001750\0'), Buffer.from('0000144\0'));
    assert.deepEqual([gnu.uid, gnu.gid], [1000, 100]);
    const old = await withIds(Buffer.from('  1750 \0'), Buffer.from('    144 '));
    assert.deepEqual([old.uid, old.gid], [1000, 100]);
    const empty = await withIds(Buffer.alloc(8), Buffer.from('       \0'));
    assert.deepEqual([empty.uid, empty.gid], [0, 0]);
  });

  it('reads base-256 fields (GNU, for values too large for octal)', async () => {
    const big = Buffer.alloc(8);
    big[0] = 0x80;
    big.writeUInt32BE(2_000_000_000, 4);
    const e = await withIds(big, Buffer.from('0000007\0'));
    assert.deepEqual([e.uid, e.gid], [2_000_000_000, 7]);
  });

  it('refuses a field that is not octal, quoting it', async () => {
    await assert.rejects(withIds(Buffer.from('0012x4\0\0'), Buffer.from('0000007\0')), (err: Error) => {
      assert.ok(err instanceof TarFormatError);
      assert.match(err.message, /uid field is not octal: "0012x4"/);
      return true;
    });
    await assert.rejects(
      withIds(Buffer.from('0000007\0'), Buffer.from('00 17\0\0\0')),
      /gid field is not octal: "00 17"/,
    );
  });

  /** The first entry of a tar whose one 16-byte file carries these PAX records. */
  const withPax = async (pax: Record<string, string>) =>
    (await new TarReader(inOneBuffer(makeTar([{ name: 'f', body: 'x'.repeat(16), pax }]))).next())!;

  it('reads numeric PAX records written in decimal digits', async () => {
    const e = await withPax({ size: '16', uid: '70000', gid: '0070', mtime: '1700000000.5' });
    assert.deepEqual([e.size, e.uid, e.gid, e.mtimeSec, e.mtimeNsec], [16, 70000, 70, 1_700_000_000n, 500_000_000]);
  });

  // GNU tar and Go's archive/tar refuse these; a reader that took `0x10` as 16 would see content
  // that scanners using those readers do not (a parser differential).
  it('refuses numeric PAX records that are not decimal digits, quoting them', async () => {
    const bad: Array<[string, string]> = [
      ['size', '0x10'],
      ['size', '1e1'],
      ['size', '+16'],
      ['size', ' 16'],
      ['size', '16 '],
      ['size', ''],
      ['size', '0b10000'],
      ['uid', '0x3e8'],
      ['uid', '-1'],
      ['gid', '1.5'],
      ['SCHILY.devmajor', '0o10'],
      ['mtime', '0x10'],
    ];
    for (const [key, value] of bad) {
      await assert.rejects(withPax({ [key]: value }), (err: Error) => {
        assert.ok(err instanceof TarFormatError, `${key}=${value}: ${err}`);
        assert.ok(err.message.includes(`PAX ${key} ${JSON.stringify(value)}`), err.message);
        return true;
      });
    }
  });

  it('refuses a PAX record whose length is not decimal digits', async () => {
    // `0x11 path=abcdef\n` is 17 bytes long, so read as hex its length would be right.
    const tar = makeTar([{ name: 'f', body: 'x', pax: { path: 'abcdefgh' } }]);
    const at = tar.indexOf('17 path=abcdefgh\n');
    assert.ok(at > 0);
    tar.write('0x11 path=abcdef\n', at, 'latin1');
    await assert.rejects(new TarReader(inOneBuffer(tar)).next(), (err: Error) => {
      assert.ok(err instanceof TarFormatError);
      assert.match(err.message, /PAX record length "0x11"/);
      return true;
    });
  });
});

/** The archive in a file, read by position in reads of 4 KiB as a docker archive is indexed (readByPosition). */
function byPosition(data: Buffer): AsyncIterable<Buffer> & { skip(n: number): void } {
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'tar-skip-')), 'archive.tar');
  fs.writeFileSync(file, data);
  const fd = fs.openSync(file, 'r');
  after(() => {
    fs.closeSync(fd);
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  });
  return readByPosition(fd, data.length, file, 4096);
}

describe('TarReader over a source that can skip', () => {
  const big = Buffer.alloc(3 << 20, 7);
  const entries: TestTarEntry[] = [
    { name: 'small', body: 'x'.repeat(100) },
    { name: 'big', body: big },
    { name: 'long/'.repeat(30) + 'name', body: 'y', pax: { path: 'long/'.repeat(30) + 'name' } },
    { name: 'after', body: big.subarray(0, 5000), pax: { 'SCHILY.xattr.user.k': 'v' } },
  ];

  async function walk(source: AsyncIterable<Buffer>) {
    const reader = new TarReader(source);
    const seen: Array<[string, number, number]> = [];
    for (let e = await reader.next(); e; e = await reader.next())
      seen.push([e.name.toString(), e.size, reader.bodyOffset]);
    return seen;
  }

  it('reads headers, not the bodies it skips, and finds the same entries at the same offsets', async () => {
    const tar = makeTar(entries);
    const source = byPosition(tar);
    const before = bytesRead();
    const skipped = await walk(source);
    const read = bytesRead() - before;
    assert.deepEqual(skipped, await walk(inOneBuffer(tar)));
    assert.deepEqual(
      skipped.map(([name]) => name),
      entries.map((e) => e.name),
    );
    assert.ok(read < 64 << 10, `read ${read} of ${tar.length} bytes`);
  });

  it('fails when a skipped body runs past the end of the input', async () => {
    const tar = makeTar(entries).subarray(0, 2 << 20); // cut inside the big body
    await assert.rejects(walk(byPosition(tar)), /truncated/);
  });
});
