// Reads back what other parts need from a bootstrap: the superblock and the device table.
import { DEVICE_SLOT_SIZE, DEVICE_TAG_SIZE, EROFS_MAGIC, SUPERBLOCK_OFFSET } from './format';

export interface SuperblockInfo {
  rootNid: number;
  inodeCount: bigint;
  blocks: number;
  featureIncompat: number;
  devices: Array<{ tag: string; blocks: number; mappedBlkaddr: number }>;
}

export function readSuperblock(image: Buffer, what = 'bootstrap'): SuperblockInfo {
  if (image.length < SUPERBLOCK_OFFSET + 128) throw new Error(`${what}: too short for an EROFS superblock`);
  const sb = image.subarray(SUPERBLOCK_OFFSET);
  if (sb.readUInt32LE(0) !== EROFS_MAGIC) throw new Error(`${what}: not an EROFS image (bad magic)`);
  const count = sb.readUInt16LE(86);
  const slotoff = sb.readUInt16LE(88);
  const devices: SuperblockInfo['devices'] = [];
  for (let i = 0; i < count; i++) {
    const at = slotoff * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE;
    if (at + DEVICE_SLOT_SIZE > image.length) throw new Error(`${what}: device table runs past the end`);
    const raw = image.subarray(at, at + DEVICE_TAG_SIZE);
    const end = raw.indexOf(0);
    devices.push({
      tag: raw.subarray(0, end === -1 ? DEVICE_TAG_SIZE : end).toString('latin1'),
      blocks: image.readUInt32LE(at + 64),
      mappedBlkaddr: image.readUInt32LE(at + 68),
    });
  }
  return {
    rootNid: sb.readUInt16LE(14),
    inodeCount: sb.readBigUInt64LE(16),
    blocks: sb.readUInt32LE(36),
    featureIncompat: sb.readUInt32LE(80),
    devices,
  };
}
