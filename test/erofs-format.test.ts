// Format details checked against images written by erofs-utils' mkfs.erofs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { dirDataSize, encodeDirBlocks, packDirBlocks } from '../src/erofs/dirent';
import { BLOCK_SIZE, DirentType, SUPERBLOCK_OFFSET } from '../src/erofs/format';
import { readSuperblock } from '../src/erofs/reader';
import { sealSuperblock } from '../src/erofs/superblock';
import { encodeXattrName, prepareXattrs, xattrAreaSize, xattrICount } from '../src/erofs/xattr';
import { cleanup, tempDir } from './lib/image';

const dir = tempDir('format');
after(() => cleanup(dir));

it('computes the superblock checksum exactly as mkfs.erofs does', () => {
  const src = path.join(dir, 'src');
  fs.mkdirSync(src);
  fs.writeFileSync(path.join(src, 'f'), 'checksum me');
  const img = path.join(dir, 'mkfs.img');
  execFileSync('mkfs.erofs', ['-T0', img, src], { stdio: 'ignore' });
  const image = fs.readFileSync(img);
  const theirs = image.readUInt32LE(SUPERBLOCK_OFFSET + 4);
  assert.equal(image.readUInt32LE(SUPERBLOCK_OFFSET + 8) & 1, 1, 'mkfs.erofs sets SB_CHKSUM');
  sealSuperblock(image);
  assert.equal(image.readUInt32LE(SUPERBLOCK_OFFSET + 4), theirs);
  assert.equal(readSuperblock(image).rootNid, image.readUInt16LE(SUPERBLOCK_OFFSET + 14));
});

it('packs directory entries so that none spans a block', () => {
  // 12-byte dirent + 255-byte name = 267 bytes: 15 fit in a block, the 16th starts the next one.
  const lengths = Array.from({ length: 16 }, () => 255);
  assert.deepEqual(packDirBlocks(lengths), [15, 1]);
  assert.equal(dirDataSize(lengths), BLOCK_SIZE + 267);
  const entries = lengths.map((len, i) => ({ name: Buffer.alloc(len, 0x61 + i), nid: 100 + i, type: DirentType.RegFile }));
  const data = encodeDirBlocks(entries);
  assert.equal(data.length, BLOCK_SIZE + 267);
  assert.equal(data.readUInt16LE(8), 15 * 12, 'first nameoff of block 0');
  assert.equal(data.readUInt16LE(BLOCK_SIZE + 8), 12, 'first nameoff of block 1');
  assert.equal(Number(data.readBigUInt64LE(BLOCK_SIZE)), 115);
});

it('encodes xattr names with their prefix index and sorts entries', () => {
  assert.deepEqual(encodeXattrName(Buffer.from('security.capability')), { index: 6, suffix: Buffer.from('capability') });
  assert.deepEqual(encodeXattrName(Buffer.from('trusted.overlay.opaque')), { index: 4, suffix: Buffer.from('overlay.opaque') });
  assert.deepEqual(encodeXattrName(Buffer.from('system.posix_acl_access')), { index: 2, suffix: Buffer.alloc(0) });
  assert.throws(() => encodeXattrName(Buffer.from('user.')), /namespace not supported/);
  const entries = prepareXattrs([
    { name: Buffer.from('user.b'), value: Buffer.from('1') },
    { name: Buffer.from('security.x'), value: Buffer.alloc(0) },
    { name: Buffer.from('user.a'), value: Buffer.from('22') },
  ]);
  assert.deepEqual(entries.map((e) => `${e.index}:${e.suffix}`), ['1:a', '1:b', '6:x']);
  // header 12 + align4(4+1+2)=8 + align4(4+1+1)=8 + align4(4+1+0)=8
  assert.equal(xattrAreaSize(entries), 36);
  assert.equal(xattrICount(36), 7);
  assert.throws(() => prepareXattrs([{ name: Buffer.from('user.a'), value: Buffer.alloc(0) }, { name: Buffer.from('user.a'), value: Buffer.alloc(1) }]), /given twice/);
});
