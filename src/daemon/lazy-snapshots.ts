// What the containerd snapshotter asks of the daemon: whether an image has a lazy form, and that
// form mounted (through the daemon's transport, like any mount) where containers' overlays find it.
import fs from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Annotation } from '../convert/lazy-image';
import { log } from '../log';
import { registryClient, type OpenOptions } from '../oci/open-image';
import { parseReference } from '../oci/reference';
import type { LazyImages } from '../snapshotter/snapshotter';
import type { ImageMetadata } from './image-metadata';
import { findLazyForm } from './image-store';

export interface Mounter {
  mount(ref: string, target: string): Promise<unknown>;
  warm(ref: string): void;
  umount(target: string): Promise<void>;
  isMounted(target: string): boolean;
}

/**
 * Lazy images mounted under `mountDir` (outside the cache directory, where the daemon mounts nothing).
 * A lazy manifest found for a pull is kept in `kept`, where the warm-up and the mount read it.
 */
export function lazySnapshots(
  registries: OpenOptions,
  mountDir: string,
  daemon: Mounter,
  kept: Pick<ImageMetadata, 'keepManifest'>,
): LazyImages {
  return {
    async find(ref, manifestDigest) {
      try {
        const lazy = await findLazyForm(ref, manifestDigest, registries);
        const sourceDigest = lazy.manifest.annotations?.[Annotation.sourceDigest];
        if (!sourceDigest) return null;
        kept.keepManifest(lazy.digest, lazy.raw);
        return { image: `${lazy.client.host}/${lazy.repo}@${lazy.digest}`, sourceDigest };
      } catch (err) {
        log.info('no lazy form: containerd unpacks the layers', { image: ref, reason: (err as Error).message });
        return null;
      }
    },
    async mount(image, id) {
      const target = path.join(mountDir, String(id));
      fs.mkdirSync(target, { recursive: true, mode: 0o755 });
      await daemon.mount(image, target);
      return target;
    },
    warm: (image) => daemon.warm(image),
    mounted: (target) => daemon.isMounted(target),
    async fetchLayer(ref, digest, file) {
      const parsed = parseReference(ref);
      await registryClient(parsed.registry, registries).readBlob(parsed.repository, digest, undefined, (body) =>
        pipeline(body, fs.createWriteStream(file)),
      );
    },
    async unmount(target) {
      await daemon.umount(target);
      fs.rmdirSync(target); // empty once unmounted; never a recursive removal under a mount point
    },
  };
}
