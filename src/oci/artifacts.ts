// OCI artifacts attached to an image as referrers: an empty config, at most one layer of data, a
// `subject`. Pushed to a registry host's upstream (putManifest adds the tag-schema fallback where the
// referrers API is missing); the newest of a subject's artifacts of one type is found and read back.
import { Readable } from 'node:stream';
import { InputError } from '../errors';
import { readAll } from './image-io';
import { sha256Digest } from './digest';
import type { HostClient } from './host-client';
import type { RegistryClient } from './registry';
import { MediaType, parseManifestOrIndex, type Descriptor, type ImageManifest } from './types';

export const EMPTY_JSON = Buffer.from('{}');
export const EMPTY_DESCRIPTOR: Descriptor = {
  mediaType: MediaType.ociEmpty,
  digest: sha256Digest(EMPTY_JSON),
  size: EMPTY_JSON.length,
};

/** The annotation an artifact's creation time is in (RFC 3339), by which the newest is chosen. */
export const CREATED_ANNOTATION = 'org.opencontainers.image.created';

/** The data an artifact carries: one layer of these bytes, of this media type. */
export interface ArtifactLayer {
  mediaType: string;
  data: Buffer;
}

/** An artifact's manifest: the empty config, and its one layer (the empty descriptor when it carries no data). */
export function artifactManifest(
  subject: Descriptor,
  artifactType: string,
  annotations: Record<string, string>,
  layer: Descriptor = EMPTY_DESCRIPTOR,
): ImageManifest {
  return {
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    artifactType,
    config: EMPTY_DESCRIPTOR,
    layers: [layer],
    subject,
    annotations,
  };
}

/** Pushes an artifact whose subject is `subject` into `repo` (the subject's repository); returns its manifest digest. */
export async function pushArtifact(
  upstream: RegistryClient,
  repo: string,
  subject: Descriptor,
  artifactType: string,
  annotations: Record<string, string>,
  layer?: ArtifactLayer,
): Promise<string> {
  await upstream.pushBlob(repo, EMPTY_DESCRIPTOR.digest, EMPTY_JSON.length, () => Readable.from([EMPTY_JSON]));
  let layerDesc: Descriptor | undefined;
  if (layer) {
    layerDesc = { mediaType: layer.mediaType, digest: sha256Digest(layer.data), size: layer.data.length };
    await upstream.pushBlob(repo, layerDesc.digest, layerDesc.size, () => Readable.from([layer.data]));
  }
  const raw = Buffer.from(JSON.stringify(artifactManifest(subject, artifactType, annotations, layerDesc)));
  return upstream.putManifest(repo, sha256Digest(raw), raw, MediaType.ociManifest);
}

export interface FoundArtifact {
  /** The artifact's manifest digest. */
  digest: string;
  annotations: Record<string, string>;
  /** Its layer's bytes, checked against the layer's digest. */
  data: Buffer;
}

/** Milliseconds since the epoch of an artifact's creation annotation; -Infinity without a valid one. */
function createdMs(desc: Descriptor): number {
  const t = Date.parse(desc.annotations?.[CREATED_ANNOTATION] ?? '');
  return Number.isNaN(t) ? -Infinity : t;
}

/**
 * The newest (by its creation annotation) artifact of `artifactType` whose subject is `subject`, with
 * its layer of `layerMediaType` read (at most `maxBytes`); null when there is none.
 */
export async function newestArtifact(
  client: HostClient,
  repo: string,
  subject: string,
  artifactType: string,
  layerMediaType: string,
  maxBytes: number,
): Promise<FoundArtifact | null> {
  const found = await client.referrers(repo, subject, artifactType);
  if (found.length === 0) return null;
  const newest = found.reduce((a, b) => (createdMs(b) > createdMs(a) ? b : a));
  const ctx = { registry: client.host, repository: repo, digest: newest.digest };
  const got = await client.getManifest(repo, newest.digest);
  const parsed = parseManifestOrIndex(got.raw, got.mediaType, ctx);
  if (parsed.kind !== 'manifest') throw new InputError('artifact is an index, not a manifest', ctx);
  const m = parsed.manifest;
  if (m.subject?.digest !== subject) throw new InputError(`artifact's subject is not ${subject}`, ctx);
  const layer = m.layers[0];
  if (m.layers.length !== 1 || layer.mediaType !== layerMediaType)
    throw new InputError(`artifact does not hold one ${layerMediaType} layer`, ctx);
  if (!Number.isSafeInteger(layer.size) || layer.size < 0 || layer.size > maxBytes)
    throw new InputError(`artifact layer of ${layer.size} bytes exceeds the ${maxBytes}-byte bound`, ctx);
  const data = await client.readBlob(repo, layer.digest, layer.size, readAll);
  return { digest: newest.digest, annotations: m.annotations ?? {}, data };
}
