// Manifests and referrers of the distribution API: fetched (checked against their digest), stored,
// deleted, and followed from an index down to one platform's manifest.
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';
import { digestContext, refContext } from './api-context';
import { pullScope, pushScope } from './auth';
import { digestHex, sha256Digest } from './digest';
import { header, mediaTypeOf, type HttpClient, type Response } from './http-client';
import { resolveThroughIndexes, type ResolvedImage } from './image-io';
import {
  INDEX_MEDIA_TYPES,
  isDigest,
  MANIFEST_MEDIA_TYPES,
  MAX_MANIFEST_BYTES,
  manifestTooLarge,
  MediaType,
  parseManifestOrIndex,
  type Descriptor,
  type ImageIndex,
  type Platform,
} from './types';

export interface ManifestResponse {
  raw: Buffer;
  mediaType: string;
  digest: string;
}

export interface ManifestHead {
  mediaType: string;
  digest: string;
  size: number;
}

export const ALL_MANIFEST_MEDIA_TYPES: readonly string[] = [...MANIFEST_MEDIA_TYPES, ...INDEX_MEDIA_TYPES];

/** The referrers tag schema's tag for a subject: `sha256-<hex>`. */
export function referrersTag(subjectDigest: string): string {
  return `sha256-${digestHex(subjectDigest)}`;
}

/** Anything that fetches manifests of a registry host: one endpoint, or a host with mirrors. */
export interface ManifestGetter {
  readonly host: string;
  getManifest(repo: string, reference: string): Promise<ManifestResponse>;
}

/** Follows an index down to the manifest for `platform`, as `ImageSource.resolve` does; the index's entries are fetched by digest. */
export function resolveManifest(
  client: ManifestGetter,
  repo: string,
  reference: string,
  platform: Platform,
): Promise<ResolvedImage> {
  return resolveThroughIndexes(async (next) => {
    const ref = next?.digest ?? reference;
    return {
      ...(await client.getManifest(repo, ref)),
      ctx: { registry: client.host, repository: repo, reference: ref },
    };
  }, platform);
}

export async function getManifest(
  http: HttpClient,
  repo: string,
  reference: string,
  accept: readonly string[],
): Promise<ManifestResponse> {
  const got = await fetchManifest(http, repo, reference, accept);
  if (!got) throw new InputError('manifest unknown (404)', refContext(http.where(), repo, reference));
  return got;
}

/** The manifest's digest, media type and size, or null when the registry does not have it. */
export async function headManifest(
  http: HttpClient,
  repo: string,
  reference: string,
  accept: readonly string[],
): Promise<ManifestHead | null> {
  const ctx = refContext(http.where(), repo, reference);
  const res = await askManifest(http, 'HEAD', repo, reference, accept, ctx);
  await res.body.dump();
  if (res.status === 404) return null;
  if (res.status !== 200) throw await http.unexpected(res, 'head manifest', ctx);
  const digest = header(res, 'docker-content-digest') ?? (isDigest(reference) ? reference : undefined);
  if (!digest) {
    // Without the header the digest is only known by hashing the manifest.
    const full = await getManifest(http, repo, reference, accept);
    return { mediaType: full.mediaType, digest: full.digest, size: full.raw.length };
  }
  if (!isDigest(digest))
    throw new InputError(`registry answered with an unsupported digest ${JSON.stringify(digest)}`, ctx);
  if (isDigest(reference) && digest !== reference)
    throw new InputError(`registry answered HEAD with digest ${digest}`, ctx);
  return {
    mediaType: mediaTypeOf(header(res, 'content-type')),
    digest,
    size: Number(header(res, 'content-length') ?? -1),
  };
}

/**
 * Stores a manifest under a tag or its digest and returns its digest. A manifest with a `subject`
 * pushed to a registry without the referrers API (no `OCI-Subject` in the answer) is also added to
 * the subject's referrers tag-schema index.
 */
export async function putManifest(
  http: HttpClient,
  repo: string,
  reference: string,
  raw: Buffer,
  mediaType: string,
): Promise<string> {
  const ctx = refContext(http.where(), repo, reference);
  if (raw.length > MAX_MANIFEST_BYTES) throw manifestTooLarge(raw.length, ctx);
  const digest = sha256Digest(raw);
  if (isDigest(reference) && reference !== digest)
    throw new InputError(`manifest content hashes to ${digest}, not to the reference`, ctx);
  const res = await http.send({
    op: 'put manifest',
    method: 'PUT',
    url: http.url(`${repo}/manifests/${reference}`),
    headers: { 'content-type': mediaType },
    body: () => raw,
    scopes: [pushScope(repo)],
    ctx,
    retry: true,
  });
  // 201 is the spec's one success: a server that answers 200 to everything has stored nothing.
  if (res.status !== 201) throw await http.unexpected(res, 'put manifest', ctx);
  await res.body.dump();
  const said = header(res, 'docker-content-digest');
  if (said && said !== digest)
    throw new InputError(`registry stored the manifest as ${said}, its content hashes to ${digest}`, ctx);

  let doc: { subject?: Descriptor; artifactType?: string; config?: Descriptor; annotations?: Record<string, string> } =
    {};
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    // Not JSON: the registry took it anyway; there is no subject to index.
  }
  if (doc?.subject && isDigest(doc.subject.digest) && !header(res, 'oci-subject')) {
    const desc: Descriptor = { mediaType, digest, size: raw.length };
    const artifactType = doc.artifactType ?? doc.config?.mediaType;
    if (artifactType) desc.artifactType = artifactType;
    if (doc.annotations) desc.annotations = doc.annotations;
    await addReferrerFallback(http, repo, doc.subject.digest, desc);
  }
  return digest;
}

export async function deleteManifest(http: HttpClient, repo: string, digest: string): Promise<void> {
  const ctx = digestContext(http.where(), repo, digest);
  const res = await http.send({
    op: 'delete manifest',
    method: 'DELETE',
    url: http.url(`${repo}/manifests/${digest}`),
    scopes: [`repository:${repo}:delete`],
    ctx,
    retry: true,
  });
  if (res.status !== 202 && res.status !== 200) throw await http.unexpected(res, 'delete manifest', ctx);
  await res.body.dump();
}

/**
 * Descriptors of the manifests whose `subject` is `digest`: from the referrers API, or on registries
 * without it (404) from the `sha256-<hex>` tag-schema index.
 */
export async function referrers(
  http: HttpClient,
  repo: string,
  digest: string,
  artifactType?: string,
): Promise<Descriptor[]> {
  const ctx = digestContext(http.where(), repo, digest);
  const tag = referrersTag(digest);
  const viaTag = () => fetchManifest(http, repo, tag, [MediaType.ociIndex]);
  const fromTag = (got: ManifestResponse | null): ImageIndex | null =>
    got ? parseIndex(got.raw, got.mediaType, refContext(http.where(), repo, tag)) : null;
  let index: ImageIndex | null;
  if (http.referrersApi === false) {
    index = fromTag(await viaTag());
  } else {
    // Until the registry has answered once, the tag schema is asked at the same time: a registry
    // without the API then costs no second round trip on the way to a mount.
    const early = http.referrersApi === undefined ? viaTag() : null;
    early?.catch(() => undefined); // awaited below only when the API is missing
    const url = http.url(`${repo}/referrers/${digest}`);
    if (artifactType) url.searchParams.set('artifactType', artifactType);
    const res = await http.send({
      op: 'list referrers',
      method: 'GET',
      url,
      headers: { accept: MediaType.ociIndex },
      scopes: [pullScope(repo)],
      ctx,
      retry: true,
    });
    if (res.status === 200) {
      http.referrersApi = true;
      const raw = await readManifestBody(http, res, ctx);
      index = parseIndex(raw, mediaTypeOf(header(res, 'content-type')), ctx);
    } else if (res.status === 404) {
      await res.body.dump();
      log.debug('registry has no referrers API; using the tag schema', ctx);
      http.referrersApi = false;
      index = fromTag(await (early ?? viaTag()));
    } else {
      throw await http.unexpected(res, 'list referrers', ctx);
    }
  }
  if (!index) return [];
  return artifactType ? index.manifests.filter((m) => m.artifactType === artifactType) : index.manifests;
}

/** Adds `descriptor` to the tag-schema referrers index of `subjectDigest`, creating the index if need be. */
export async function addReferrerFallback(
  http: HttpClient,
  repo: string,
  subjectDigest: string,
  descriptor: Descriptor,
): Promise<void> {
  const tag = referrersTag(subjectDigest);
  const ctx = refContext(http.where(), repo, tag);
  const got = await fetchManifest(http, repo, tag, [MediaType.ociIndex]);
  const index: ImageIndex = got
    ? parseIndex(got.raw, got.mediaType, ctx)
    : { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] };
  if (index.manifests.some((m) => m.digest === descriptor.digest)) return;
  index.manifests.push(descriptor);
  log.debug('adding a referrer to the tag-schema index', { ...ctx, digest: descriptor.digest });
  await putManifest(http, repo, tag, Buffer.from(JSON.stringify(index)), MediaType.ociIndex);
}

/** The manifest, checked against the digest it was asked by and the one the registry names; null on 404. */
async function fetchManifest(
  http: HttpClient,
  repo: string,
  reference: string,
  accept: readonly string[],
): Promise<ManifestResponse | null> {
  const ctx = refContext(http.where(), repo, reference);
  const res = await askManifest(http, 'GET', repo, reference, accept, ctx);
  if (res.status === 404) {
    await res.body.dump();
    return null;
  }
  if (res.status !== 200) throw await http.unexpected(res, 'get manifest', ctx);
  const raw = await readManifestBody(http, res, ctx);
  const digest = sha256Digest(raw);
  if (isDigest(reference) && digest !== reference)
    throw new InputError(`digest mismatch: expected ${reference}, got ${digest}`, ctx);
  const said = header(res, 'docker-content-digest');
  if (said && said.startsWith('sha256:') && said !== digest) {
    throw new InputError(
      `digest mismatch: registry says ${said} (Docker-Content-Digest), content hashes to ${digest}`,
      ctx,
    );
  }
  let mediaType = mediaTypeOf(header(res, 'content-type'));
  if (!ALL_MANIFEST_MEDIA_TYPES.includes(mediaType)) {
    // Some registries answer application/json; the document's own mediaType is then the truth.
    mediaType = parseManifestOrIndex(raw, undefined, ctx).mediaType;
  }
  return { raw, mediaType, digest };
}

function askManifest(
  http: HttpClient,
  method: 'GET' | 'HEAD',
  repo: string,
  reference: string,
  accept: readonly string[],
  ctx: ErrorContext,
): Promise<Response> {
  const op = method === 'GET' ? 'get manifest' : 'head manifest';
  return http.send({
    op,
    method,
    url: http.url(`${repo}/manifests/${reference}`),
    headers: { accept: accept.join(', ') },
    scopes: [pullScope(repo)],
    ctx,
    retry: true,
  });
}

async function readManifestBody(http: HttpClient, res: Response, ctx: ErrorContext): Promise<Buffer> {
  const length = header(res, 'content-length');
  if (length !== undefined && Number(length) > MAX_MANIFEST_BYTES) {
    res.body.destroy();
    throw manifestTooLarge(length, ctx);
  }
  const raw = await http.readBody(res, MAX_MANIFEST_BYTES, 'manifest', ctx);
  if (raw === null) throw new InputError(`manifest exceeds the ${MAX_MANIFEST_BYTES}-byte bound`, ctx);
  return raw;
}

function parseIndex(raw: Buffer, mediaType: string, ctx: ErrorContext): ImageIndex {
  const parsed = parseManifestOrIndex(raw, mediaType || MediaType.ociIndex, ctx);
  if (parsed.kind !== 'index') throw new InputError('expected an image index, got a manifest', ctx);
  return parsed.index;
}
