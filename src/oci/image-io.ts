// Where images are read from and written to: a registry, an OCI layout directory, a docker archive.
import type { Descriptor, ImageManifest, Platform } from './types';

export interface ResolvedImage {
  manifest: ImageManifest;
  raw: Buffer;
  digest: string;
  mediaType: string;
}

export interface ImageSource {
  /** The reference as the user wrote it, for messages. */
  readonly ref: string;
  resolve(platform: Platform): Promise<ResolvedImage>;
  /** The blob's bytes, failing at the end if they do not match the descriptor's digest and size. */
  openBlob(desc: Descriptor): Promise<AsyncIterable<Buffer>>;
  /** Records, where the source lives, an artifact pointing at `subject` (registries: the referrers API). */
  addReferrer?(subject: Descriptor, artifactType: string, annotations: Record<string, string>): Promise<string>;
}

export interface ImageTarget {
  readonly ref: string;
  /** Stores a blob from a local file unless the target has it already; returns whether it uploaded. */
  putBlob(desc: Descriptor, file: string): Promise<boolean>;
  /** Stores a manifest under the target's tag; returns its digest. */
  putManifest(raw: Buffer, mediaType: string): Promise<string>;
}

export async function readAll(source: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of source) parts.push(b);
  return Buffer.concat(parts);
}
