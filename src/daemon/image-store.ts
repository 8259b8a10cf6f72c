// The node's image cache: lazy manifests resolved (directly or through the source image's referrer),
// bootstraps downloaded and verified, one sparse cache file per blob shared by every image using it,
// and what a mounted image is prepared again from after a restart (./image-metadata).
import fs from 'node:fs';
import path from 'node:path';
import { loadBlobIndex, type BlobIndex, type ExpectedTable, type RangeReader } from '../blob/blob-index';
import { Annotation, LazyMediaType } from '../convert/lazy-image';
import { validateBootstrapInSlices, type ExpectedDevice } from '../erofs/validate';
import { InputError } from '../errors';
import { log } from '../log';
import { digestHex } from '../oci/digest';
import { registryClient, registryReference, type OpenOptions } from '../oci/open-image';
import { manifestReference, parseReference, type ImageReference } from '../oci/reference';
import type { HostClient } from '../oci/host-client';
import { releaseBody } from '../oci/byte-stream';
import { readAll, type ResolvedImage } from '../oci/image-io';
import { hostPlatform, parseManifestOrIndex, type Descriptor, type ImageManifest, type Platform } from '../oci/types';
import type { BlobCache } from '../storage/blob-cache';
import type { RemoteBlob } from '../storage/chunk-fetcher';
import type { BlobStore } from '../storage/blob-store';
import { ImageMetadata, writeWhole } from './image-metadata';

/** A lazy image found, its blobs being opened (its bootstrap not checked yet). */
export interface FoundImage {
  /** The lazy image's manifest digest. */
  digest: string;
  blobs: Promise<BlobCache[]>;
  /** Where the lazy image lives: its access traces are its referrers there. */
  client: HostClient;
  repo: string;
  /** The lazy manifest's descriptor (a referrer's subject). */
  subject: Descriptor;
}

export interface PreparedImage extends Omit<FoundImage, 'blobs'> {
  blobs: BlobCache[];
  ref: string;
  /** sha256:... of the bootstrap, verified when it was downloaded. */
  bootstrapDigest: string;
  bootstrapPath: string;
  /** Where preparing it spent its time, in milliseconds: what a slow mount waited on. */
  preparedMs: PrepareTimings;
}

export interface PrepareTimings {
  /** Resolving the reference to the lazy manifest (with its referrer lookup). */
  find: number;
  /** Downloading the bootstrap (0 when cached). */
  bootstrap: number;
  validate: number;
  /** Opening the blobs (their chunk tables), from when the image was found: alongside the bootstrap. */
  tables: number;
}

export interface LazyImage {
  client: HostClient;
  repo: string;
  manifest: ImageManifest;
  /** The manifest's bytes, which `digest` names. */
  raw: Buffer;
  digest: string;
  /** The lazy manifest's descriptor (a referrer's subject). */
  subject: Descriptor;
}

function lazyImage(client: HostClient, repo: string, resolved: ResolvedImage): LazyImage {
  const { manifest, digest, mediaType, raw } = resolved;
  return { client, repo, manifest, raw, digest, subject: { mediaType, digest, size: raw.length } };
}

/** Whether `manifest` is a lazy image's: its first layer is the bootstrap. */
function isLazy(manifest: ImageManifest): boolean {
  return manifest.layers[0]?.mediaType === LazyMediaType.bootstrap;
}

/** Where a prepared image's lazy manifest lives, pinned by its digest: what `ImageStore.prepare` takes as `lazy`. */
export function lazyReference(image: Pick<PreparedImage, 'client' | 'repo' | 'digest'>): string {
  return `${image.client.host}/${image.repo}@${image.digest}`;
}

/**
 * Finds the lazy manifest for `ref`: the ref itself, or the first lazy image one of its referrers
 * names. A referrer that names no registry image pinned by digest (a local `oci:` path written by an
 * older convert), or one that does not lead to a lazy image, is passed over: one bad referrer must not
 * hide a good one from every node.
 */
export async function findLazyImage(
  ref: string,
  registries: OpenOptions = {},
  platform: Platform = hostPlatform(),
): Promise<LazyImage> {
  const parsed = parseReference(ref);
  const client = registryClient(parsed.registry, registries);
  const resolved = await client.resolveManifest(parsed.repository, manifestReference(parsed), platform);
  if (isLazy(resolved.manifest)) {
    return lazyImage(client, parsed.repository, resolved);
  }
  return findLazyForm(ref, resolved.digest, registries, platform);
}

/**
 * The lazy image converted from manifest `digest` of `ref`'s repository, found through its referrers
 * as `findLazyImage` finds it: for a caller that has resolved `ref` already (containerd, whose pull
 * names the manifest), one round trip fewer, and no tag that moves meanwhile.
 */
export async function findLazyForm(
  ref: string,
  digest: string,
  registries: OpenOptions = {},
  platform: Platform = hostPlatform(),
): Promise<LazyImage> {
  const parsed = parseReference(ref);
  const client = registryClient(parsed.registry, registries);
  const referrers = await client.referrers(parsed.repository, digest, LazyMediaType.referrer);
  const named = referrers.flatMap((r) => r.annotations?.[Annotation.image] ?? []);
  const passedOver: string[] = [];
  for (const target of named) {
    try {
      const lazy = registryReference(target);
      if (!lazy.digest) throw new InputError('the reference is not pinned by a digest', { image: target });
      const lazyClient = registryClient(lazy.registry, registries);
      const got = await lazyClient.resolveManifest(lazy.repository, lazy.digest, platform);
      if (!isLazy(got.manifest)) throw new InputError('it is not a lazy image', { image: target });
      log.info('found the lazy image through a referrer', { image: ref, lazy: target });
      return lazyImage(lazyClient, lazy.repository, got);
    } catch (err) {
      const error = (err as Error).message;
      log.warn('passing over a referrer that leads to no lazy image', { image: ref, referrer: target, error });
      passedOver.push(`${JSON.stringify(target)} (${error})`);
    }
  }
  if (passedOver.length > 0)
    throw new InputError(`no referrer leads to a lazy image: ${passedOver.join('; ')}`, { image: ref });
  throw new InputError('image is not in the lazy format and no converted image refers to it', { image: ref });
}

/** A data blob as the bootstrap's device table must name it: its id, and its size when the manifest gives it. */
export function expectedDevice(desc: Descriptor): ExpectedDevice {
  const size = desc.annotations?.[Annotation.uncompressedSize];
  return { id: digestHex(desc.digest), ...(size !== undefined && /^\d+$/.test(size) ? { size: Number(size) } : {}) };
}

/** The chunk table's place and digest as the manifest gives them, when it does. */
function expectedTable(desc: Descriptor): ExpectedTable | undefined {
  const offset = desc.annotations?.[Annotation.tableOffset];
  const digest = desc.annotations?.[Annotation.tableDigest];
  if (offset === undefined || digest === undefined) return undefined;
  if (!/^\d+$/.test(offset) || !/^sha256:[0-9a-f]{64}$/.test(digest))
    throw new InputError('invalid chunk table annotations', { layer: desc.digest });
  return { offset: Number(offset), digest };
}

/**
 * A data blob of a lazy image: its chunk table, loaded and checked, and how to read its ranges.
 * Chunks are checked against the chunk table, so any endpoint may serve them. The table is checked
 * against the manifest's digest of it; a manifest without one (older images) has its table read
 * from the upstream only, never from a mirror nothing could catch lying.
 */
export async function openLazyBlob(
  ref: string,
  client: HostClient,
  repo: string,
  desc: Descriptor,
  opts: {
    /** How long one Range GET may take, retries included (the read deadline). */
    rangeBudgetMs?: number;
    /** Where chunk tables are kept: one kept there is read from there, one fetched is kept there. */
    kept?: ImageMetadata;
  } = {},
): Promise<{ remote: RemoteBlob; index: BlobIndex }> {
  const { rangeBudgetMs, kept } = opts;
  const what = `image ${ref}, blob ${desc.digest}`;
  const read: RangeReader = (offset, length, verify, priority, onBytes) =>
    client.getBlobRange(repo, desc.digest, offset, offset + length - 1, {
      verify,
      priority,
      budgetMs: rangeBudgetMs,
      onBytes,
    });
  const table = expectedTable(desc);
  const readTable: RangeReader = table
    ? read
    : (offset, length, verify) =>
        client.getBlobRange(repo, desc.digest, offset, offset + length - 1, { verify, mirrors: false });
  const fetched: Array<{ offset: number; data: Buffer }> = [];
  const keptIndex = await kept?.table(desc, table, what);
  const index =
    keptIndex ??
    (await loadBlobIndex(
      async (offset, length, verify, priority) => {
        const data = await readTable(offset, length, verify, priority);
        fetched.push({ offset, data });
        return data;
      },
      desc.size,
      what,
      table,
    ));
  const expected = Number(desc.annotations?.[Annotation.uncompressedSize] ?? index.trailer.uncompressedSize);
  if (expected !== index.trailer.uncompressedSize)
    throw new InputError(
      `uncompressed size ${index.trailer.uncompressedSize} differs from the annotation ${expected}`,
      {
        image: ref,
        layer: desc.digest,
      },
    );
  if (kept && !keptIndex) {
    // What loadBlobIndex read and checked, in the blob's order: its bytes from the table to the end.
    const bytes = Buffer.concat(fetched.sort((a, b) => a.offset - b.offset).map((f) => f.data));
    if (bytes.length === desc.size - index.trailer.tableOffset) kept.keepTable(desc, bytes, table);
  }
  // The closures here share one context with `read`, which the mount keeps for its life: the table's
  // bytes as fetched, decoded into `index` already, must not stay with it.
  fetched.length = 0;
  return { remote: { digest: desc.digest, what, read }, index };
}

export class ImageStore {
  /** Manifests and chunk tables kept in the cache. */
  readonly kept: ImageMetadata;

  constructor(
    readonly cacheDir: string,
    /** The blob cache files, shared by every image. */
    readonly blobs: BlobStore,
    private readonly registries: OpenOptions = {},
    /** Milliseconds a Range GET of a data blob may take, retries included (default: attempts alone bound it). */
    private readonly rangeBudgetMs?: number,
  ) {
    fs.mkdirSync(path.join(cacheDir, 'bootstraps'), { recursive: true, mode: 0o700 });
    this.kept = new ImageMetadata(cacheDir);
  }

  private get blobOptions(): { rangeBudgetMs?: number; kept: ImageMetadata } {
    return { rangeBudgetMs: this.rangeBudgetMs, kept: this.kept };
  }

  /**
   * The lazy image `ref` names at the registry now (a tag is resolved), ready to mount. With `lazy`
   * (a mount's `lazyReference`), the image that mount was made of: exactly that one, whatever `ref`
   * names now, from what was kept in the cache when it was mounted, so without a registry request
   * when all of it is there; what is not is fetched by digest. `onFound` is called as soon as the lazy
   * image is found, with its blobs still being opened and its bootstrap not checked yet: each chunk is
   * checked against its blob's table, so fetching early is safe.
   */
  async prepare(ref: string, lazy?: string, onFound?: (image: FoundImage) => void): Promise<PreparedImage> {
    const start = performance.now();
    if (lazy !== undefined) return this.open(ref, await this.keptImage(ref, lazy), start, onFound);
    // A lazy image named by digest whose manifest is kept (the snapshotter keeps the one it found
    // for a pull) needs no request: a manifest named by its digest never changes.
    const kept = this.keptLazyImage(ref);
    const found = kept ?? (await findLazyImage(ref, this.registries));
    if (!kept) this.kept.keepManifest(found.digest, found.raw);
    return this.open(ref, found, start, onFound);
  }

  /** The lazy image a restored mount names, from the manifest kept in the cache when there is one. */
  private async keptImage(ref: string, lazy: string): Promise<LazyImage> {
    const pinned = registryReference(lazy);
    const digest = pinned.digest;
    if (!digest) throw new InputError('the lazy image of a mount is not pinned by a digest', { image: ref, lazy });
    const kept = this.keptManifest(ref, lazy, pinned, digest);
    if (kept) return kept;
    const client = registryClient(pinned.registry, this.registries);
    const image = lazyImage(
      client,
      pinned.repository,
      await client.resolveManifest(pinned.repository, digest, hostPlatform()),
    );
    if (!isLazy(image.manifest)) throw new InputError('it is not a lazy image', { image: ref, lazy });
    this.kept.keepManifest(digest, image.raw);
    return image;
  }

  /** `ref` itself, when it names a lazy image by digest and that manifest is kept; else null. */
  private keptLazyImage(ref: string): LazyImage | null {
    let pinned: ImageReference;
    try {
      pinned = registryReference(ref);
    } catch {
      return null; // findLazyImage says what is wrong with it
    }
    return pinned.digest ? this.keptManifest(ref, ref, pinned, pinned.digest) : null;
  }

  /** The kept manifest `digest` of the lazy image `lazy` (at `pinned`), as a LazyImage; null when none is kept. */
  private keptManifest(ref: string, lazy: string, pinned: ImageReference, digest: string): LazyImage | null {
    const raw = this.kept.manifest(digest);
    if (!raw) return null;
    const parsed = parseManifestOrIndex(raw, undefined, { image: ref, lazy });
    if (parsed.kind !== 'manifest') throw new InputError('the kept lazy manifest is an index', { image: ref, lazy });
    if (!isLazy(parsed.manifest)) throw new InputError('it is not a lazy image', { image: ref, lazy });
    const subject = { mediaType: parsed.mediaType, digest, size: raw.length };
    const client = registryClient(pinned.registry, this.registries);
    return { client, repo: pinned.repository, manifest: parsed.manifest, raw, digest, subject };
  }

  /** Each blob's cache, opened with its chunk table (fetched once for all blobs, in parallel). */
  private async openBlobs(
    ref: string,
    client: HostClient,
    repo: string,
    descs: readonly Descriptor[],
  ): Promise<BlobCache[]> {
    const tables = descs.map((desc) => {
      const table = this.blobs.get(desc.digest) ? null : openLazyBlob(ref, client, repo, desc, this.blobOptions);
      table?.catch(() => undefined); // awaited below, in order
      return table;
    });
    const blobs: BlobCache[] = [];
    for (const [i, desc] of descs.entries()) {
      const table = await tables[i];
      // Known already, or opened meanwhile by another mount of an image sharing the blob.
      const known = this.blobs.get(desc.digest);
      if (known) {
        blobs.push(known);
        continue;
      }
      const { remote, index } = table ?? (await openLazyBlob(ref, client, repo, desc, this.blobOptions)); // evicted meanwhile
      blobs.push(this.blobs.add(remote, index));
    }
    return blobs;
  }

  private async open(
    ref: string,
    { client, repo, manifest, digest, subject }: LazyImage,
    start: number,
    onFound?: (image: FoundImage) => void,
  ): Promise<PreparedImage> {
    const found = performance.now();
    const [boot, ...blobDescs] = manifest.layers;
    // The blobs are opened while the bootstrap is fetched and checked: a mount waits for one round
    // trip, not one per blob, and their chunks can be fetched meanwhile (each checked against its table).
    let tablesMs = 0;
    const opened = this.openBlobs(ref, client, repo, blobDescs).then((blobs) => {
      tablesMs = performance.now() - found;
      return blobs;
    });
    opened.catch(() => undefined); // awaited below, unless the bootstrap fails first
    onFound?.({ digest, blobs: opened, client, repo, subject });
    const bootstrapPath = path.join(this.cacheDir, 'bootstraps', digestHex(boot.digest));
    let bytes: Buffer | undefined;
    if (!fs.existsSync(bootstrapPath)) {
      try {
        // The body stream checks the size and digest against the descriptor.
        bytes = await client.readBlob(repo, boot.digest, boot.size, (body) => readAll(body, boot.size));
        writeWhole(bootstrapPath, bytes);
      } catch (err) {
        throw InputError.wrap(err, { image: ref, layer: boot.digest });
      }
    }
    const downloaded = performance.now();
    // Every mount path comes through here: no bootstrap reaches the kernel unchecked, cached or not.
    try {
      await validateBootstrapInSlices(bytes ?? fs.readFileSync(bootstrapPath), {
        what: boot.digest,
        devices: blobDescs.map(expectedDevice),
      });
    } catch (err) {
      throw InputError.wrap(err, { image: ref });
    } finally {
      if (bytes) releaseBody(bytes); // the kernel reads the file
    }
    const validated = performance.now();
    const blobs = await opened;
    const ms = (from: number, to: number) => Math.round(to - from);
    const preparedMs = {
      find: ms(start, found),
      bootstrap: ms(found, downloaded),
      validate: ms(downloaded, validated),
      tables: Math.round(tablesMs),
    };
    return { ref, digest, bootstrapDigest: boot.digest, bootstrapPath, blobs, client, repo, subject, preparedMs };
  }
}
