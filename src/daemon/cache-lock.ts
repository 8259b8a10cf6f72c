// One daemon per cache directory: an exclusive flock(2) on <cache>/daemon.lock, taken before the
// daemon touches its socket, mounts or state, and held for its life. The kernel drops it when the
// process ends however it ends (SIGKILL too), so a lock is never left behind by a dead daemon.
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../native';

export const LOCK_FILE = 'daemon.lock';

export interface CacheLock {
  readonly file: string;
  /** The open file description that holds the lock (the holder process checks a daemon by it). */
  readonly fd: number;
  release(): void;
}

/** Takes the cache directory's lock (creating the directory), or throws naming the daemon that holds it. */
export function lockCacheDir(cacheDir: string): CacheLock {
  fs.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const file = path.join(cacheDir, LOCK_FILE);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  let taken = false;
  try {
    taken = native.tryLock(fd);
    if (!taken) {
      // The holder writes its pid once it has the lock: empty while it is just starting.
      const pid = fs.readFileSync(fd, 'utf8').trim();
      throw new Error(
        `cache directory ${cacheDir} is in use by another daemon${/^\d+$/.test(pid) ? ` (pid ${pid})` : ''}; one daemon per cache directory (lock: ${file})`,
      );
    }
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, `${process.pid}\n`, 0);
  } finally {
    if (!taken) fs.closeSync(fd);
  }
  return { file, fd, release: () => fs.closeSync(fd) };
}
