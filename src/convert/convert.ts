// `erofs-ondemand convert`: a normal OCI image in, the lazy image out (bootstrap + chunked blobs),
// pushed blobs first and the manifest last, so an interrupted run never leaves a manifest behind.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sha256Digest } from '../oci/digest';
import { readAll, type ImageSource, type ImageTarget, type ResolvedImage, type StreamedBlob } from '../oci/image-io';
import { MediaType, type Descriptor, type ImageManifest, type Platform } from '../oci/types';
import { DEFAULT_ZSTD_LEVEL } from '../blob/zstd-level';
import { InputError } from '../errors';
import { log } from '../log';
import { convertAddon } from '../native/convert-addon';
import { chunkDictBlobs, type ChunkDictBlob, type ChunkDictImage } from './chunk-dict-images';
import { convertLayers, LayerDownloads, type ConvertedBlob, type ConvertedLayers } from './convert-layers';
import { Annotation, LazyMediaType } from './lazy-image';
import { ConvertedLayerMemo, defaultMemoPath } from './layer-memo';

export type ConvertProgress =
  | { kind: 'resolved'; digest: string; layers: Descriptor[] }
  | { kind: 'layer-bytes'; layer: number; bytes: number }
  | { kind: 'push'; digest: string; uploaded: boolean };

export interface ConvertOptions {
  chunkBits: number;
  /** zstd level of the chunks (default DEFAULT_ZSTD_LEVEL): part of what a blob's digest depends on. */
  zstdLevel?: number;
  platform: Platform;
  /** The source already being resolved for `platform` by the caller, so that it overlaps other start-up work. */
  resolved?: Promise<ResolvedImage>;
  workDir?: string;
  /**
   * Lazy images in the target's registry whose chunks are referenced, not stored again: the blobs
   * used are listed in the new manifest as its own (`convert --chunk-dict`).
   */
  chunkDicts?: readonly ChunkDictImage[];
  /** Where to remember which blob each layer chain gave (default: under ~/.cache); null: nowhere. */
  memoFile?: string | null;
  onProgress?: (e: ConvertProgress) => void;
  signal?: AbortSignal;
}

export interface ConvertResult {
  source: { ref: string; digest: string };
  target: { ref: string; digest: string };
  manifest: ImageManifest;
  converted: ConvertedLayers;
  /** Digest of the referrer pushed next to the source, when the source and the target are in registries. */
  referrer: string | null;
  /** The chunk-dict images' blobs the new image references, listed in its manifest before its own. */
  chunkDictBlobs: ChunkDictBlob[];
  sourceLayerBytes: number;
  uploadedBlobs: number;
  skippedBlobs: number;
}

export function blobDescriptor(b: ConvertedBlob): Descriptor {
  return {
    mediaType: LazyMediaType.blob,
    digest: `sha256:${b.id}`,
    size: b.size,
    annotations: {
      [Annotation.sourceLayer]: b.sourceLayer,
      [Annotation.uncompressedSize]: String(b.uncompressedSize),
      [Annotation.tableOffset]: String(b.tableOffset),
      [Annotation.tableDigest]: b.tableDigest,
      [Annotation.chunks]: String(b.chunks.length),
    },
  };
}

/**
 * The lazy image's manifest. With chunk-dict images, the blobs of theirs the bootstrap uses come first
 * (devices 1..n), their descriptors as those images list them, and the manifest names the images.
 */
export function lazyManifest(
  config: Descriptor,
  sourceDigest: string,
  c: ConvertedLayers,
  chunkDict: { blobs: readonly Descriptor[]; images: readonly string[] } = { blobs: [], images: [] },
): ImageManifest {
  const annotations: Record<string, string> = {
    [Annotation.sourceDigest]: sourceDigest,
    [Annotation.chunkSize]: String(c.chunkSize),
  };
  if (chunkDict.images.length > 0) annotations[Annotation.chunkDict] = chunkDict.images.join(',');
  return {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config,
    layers: [
      {
        mediaType: LazyMediaType.bootstrap,
        digest: c.bootstrapDigest,
        size: c.bootstrapSize,
        annotations: { [Annotation.inodes]: String(c.inodes), [Annotation.chunkSize]: String(c.chunkSize) },
      },
      ...chunkDict.blobs,
      ...c.blobs.map(blobDescriptor),
    ],
    annotations,
  };
}

export async function convertImage(
  source: ImageSource,
  target: ImageTarget,
  opts: ConvertOptions,
): Promise<ConvertResult> {
  const work = fs.mkdtempSync(path.join(opts.workDir ?? os.tmpdir(), 'erofs-ondemand-convert-'));
  const removeWork = (): void => fs.rmSync(work, { recursive: true, force: true });
  // Also when the process ends before `finally` runs (an exception thrown outside this call's chain).
  process.once('exit', removeWork);
  let downloads: LayerDownloads | undefined;
  let manifestStored = false;
  const pushes: Array<Promise<boolean>> = [];
  try {
    const chunkDicts = opts.chunkDicts ?? [];
    // Checked before anything is pushed: a chunk-dict blob the target cannot hold makes no image.
    for (const image of chunkDicts) {
      if (!target.linkBlob || target.registry !== image.registry)
        throw new InputError(
          `chunk-dict image is in registry ${image.registry}, the target ${target.registry ? `in ${target.registry}` : 'is not in a registry'}: its blobs cannot be shared`,
          { 'chunk-dict': image.ref, image: target.ref },
        );
    }
    const stored = chunkDictBlobs(chunkDicts, 2 ** opts.chunkBits);
    const resolved = await (opts.resolved ?? source.resolve(opts.platform));
    const { manifest } = resolved;
    opts.onProgress?.({ kind: 'resolved', digest: resolved.digest, layers: manifest.layers });
    // The first layer's request (and the small layers') go out now, beside the config's and the memo's checks.
    const layers = manifest.layers.map((desc) => ({ ...desc, open: () => source.openBlob(desc) }));
    downloads = new LayerDownloads(layers);
    const configPath = path.join(work, 'config.json');
    fs.writeFileSync(configPath, await readAll(await source.openBlob(manifest.config)));

    // Blobs are pushed while later layers convert, and a layer's blob is streamed to a registry while
    // it is written, unless it is expected there already; the manifest waits for all of them.
    const track = (desc: Descriptor, upload: Promise<boolean>): void => {
      const p = upload.then((uploaded) => {
        opts.onProgress?.({ kind: 'push', digest: desc.digest, uploaded });
        return uploaded;
      });
      p.catch(() => undefined); // awaited below; not unhandled while layers convert
      pushes.push(p);
    };
    const push = (desc: Descriptor, file: string): void => track(desc, target.putBlob(desc, file));
    push(manifest.config, configPath);

    const layerDigests = manifest.layers.map((l) => l.digest);
    const memo = opts.memoFile === null ? null : new ConvertedLayerMemo(opts.memoFile ?? defaultMemoPath());
    // The compressor's version and level are part of what a converted blob depends on.
    const zstdLevel = opts.zstdLevel ?? DEFAULT_ZSTD_LEVEL;
    const compressor = `zstd/${convertAddon().zstdVersion}/level-${zstdLevel}`;
    const dictDigests = chunkDicts.map((d) => d.digest);
    const memoKeys = layerDigests.map((_, i) =>
      ConvertedLayerMemo.key(layerDigests, i, opts.chunkBits, compressor, dictDigests),
    );
    const expectedInTarget = target.streamBlob ? await expectedBlobs(target, memo, memoKeys) : new Set<number>();
    const streams = new Map<number, StreamedBlob>();
    const abandoned: Array<Promise<void>> = [];
    const converted = await convertLayers(layers, work, {
      downloads,
      chunkBits: opts.chunkBits,
      zstdLevel,
      image: source.ref,
      stored,
      signal: opts.signal,
      onBytes: (layer, bytes) => opts.onProgress?.({ kind: 'layer-bytes', layer, bytes }),
      blobProgress: (layer, file) => {
        if (expectedInTarget.has(layer)) return undefined;
        const stream = target.streamBlob?.(file);
        if (stream) streams.set(layer, stream);
        return stream;
      },
      onBlob: (b, layer) => {
        const desc = blobDescriptor(b);
        const stream = streams.get(layer);
        streams.delete(layer);
        if (stream) track(desc, stream.finish(desc));
        else push(desc, b.path);
      },
      onNoBlob: (layer) => {
        const stream = streams.get(layer);
        streams.delete(layer);
        if (stream) abandoned.push(stream.abandon());
      },
    }).catch(async (err) => {
      await Promise.allSettled([...pushes, ...abandoned, ...[...streams.values()].map((s) => s.abandon())]);
      throw err;
    });
    await Promise.all(abandoned);
    if (memo) {
      converted.layers.forEach((l, i) => memo.set(memoKeys[i], l.blob === null ? null : `sha256:${l.blob}`));
      memo.save();
    }

    const used = converted.storedUsed.map((k) => stored[k]);
    // Listed whole in the new manifest, so the target's repository must hold them: the registry's
    // garbage collection keeps a blob while a manifest lists it.
    for (const b of used) track(b.desc, target.linkBlob!(b.desc, b.image.repository));
    const lazy = lazyManifest(manifest.config, resolved.digest, converted, {
      blobs: used.map((b) => b.desc),
      images: dictDigests,
    });
    push(lazy.layers[0], converted.bootstrapPath);
    const uploaded = (await Promise.all(pushes)).filter(Boolean).length;
    opts.signal?.throwIfAborted();
    const raw = Buffer.from(JSON.stringify(lazy));
    const digest = await target.putManifest(raw, MediaType.ociManifest);
    manifestStored = true;
    if (digest !== sha256Digest(raw))
      throw new Error(`target ${target.ref} stored the manifest as ${digest}, expected ${sha256Digest(raw)}`);
    // Nodes find the lazy image from the original reference through this referrer, so it may only
    // name a registry image: a referrer to a local path would be taken by every node's lookup.
    let referrer: string | null = null;
    const pinned = target.pinnedRef?.(digest);
    if (source.addReferrer && pinned) {
      const subject = { mediaType: resolved.mediaType, digest: resolved.digest, size: resolved.raw.length };
      referrer = await source.addReferrer(subject, LazyMediaType.referrer, {
        [Annotation.image]: pinned,
        [Annotation.chunkSize]: String(converted.chunkSize),
      });
    } else if (source.addReferrer) {
      log.debug('no referrer added next to the source: the target is not a registry', {
        image: source.ref,
        target: target.ref,
      });
    }
    return {
      source: { ref: source.ref, digest: resolved.digest },
      target: { ref: target.ref, digest },
      manifest: lazy,
      converted,
      sourceLayerBytes: manifest.layers.reduce((n, l) => n + l.size, 0),
      referrer,
      chunkDictBlobs: used,
      uploadedBlobs: uploaded,
      skippedBlobs: 1 + lazy.layers.length - uploaded,
    };
  } catch (err) {
    if (!manifestStored) {
      // A half-written target is no use to anyone; pushes still running would add to it afterwards.
      await Promise.allSettled(pushes);
      target.discard?.();
    }
    throw err;
  } finally {
    downloads?.discardFrom(0); // read to their ends by now, unless the conversion stopped early
    process.off('exit', removeWork);
    removeWork();
  }
}

/** Layers whose blob the memo knows and the target holds (or which give no blob): not worth streaming. */
async function expectedBlobs(
  target: ImageTarget,
  memo: ConvertedLayerMemo | null,
  keys: string[],
): Promise<Set<number>> {
  const expected = new Set<number>();
  if (!memo) return expected;
  await Promise.all(
    keys.map(async (key, i) => {
      const blob = memo.get(key);
      if (blob === null || (blob !== undefined && (await target.hasBlob?.(blob)))) expected.add(i);
    }),
  );
  return expected;
}
