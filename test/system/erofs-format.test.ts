// Format details checked against images written by erofs-utils' mkfs.erofs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { SUPERBLOCK_OFFSET } from '../../src/erofs/format';
import { readSuperblock } from '../../src/erofs/reader';
import { sealSuperblock } from '../../src/erofs/superblock';
import { cleanup, tempDir } from '../lib/image';

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
