// Where images are read from and written to: a registry, an OCI layout directory, a docker archive.
import { InputError, type ErrorContext } from '../errors';
import { readAtMost } from './byte-stream';
import { choosePlatform, parseManifestOrIndex, type Descriptor, type ImageManifest, type Platform } from './types';

export interface ResolvedImage {
  manifest: ImageManifest;
  raw: Buffer;
  digest: string;
  mediaType: string;
}

/**
 * A blob's bytes as a source hands them out. `endpoint` names a registry mirror serving them;
 * `destroy`, where there is one, ends a download that will not be read to its end.
 */
export type OpenedBlob = AsyncIterable<Buffer> & { endpoint?: string; destroy?(): void };

export interface ImageSource {
  /** The reference as the user wrote it, for messages. */
  readonly ref: string;
  resolve(platform: Platform): Promise<ResolvedImage>;
  /** The blob's bytes, failing at the end if they do not match the descriptor's digest and size. */
  openBlob(desc: Descriptor): Promise<OpenedBlob>;
  /** Records, where the source lives, an artifact pointing at `subject` (registries: the referrers API). */
  addReferrer?(subject: Descriptor, artifactType: string, annotations: Record<string, string>): Promise<string>;
}

export interface ImageTarget {
  readonly ref: string;
  /** Stores a blob from a local file unless the target has it already; returns whether it uploaded. */
  putBlob(desc: Descriptor, file: string): Promise<boolean>;
  /**
   * Starts pushing a blob that is still being written to `file` (registries: an upload session fed
   * as the file grows), or returns undefined when the target gains nothing from it.
   */
  streamBlob?(file: string): StreamedBlob | undefined;
  /** The registry host, for a target in a registry. */
  readonly registry?: string;
  /**
   * Makes a blob that another repository of the target's registry holds part of the target's
   * repository: there already, mounted from `repository`, or copied from it when the registry
   * declines the mount; returns whether bytes were uploaded. Registries only.
   */
  linkBlob?(desc: Descriptor, repository: string): Promise<boolean>;
  /** Whether the target holds this blob (false when it cannot tell). */
  hasBlob?(digest: string): Promise<boolean>;
  /** Stores a manifest under the target's tag; returns its digest. */
  putManifest(raw: Buffer, mediaType: string): Promise<string>;
  /**
   * The registry reference, pinned by `digest`, that nodes pull the stored image by: what a referrer
   * next to the source may name. Registries only: a local path is nowhere a node can pull from.
   */
  pinnedRef?(digest: string): string;
  /** Takes back what this target stored: the conversion failed before its manifest was stored. */
  discard?(): void;
}

/** A blob push that follows its file while it is written. */
export interface StreamedBlob {
  /** The file now holds this many bytes. */
  written(bytes: number): void;
  /** The file is complete and `desc` names it: stores it unless the target has it; returns whether it uploaded. */
  finish(desc: Descriptor): Promise<boolean>;
  /** Nothing will be stored: ends any upload session. */
  abandon(): Promise<void>;
}

/** Every byte of `source`; with `sizeHint` (the length it should have), read into one buffer of that size. */
export async function readAll(source: AsyncIterable<Buffer>, sizeHint?: number): Promise<Buffer> {
  return (await readAtMost(source, Infinity, sizeHint))!;
}

export interface FetchedManifest {
  raw: Buffer;
  mediaType: string | undefined;
  digest: string;
  /** Names what was fetched, in errors. */
  ctx: ErrorContext;
}

/**
 * Fetches a manifest and, while it is an image index, the entry for `platform`: `fetch` gets no
 * descriptor for the first document, then the index entry to follow.
 */
export async function resolveThroughIndexes(
  fetch: (next?: Descriptor) => Promise<FetchedManifest>,
  platform: Platform,
): Promise<ResolvedImage> {
  let next: Descriptor | undefined;
  let ctx: ErrorContext = {};
  for (let depth = 0; depth < 4; depth++) {
    const got = await fetch(next);
    ctx = got.ctx;
    const parsed = parseManifestOrIndex(got.raw, got.mediaType, ctx);
    if (parsed.kind === 'manifest')
      return { manifest: parsed.manifest, raw: got.raw, digest: got.digest, mediaType: parsed.mediaType };
    next = choosePlatform(parsed.index, platform, ctx);
  }
  throw new InputError('image indexes nest too deeply', ctx);
}
