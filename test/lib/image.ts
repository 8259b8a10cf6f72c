// Test plumbing around real tools: build with our CLI code, check with erofs-utils, mount with the kernel.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildFromDirectory, type BuildResult } from '../../src/builder/build-dir';
import { mountFileBacked, unmount } from '../../src/mount/file-backed';

export function tempDir(prefix: string): string {
  // /var/tmp is on the disk filesystem: it keeps xattrs of every namespace and sparse files.
  return fs.mkdtempSync(path.join('/var/tmp', `eo-${prefix}-`));
}

export function build(source: string, chunkBits = 20): BuildResult & { outDir: string } {
  const outDir = tempDir('out');
  return { ...buildFromDirectory(source, outDir, { chunkBits }), outDir };
}

export function blobArgs(r: BuildResult): string[] {
  return r.blobPath ? [`--device=${r.blobPath}`] : [];
}

export function fsck(r: BuildResult): { status: number; output: string } {
  const res = spawnSync('fsck.erofs', [...blobArgs(r), r.bootstrapPath], { encoding: 'utf8' });
  return { status: res.status ?? -1, output: `${res.stdout}${res.stderr}` };
}

/** fsck.erofs --extract reads every file's data through erofs-utils' own chunk mapping. */
export function fsckExtract(r: BuildResult): { status: number; output: string; dir: string } {
  const dir = path.join(tempDir('extract'), 'x');
  const res = spawnSync('fsck.erofs', [...blobArgs(r), `--extract=${dir}`, r.bootstrapPath], { encoding: 'utf8' });
  return { status: res.status ?? -1, output: `${res.stdout}${res.stderr}`, dir };
}

export function dump(r: BuildResult, ...args: string[]): string {
  return execFileSync('dump.erofs', [...blobArgs(r), ...args, r.bootstrapPath], { encoding: 'utf8' });
}

export function withMount<T>(r: BuildResult, fn: (mnt: string) => T): T {
  const mnt = tempDir('mnt');
  mountFileBacked({ bootstrap: r.bootstrapPath, blobs: r.blobPath ? [r.blobPath] : [], target: mnt });
  try {
    return fn(mnt);
  } finally {
    unmount(mnt);
    fs.rmdirSync(mnt);
  }
}

export function cleanup(...dirs: string[]): void {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
}

export const isRoot = os.userInfo().uid === 0;
