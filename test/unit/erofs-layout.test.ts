// On-disk layout details of directories and xattrs, checked against the format's arithmetic.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { dirDataSize, encodeDirBlocks, packDirBlocks } from '../../src/erofs/dirent';
import { BLOCK_SIZE, DirentType } from '../../src/erofs/format';
import { encodeXattrName, prepareXattrs, xattrAreaSize, xattrICount } from '../../src/erofs/xattr';

it('packs directory entries so that none spans a block', () => {
  // 12-byte dirent + 255-byte name = 267 bytes: 15 fit in a block, the 16th starts the next one.
  const lengths = Array.from({ length: 16 }, () => 255);
  assert.deepEqual(packDirBlocks(lengths), [15, 1]);
  assert.equal(dirDataSize(lengths), BLOCK_SIZE + 267);
  const entries = lengths.map((len, i) => ({
    name: Buffer.alloc(len, 0x61 + i),
    nid: 100 + i,
    type: DirentType.RegFile,
  }));
  const data = encodeDirBlocks(entries);
  assert.equal(data.length, BLOCK_SIZE + 267);
  assert.equal(data.readUInt16LE(8), 15 * 12, 'first nameoff of block 0');
  assert.equal(data.readUInt16LE(BLOCK_SIZE + 8), 12, 'first nameoff of block 1');
  assert.equal(Number(data.readBigUInt64LE(BLOCK_SIZE)), 115);
});

it('encodes xattr names with their prefix index and sorts entries', () => {
  assert.deepEqual(encodeXattrName(Buffer.from('security.capability')), {
    index: 6,
    suffix: Buffer.from('capability'),
  });
  assert.deepEqual(encodeXattrName(Buffer.from('trusted.overlay.opaque')), {
    index: 4,
    suffix: Buffer.from('overlay.opaque'),
  });
  assert.deepEqual(encodeXattrName(Buffer.from('system.posix_acl_access')), { index: 2, suffix: Buffer.alloc(0) });
  assert.throws(() => encodeXattrName(Buffer.from('user.')), /namespace not supported/);
  const entries = prepareXattrs([
    { name: Buffer.from('user.b'), value: Buffer.from('1') },
    { name: Buffer.from('security.x'), value: Buffer.alloc(0) },
    { name: Buffer.from('user.a'), value: Buffer.from('22') },
  ]);
  assert.deepEqual(
    entries.map((e) => `${e.index}:${e.suffix}`),
    ['1:a', '1:b', '6:x'],
  );
  // header 12 + align4(4+1+2)=8 + align4(4+1+1)=8 + align4(4+1+0)=8
  assert.equal(xattrAreaSize(entries), 36);
  assert.equal(xattrICount(36), 7);
  assert.throws(
    () =>
      prepareXattrs([
        { name: Buffer.from('user.a'), value: Buffer.alloc(0) },
        { name: Buffer.from('user.a'), value: Buffer.alloc(1) },
      ]),
    /given twice/,
  );
});
