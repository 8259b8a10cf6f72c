// Overlay mounts: a writable upper directory over a read-only lower tree (a lazy mount), so that a
// program run in it can write without the image changing.
import { native } from '../native';

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
