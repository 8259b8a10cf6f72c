// How EROFS reaches the FUSE transport's blob files (kept apart from fuse.ts so that the configuration
// does not load the native addon).

/** 'file': file-backed EROFS (Linux 6.12+); 'loop': through loop devices; 'auto': by kernel version. */
export type FuseBacking = 'auto' | 'file' | 'loop';
export const FUSE_BACKINGS: readonly FuseBacking[] = ['auto', 'file', 'loop'];
