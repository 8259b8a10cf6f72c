// A layer tarball applied to an empty directory as an overlayfs layer: GNU tar extracts it (owners,
// modes, xattrs, links and devices as stored; compression detected), then OCI whiteouts become
// overlayfs ones: `.wh.NAME` a 0/0 character device NAME, `.wh..wh..opq` the opaque xattr on its directory.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { native } from '../native';

const run = promisify(execFile);
const S_IFCHR = 0o020000;
const WHITEOUT = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** Whiteouts under `dir` turned into overlayfs's, keeping each directory's modification time. */
function convertWhiteouts(dir: string): void {
  const entries = fs.readdirSync(dir, { withFileTypes: true });
  const { atime, mtime } = fs.lstatSync(dir);
  let changed = false;
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.name === OPAQUE) {
      fs.unlinkSync(p);
      native.setXattr(dir, 'trusted.overlay.opaque', Buffer.from('y'));
      changed = true;
    } else if (e.name.startsWith(WHITEOUT)) {
      fs.unlinkSync(p);
      native.mknod(path.join(dir, e.name.slice(WHITEOUT.length)), S_IFCHR, 0, 0);
      changed = true;
    } else if (e.isDirectory()) convertWhiteouts(p);
  }
  if (changed) fs.utimesSync(dir, atime, mtime);
}

/** Extracts the layer in `tarFile` into the empty directory `dir`; throws naming the file when tar fails. */
export async function applyLayer(tarFile: string, dir: string): Promise<void> {
  try {
    await run('tar', [
      '-x',
      '-f',
      tarFile,
      '-C',
      dir,
      '--numeric-owner',
      '--same-owner',
      '--same-permissions',
      '--xattrs',
      '--xattrs-include=*',
      // Archives list a directory's files apart (Carp/, Carp.pm, Carp/Heavy.pm): its time is set once, at the end.
      '--delay-directory-restore',
    ]);
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`layer ${tarFile}: tar failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
  convertWhiteouts(dir);
}
