// OCI layouts written by hand around given layer blobs (any bytes, any media type): for sources that
// no image tool would make, such as layer bombs.
import fs from 'node:fs';
import path from 'node:path';
import { sha256Digest } from '../../src/oci/digest';
import { MediaType } from '../../src/oci/types';

export interface LayoutLayer {
  mediaType: string;
  data: Buffer;
}

/** Writes an OCI layout at `dir` holding one image of these layers, tagged `latest`; returns its reference. */
export function writeLayoutImage(dir: string, layers: readonly LayoutLayer[]): string {
  const blobs = path.join(dir, 'blobs', 'sha256');
  fs.mkdirSync(blobs, { recursive: true });
  const put = (b: Buffer): { digest: string; size: number } => {
    const digest = sha256Digest(b);
    fs.writeFileSync(path.join(blobs, digest.slice('sha256:'.length)), b);
    return { digest, size: b.length };
  };
  const config = Buffer.from(
    JSON.stringify({
      architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [] },
      config: {},
    }),
  );
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, ...put(config) },
      layers: layers.map((l) => ({ mediaType: l.mediaType, ...put(l.data) })),
    }),
  );
  fs.writeFileSync(path.join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const tag = { 'org.opencontainers.image.ref.name': 'latest' };
  fs.writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [{ mediaType: MediaType.ociManifest, ...put(manifest), annotations: tag }],
    }),
  );
  return `oci:${dir}:latest`;
}
