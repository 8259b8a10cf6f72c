// On-disk constants of EROFS as read by Linux 5.16+ (fs/erofs/erofs_fs.h).
// Only what a metadata-only, chunk-based bootstrap needs.

export const EROFS_MAGIC = 0xe0f5e1e2;
export const SUPERBLOCK_OFFSET = 1024;
export const SUPERBLOCK_SIZE = 128;
export const BLOCK_SIZE_BITS = 12;
export const BLOCK_SIZE = 1 << BLOCK_SIZE_BITS;

export const COMPAT_SB_CHKSUM = 0x1;
export const INCOMPAT_CHUNKED_FILE = 0x4;
export const INCOMPAT_DEVICE_TABLE = 0x8;

export const DEVICE_SLOT_SIZE = 128;
export const DEVICE_TAG_SIZE = 64;
/** The device table starts right after the superblock: slot offset counted in 128-byte units. */
export const DEVICE_TABLE_SLOTOFF = (SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE) / DEVICE_SLOT_SIZE;

export const INODE_SLOT_BITS = 5;
export const INODE_SLOT_SIZE = 1 << INODE_SLOT_BITS;
export const COMPACT_INODE_SIZE = 32;
export const EXTENDED_INODE_SIZE = 64;

export enum DataLayout {
  FlatPlain = 0,
  FlatInline = 2,
  ChunkBased = 4,
}

export const CHUNK_FORMAT_BLKBITS_MASK = 0x1f;
export const CHUNK_FORMAT_INDEXES = 0x20;
export const CHUNK_INDEX_SIZE = 8;
export const NULL_ADDR = 0xffffffff;

export const DIRENT_SIZE = 12;

export enum DirentType {
  Unknown = 0,
  RegFile = 1,
  Dir = 2,
  CharDev = 3,
  BlockDev = 4,
  Fifo = 5,
  Socket = 6,
  Symlink = 7,
}

export const XATTR_HEADER_SIZE = 12;
export const XATTR_ENTRY_HEADER_SIZE = 4;

/** Name prefixes with a one-byte index; a name outside them cannot be stored without long-prefix support. */
export const XATTR_PREFIXES: ReadonlyArray<{ index: number; prefix: string; exact?: boolean }> = [
  { index: 2, prefix: 'system.posix_acl_access', exact: true },
  { index: 3, prefix: 'system.posix_acl_default', exact: true },
  { index: 1, prefix: 'user.' },
  { index: 4, prefix: 'trusted.' },
  { index: 6, prefix: 'security.' },
];

export const S_IFMT = 0o170000;
export const S_IFSOCK = 0o140000;
export const S_IFLNK = 0o120000;
export const S_IFREG = 0o100000;
export const S_IFBLK = 0o060000;
export const S_IFDIR = 0o040000;
export const S_IFCHR = 0o020000;
export const S_IFIFO = 0o010000;

export const MAX_NAME_LEN = 255;
/** Chunk sizes accepted by the builder: 4 KiB to 64 MiB. */
export const MIN_CHUNK_BITS = 12;
export const MAX_CHUNK_BITS = 26;
