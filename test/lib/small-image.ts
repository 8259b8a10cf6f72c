// Small real images (an OCI config and gzipped tar layers: one, or many tiny ones) pushed with our
// registry client, and a copy of an image between registries: what a mirror holds after `skopeo copy`.
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { sha256Digest } from '../../src/oci/digest';
import { readAll } from '../../src/oci/image-io';
import type { RegistryClient } from '../../src/oci/registry';
import { MediaType, type ImageManifest } from '../../src/oci/types';
import { makeTar } from './tar-writer';

/** An image as pushed: config, gzipped layers, manifest. */
export interface TestImage {
  config: Buffer;
  layers: Buffer[];
  manifest: Buffer;
  digest: string;
}

export interface SmallImage extends TestImage {
  /** The file in the layer, about 1.5 MiB of random bytes: many chunks at a small chunk size. */
  payload: Buffer;
  layer: Buffer;
}

/** An OCI image of these uncompressed layer tars, gzipped. */
export function imageOf(tars: readonly Buffer[]): TestImage {
  const layers = tars.map((t) => gzipSync(t));
  const config = Buffer.from(
    JSON.stringify({
      architecture: process.arch === 'arm64' ? 'arm64' : 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: tars.map((t) => sha256Digest(t)) },
      config: {},
    }),
  );
  const m: ImageManifest = {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: sha256Digest(config), size: config.length },
    layers: layers.map((l) => ({ mediaType: MediaType.ociLayerGzip, digest: sha256Digest(l), size: l.length })),
  };
  const manifest = Buffer.from(JSON.stringify(m));
  return { config, layers, manifest, digest: sha256Digest(manifest) };
}

export function smallImage(): SmallImage {
  const payload = randomBytes(1_500_000);
  const tar = makeTar([
    { name: 'app/', type: '5', mode: 0o755 },
    { name: 'app/data.bin', body: payload },
    { name: 'app/hello.txt', body: 'hello through a mirror\n' },
  ]);
  const image = imageOf([tar]);
  return { ...image, payload, layer: image.layers[0] };
}

/** The text of `layers/<i>.txt` in `layeredImage`. */
export const layerText = (i: number): string => `layer ${i} of a many-layer image\n`;

/** `count` layers, layer i adding `layers/<i>.txt` (its own bytes, so each layer gets its own blob). */
export function layeredImage(count: number): TestImage {
  return imageOf(
    Array.from({ length: count }, (_, i) =>
      makeTar([
        { name: 'layers/', type: '5', mode: 0o755 },
        { name: `layers/${i}.txt`, body: layerText(i) },
      ]),
    ),
  );
}

/** Pushes any image made here as `repo:tag`. */
export async function pushSmallImage(c: RegistryClient, repo: string, tag: string, img: TestImage): Promise<void> {
  for (const b of [img.config, ...img.layers])
    await c.pushBlob(repo, sha256Digest(b), b.length, () => Readable.from([b]));
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
