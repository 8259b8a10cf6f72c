// How EROFS reaches the FUSE transport's blob files (kept apart from fuse.ts so that the configuration
// does not load the native addon).
import os from 'node:os';

/** 'file': file-backed EROFS (Linux 6.12+); 'loop': through loop devices; 'auto': by kernel version. */
export type FuseBacking = 'auto' | 'file' | 'loop';
export const FUSE_BACKINGS: readonly FuseBacking[] = ['auto', 'file', 'loop'];

/** Linux 6.12 brought file-backed EROFS mounts. */
export function kernelHasFileBackedErofs(release = os.release()): boolean {
  const [major, minor] = release.split(/[.-]/).map(Number);
  return major > 6 || (major === 6 && minor >= 12);
}
