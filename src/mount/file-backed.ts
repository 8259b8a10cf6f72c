// File-backed EROFS mounts (Linux 6.12+): the bootstrap file is the source and each blob a `device`.
// mount(8) would put the bootstrap on a loop device, after which file devices are refused, so the
// addon mounts directly, through the new mount API: one fsconfig call per device, so an image's layer
// count is not bounded by mount(2)'s one-page option string, and the target is resolved without
// following symbolic links.
import { MNT_DETACH, UMOUNT_NOFOLLOW, native } from '../native';

export interface FileBackedMount {
  /** A file (file-backed EROFS) or a block device. */
  bootstrap: string;
  /** Files, or block devices when the bootstrap is one. */
  blobs: readonly string[];
  target: string;
}

function failed(m: FileBackedMount, err: unknown): Error {
  return new Error(`mount ${m.bootstrap} on ${m.target} (${m.blobs.length} devices): ${(err as Error).message}`, {
    cause: err,
  });
}

export function mountFileBacked(m: FileBackedMount): void {
  try {
    native.mountErofs(m.bootstrap, m.blobs, m.target);
  } catch (err) {
    throw failed(m, err);
  }
}

/**
 * The same mount on the thread pool, the event loop staying free: needed when the blobs are files
 * this very process serves (FUSE), since the kernel looks them up and opens them during the mount.
 */
export async function mountErofsAsync(m: FileBackedMount): Promise<void> {
  try {
    await native.mountErofsAsync(m.bootstrap, m.blobs, m.target);
  } catch (err) {
    throw failed(m, err);
  }
}

/** umount2(2) of `target`, never following a final symbolic link. */
export function unmount(target: string, opts: { lazy?: boolean } = {}): void {
  native.umount(target, UMOUNT_NOFOLLOW | (opts.lazy ? MNT_DETACH : 0));
}
