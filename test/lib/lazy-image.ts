// Mounting a converted image the simple way: its blobs materialised locally, file-backed EROFS.
import fs from 'node:fs';
import path from 'node:path';
import { materializeBlob } from '../../src/blob/materialize';
import { LazyMediaType } from '../../src/convert/convert';
import { parseLayoutRef } from '../../src/oci/layout';
import { mountFileBacked, unmount } from '../../src/mount/file-backed';
import type { ImageManifest } from '../../src/oci/types';

export function layoutManifest(ref: string): { manifest: ImageManifest; blob: (digest: string) => string } {
  const { dir, tag } = parseLayoutRef(ref);
  const blob = (digest: string) => path.join(dir, 'blobs', 'sha256', digest.slice(7));
  const index = JSON.parse(fs.readFileSync(path.join(dir, 'index.json'), 'utf8'));
  const entry = index.manifests.find((m: { annotations?: Record<string, string> }) => m.annotations?.['org.opencontainers.image.ref.name'] === (tag ?? 'latest'));
  return { manifest: JSON.parse(fs.readFileSync(blob(entry.digest), 'utf8')), blob };
}

/** Materialises the blobs of a lazy manifest whose blobs are files, mounts it, runs `fn`, unmounts. */
export async function withLazyMount<T>(manifest: ImageManifest, blobFile: (digest: string) => string, work: string, fn: (mnt: string) => T): Promise<T> {
  const [boot, ...blobs] = manifest.layers;
  if (boot.mediaType !== LazyMediaType.bootstrap) throw new Error(`first layer is ${boot.mediaType}, not a bootstrap`);
  const devices: string[] = [];
  for (const b of blobs) {
    const out = path.join(work, `${b.digest.slice(7)}.raw`);
    await materializeBlob(blobFile(b.digest), out);
    devices.push(out);
  }
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  mountFileBacked({ bootstrap: blobFile(boot.digest), blobs: devices, target: mnt });
  try {
    return fn(mnt);
  } finally {
    unmount(mnt);
  }
}
