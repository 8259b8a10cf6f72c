// Mounting a converted image the simple way: its blobs materialised locally, file-backed EROFS.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { materializeBlob } from '../../src/blob/materialize';
import { LazyMediaType } from '../../src/convert/lazy-image';
import { parseLayoutRef } from '../../src/oci/layout';
import { mountFileBacked, unmount } from '../../src/mount/file-backed';
import type { ImageManifest } from '../../src/oci/types';

export function layoutManifest(ref: string): { manifest: ImageManifest; blob: (digest: string) => string } {
  const { dir, tag } = parseLayoutRef(ref);
  const blob = (digest: string) => path.join(dir, 'blobs', 'sha256', digest.slice(7));
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
  const entry = index.manifests.find(
    (m: { annotations?: Record<string, string> }) =>
      m.annotations?.['org.opencontainers.image.ref.name'] === (tag ?? 'latest'),
  );
  return { manifest: JSON.parse(fs.readFileSync(blob(entry.digest), 'utf8')), blob };
}

/**
 * Materialises compressed blob files (each verified chunk at its offset), checks the result with
 * fsck.erofs, mounts it file-backed, runs `fn`, unmounts.
 */
export async function withMaterializedMount<T>(
  bootstrap: string,
  compressedBlobs: readonly string[],
  work: string,
  fn: (mnt: string) => T,
): Promise<T> {
  const devices: string[] = [];
  for (const blob of compressedBlobs) {
    const out = path.join(work, `${path.basename(blob)}.raw`);
    await materializeBlob(blob, out);
    devices.push(out);
  }
  const fsck = execFileSync('fsck.erofs', [...devices.map((d) => `--device=${d}`), bootstrap], { encoding: 'utf8' });
  if (/error/i.test(fsck)) throw new Error(`fsck.erofs: ${fsck}`);
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  mountFileBacked({ bootstrap, blobs: devices, target: mnt });
  try {
    return fn(mnt);
  } finally {
    unmount(mnt);
  }
}

/** Mounts a lazy manifest whose blobs are local files (an OCI layout). */
export async function withLazyMount<T>(
  manifest: ImageManifest,
  blobFile: (digest: string) => string,
  work: string,
  fn: (mnt: string) => T,
): Promise<T> {
  const [boot, ...blobs] = manifest.layers;
  if (boot.mediaType !== LazyMediaType.bootstrap) throw new Error(`first layer is ${boot.mediaType}, not a bootstrap`);
  return withMaterializedMount(
    blobFile(boot.digest),
    blobs.map((b) => blobFile(b.digest)),
    work,
    fn,
  );
}
