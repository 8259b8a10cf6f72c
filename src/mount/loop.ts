// Loop devices through util-linux's losetup (run asynchronously: the backing file may be on a FUSE
// filesystem that this very process serves, so the event loop must stay free while losetup opens it).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Attaches `file` read-only to a free loop device, with direct I/O (no second page cache); returns /dev/loopN. */
export async function attachLoop(file: string): Promise<string> {
  const { stdout } = await run('losetup', ['--find', '--show', '--read-only', '--direct-io=on', file]);
  const dev = stdout.trim();
  if (!/^\/dev\/loop\d+$/.test(dev)) throw new Error(`losetup printed ${JSON.stringify(stdout)} for ${file}`);
  return dev;
}

/**
 * Detaches a loop device. One still open (a mounted filesystem on it) is only marked autoclear by the
 * kernel and goes away with its last user: so calling this right after mounting ties the devices'
 * lifetime to the mount's, even when this process dies.
 */
export async function detachLoop(dev: string): Promise<void> {
  await run('losetup', ['--detach', dev]);
}

/** Whether direct I/O is on for /dev/loopN. */
export function loopDirectIo(dev: string): boolean {
  return fs.readFileSync(path.join('/sys/block', path.basename(dev), 'loop', 'dio'), 'utf8').trim() === '1';
}
