// Overlay mounts: a writable upper directory over a read-only lower tree (a lazy mount), so that a
// program run in it can write without the image changing.
import fs from 'node:fs';
import path from 'node:path';
import { MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, native } from '../native';

export interface OverlayMount {
  lower: string;
  /** Where writes go; `work` is overlayfs's scratch directory on the same filesystem. */
  upper: string;
  work: string;
  target: string;
}

export function mountOverlay(m: OverlayMount): void {
  const dirs = [m.lower, m.upper, m.work];
  for (const d of dirs) {
    if (/[,:\\]/.test(d))
      throw new Error(`overlay directory ${JSON.stringify(d)} contains a comma, colon or backslash`);
  }
  const options = `lowerdir=${m.lower},upperdir=${m.upper},workdir=${m.work}`;
  try {
    native.mount('overlay', m.target, 'overlay', 0, options);
  } catch (err) {
    throw new Error(`mount overlay on ${m.target} (${options}): ${(err as Error).message}`, { cause: err });
  }
}

const MS_BIND = 4096;

/**
 * What a container runtime gives a program besides its root: /proc, a read-only /sys and the host's
 * /dev, mounted into `root` where the image has those directories. Returns what undoes it.
 */
export function mountRuntimeFilesystems(root: string): () => void {
  const mounted: string[] = [];
  const each: Array<[string, string, string, number]> = [
    ['proc', 'proc', 'proc', MS_NOSUID | MS_NODEV | MS_NOEXEC],
    ['sysfs', 'sys', 'sysfs', MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY],
    ['/dev', 'dev', '', MS_BIND],
  ];
  const undo = () => {
    for (const t of mounted.reverse()) native.umount(t, MNT_DETACH);
  };
  try {
    for (const [source, dir, type, flags] of each) {
      const target = path.join(root, dir);
      if (!fs.statSync(target, { throwIfNoEntry: false })?.isDirectory()) continue;
      native.mount(source, target, type, flags);
      mounted.push(target);
    }
  } catch (err) {
    undo();
    throw err;
  }
  return undo;
}
