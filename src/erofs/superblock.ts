import CRC32C from 'crc-32/crc32c';
import {
  BLOCK_SIZE,
  BLOCK_SIZE_BITS,
  COMPAT_SB_CHKSUM,
  DEVICE_SLOT_SIZE,
  DEVICE_TABLE_SLOTOFF,
  DEVICE_TAG_SIZE,
  EROFS_MAGIC,
  INCOMPAT_CHUNKED_FILE,
  INCOMPAT_DEVICE_TABLE,
  SUPERBLOCK_OFFSET,
} from './format';

export interface SuperblockFields {
  rootNid: number;
  inodeCount: number;
  buildTimeSec: bigint;
  buildTimeNsec: number;
  blocks: number;
  uuid: Buffer;
  devices: readonly DeviceSlot[];
}

export interface DeviceSlot {
  /** 64 hex characters: the blob id, which fscache uses as the cookie key. */
  tag: string;
  blocks: number;
  mappedBlkaddr: number;
}

/** Writes the superblock and device table into block 0 of `image`. Call `sealSuperblock` once block 0 is final. */
export function writeSuperblock(image: Buffer, f: SuperblockFields): void {
  const sb = image.subarray(SUPERBLOCK_OFFSET);
  sb.writeUInt32LE(EROFS_MAGIC, 0);
  sb.writeUInt32LE(0, 4);
  sb.writeUInt32LE(COMPAT_SB_CHKSUM, 8);
  sb.writeUInt8(BLOCK_SIZE_BITS, 12);
  sb.writeUInt8(0, 13);
  sb.writeUInt16LE(f.rootNid, 14);
  sb.writeBigUInt64LE(BigInt(f.inodeCount), 16);
  sb.writeBigUInt64LE(BigInt.asUintN(64, f.buildTimeSec), 24);
  sb.writeUInt32LE(f.buildTimeNsec, 32);
  sb.writeUInt32LE(f.blocks, 36);
  sb.writeUInt32LE(0, 40); // meta_blkaddr: nids count from byte 0
  sb.writeUInt32LE(0, 44); // xattr_blkaddr: no shared xattrs
  f.uuid.copy(sb, 48, 0, 16);
  const incompat = INCOMPAT_CHUNKED_FILE | (f.devices.length > 0 ? INCOMPAT_DEVICE_TABLE : 0);
  sb.writeUInt32LE(incompat, 80);
  sb.writeUInt16LE(f.devices.length, 86);
  sb.writeUInt16LE(f.devices.length > 0 ? DEVICE_TABLE_SLOTOFF : 0, 88);

  f.devices.forEach((dev, i) => {
    const slot = image.subarray(DEVICE_TABLE_SLOTOFF * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE);
    const tag = Buffer.from(dev.tag, 'ascii');
    if (tag.length === 0 || tag.length > DEVICE_TAG_SIZE) {
      throw new Error(`device tag ${JSON.stringify(dev.tag)} must be 1..${DEVICE_TAG_SIZE} bytes`);
    }
    tag.copy(slot, 0);
    slot.writeUInt32LE(dev.blocks, 64);
    slot.writeUInt32LE(dev.mappedBlkaddr, 68);
  });
}

/** Sets the checksum: crc32c with seed ~0 and no final xor over [1024, block end) with the field zeroed. */
export function sealSuperblock(image: Buffer): void {
  image.writeUInt32LE(superblockChecksum(image), SUPERBLOCK_OFFSET + 4);
}

/** The checksum block 0 of `image` should carry (its checksum field counted as zero). */
export function superblockChecksum(image: Buffer): number {
  const block = Buffer.from(image.subarray(SUPERBLOCK_OFFSET, BLOCK_SIZE));
  block.writeUInt32LE(0, 4);
  return (CRC32C.buf(block) ^ 0xffffffff) >>> 0;
}

export function deviceTableEnd(deviceCount: number): number {
  return DEVICE_TABLE_SLOTOFF * DEVICE_SLOT_SIZE + deviceCount * DEVICE_SLOT_SIZE;
}
