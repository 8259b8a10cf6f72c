// A small real image (an OCI config and one gzipped tar layer) pushed with our registry client, and a
// copy of an image between registries: what a mirror holds after `skopeo copy`.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { sha256Digest } from '../../src/oci/digest';
import { readAll } from '../../src/oci/image-io';
import type { RegistryClient } from '../../src/oci/registry';
import { MediaType, type ImageManifest } from '../../src/oci/types';
import { makeTar } from './tar-writer';

export interface SmallImage {
  /** The file in the layer, about 1.5 MiB of random bytes: many chunks at a small chunk size. */
  payload: Buffer;
  config: Buffer;
  layer: Buffer;
  manifest: Buffer;
  digest: string;
}

export function smallImage(): SmallImage {
  const payload = randomBytes(1_500_000);
  const tar = makeTar([
    { name: 'app/', type: '5', mode: 0o755 },
    { name: 'app/data.bin', body: payload },
    { name: 'app/hello.txt', body: 'hello through a mirror\n' },
  ]);
  const layer = gzipSync(tar);
  const config = Buffer.from(
    JSON.stringify({
      architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [sha256Digest(tar)] },
      config: {},
    }),
  );
  const m: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: sha256Digest(config), size: config.length },
    layers: [{ mediaType: MediaType.ociLayerGzip, digest: sha256Digest(layer), size: layer.length }],
  };
  const manifest = Buffer.from(JSON.stringify(m));
  return { payload, config, layer, manifest, digest: sha256Digest(manifest) };
}

export async function pushSmallImage(c: RegistryClient, repo: string, tag: string, img: SmallImage): Promise<void> {
  for (const b of [img.config, img.layer]) await c.pushBlob(repo, sha256Digest(b), b.length, () => Readable.from([b]));
  await c.putManifest(repo, tag, img.manifest, MediaType.ociManifest);
}

/** Copies `repo:tag` (one manifest, its config and layers) from one registry to another. */
export async function copyImage(from: RegistryClient, to: RegistryClient, repo: string, tag: string): Promise<void> {
  const got = await from.getManifest(repo, tag);
  const m = JSON.parse(got.raw.toString('utf8')) as ImageManifest;
  for (const d of [m.config, ...m.layers]) {
    const data = await readAll(await from.getBlob(repo, d.digest, d.size));
    await to.pushBlob(repo, d.digest, d.size, () => Readable.from([data]));
  }
  await to.putManifest(repo, tag, got.raw, got.mediaType);
}
