// Mount targets as the daemon accepts them: one spelling per directory (absolute, normalised, no
// symbolic link anywhere on the way, so a target is its own real path and two names never stack two
// mounts on one directory), and away from the daemon's own cache directory.
import fs from 'node:fs';
import path from 'node:path';
import { InputError } from '../errors';
import { native } from '../native';

function refuse(target: unknown, why: string, cause?: unknown): InputError {
  return new InputError(why, { 'mount target': typeof target === 'string' ? target : String(target) }, { cause });
}

/** Throws unless `target` is absolute and written the one way `path.resolve` writes it. */
export function requireCanonical(target: unknown): asserts target is string {
  if (typeof target !== 'string' || !path.isAbsolute(target))
    throw refuse(target, 'not an absolute path (the CLI resolves relative ones)');
  if (path.resolve(target) !== target)
    throw refuse(target, `not normalised: give ${JSON.stringify(path.resolve(target))}`);
}

/** `inner` is `outer` or below it (both absolute and normalised). */
function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer === '/' ? '/' : `${outer}/`);
}

/**
 * Throws unless `target` may be mounted on by a daemon whose cache is `cacheDir`: canonical, a
 * directory reached without following a symbolic link, neither inside the cache directory (also
 * through a bind mount of it) nor above it. The mount itself resolves the target the same way again
 * (native mountErofs), so a symlink swapped in after this check is refused there too.
 */
export function checkMountTarget(target: unknown, cacheDir: string): asserts target is string {
  requireCanonical(target);
  let fd: number;
  try {
    fd = native.openDirNoSymlinks(target);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ELOOP')
      throw refuse(
        target,
        'reached through a symbolic link; targets are never resolved through one: give the real path',
      );
    if (code === 'ENOTDIR') throw refuse(target, 'not a directory');
    throw refuse(target, (err as Error).message, err);
  }
  fs.closeSync(fd);
  const cache = fs.realpathSync(cacheDir);
  const inside = `inside the daemon's cache directory ${cache}`;
  if (within(target, cache)) throw refuse(target, inside);
  if (within(cache, target)) throw refuse(target, `holds the daemon's cache directory ${cache}, which it would hide`);
  // Without symlinks, each ancestor is a prefix of the path; a bind mount of the cache has its inode.
  const { dev, ino } = fs.statSync(cache);
  for (let dir = target; ; dir = path.dirname(dir)) {
    const st = fs.statSync(dir);
    if (st.dev === dev && st.ino === ino) throw refuse(target, inside);
    if (dir === '/') return;
  }
}
