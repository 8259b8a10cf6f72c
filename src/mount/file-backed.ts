// File-backed EROFS mounts (Linux 6.12+): the bootstrap file is the source and each blob is a `device=`.
// mount(8) would put the bootstrap on a loop device, after which file devices are refused, so the
// addon calls mount(2) directly.
import { MS_RDONLY, MNT_DETACH, native } from '../native';

export interface FileBackedMount {
  bootstrap: string;
  blobs: readonly string[];
  target: string;
}

/** The `device=` options naming each blob (a file, or a block device when the bootstrap is one). */
export function deviceOptions(blobs: readonly string[]): string {
  for (const blob of blobs) {
    if (blob.includes(','))
      throw new Error(`blob path ${JSON.stringify(blob)} contains a comma, which mount options cannot carry`);
  }
  return blobs.map((b) => `device=${b}`).join(',');
}

export function mountFileBacked(m: FileBackedMount): void {
  const options = deviceOptions(m.blobs);
  try {
    native.mount(m.bootstrap, m.target, 'erofs', MS_RDONLY, options);
  } catch (err) {
    throw new Error(`mount ${m.bootstrap} on ${m.target} (${options || 'no devices'}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/**
 * The same mount(2) on the thread pool, the event loop staying free: needed when the blobs are files
 * this very process serves (FUSE), since the kernel looks them up and opens them during the mount.
 */
export async function mountErofsAsync(m: FileBackedMount): Promise<void> {
  const options = deviceOptions(m.blobs);
  try {
    await native.mountAsync(m.bootstrap, m.target, 'erofs', MS_RDONLY, options);
  } catch (err) {
    throw new Error(`mount ${m.bootstrap} on ${m.target} (${options || 'no devices'}): ${(err as Error).message}`, {
      cause: err,
    });
  }
}

export function unmount(target: string, opts: { lazy?: boolean } = {}): void {
  native.umount(target, opts.lazy ? MNT_DETACH : 0);
}
