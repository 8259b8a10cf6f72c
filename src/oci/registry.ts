// A client for one registry host speaking the OCI distribution spec: manifests, blobs (streamed,
// ranged, pushed monolithically or in chunks, mounted across repositories) and referrers, with
// authentication, retries and digest checks. Every error names the registry, the repository and the
// digest or reference involved.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Dispatcher } from 'undici';
import { createHttpAgent, type HttpAgent } from './http-agent';
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';
import { loadDockerCredentials, printableUrl, pullScope, pushScope, RegistryAuth, type Credentials } from './auth';
import { digestHex, sha256Digest, verifyDigest } from './digest';
import { bodyChunks, streamOver, type ByteStream } from './byte-stream';
import { resolveThroughIndexes, type ResolvedImage } from './image-io';
import { isValidRepository, isValidTag } from './reference';
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

export interface RegistryClientOptions {
  /** Speak http:// instead of https://. */
  plainHttp?: boolean;
  /** TLS without certificate verification. */
  insecure?: boolean;
  /** PEM certificates trusted besides Node's default CAs (a private CA). */
  ca?: string;
  /**
   * Another endpoint serving this host's repositories, e.g. a mirror: its API root
   * (`http://mirror:5001/v2`; requests go to `<api>/<repository>/...`). Errors then name it as
   * `endpoint`, and its credentials are looked up under its own host.
   */
  api?: string;
  /** Sent as `?ns=` with every request: a mirror learns which upstream host is meant. */
  namespace?: string;
  /** Credentials for this endpoint; undefined: look them up in the docker config; null: anonymous. */
  credentials?: Credentials | null;
  /** Attempts per request when the registry is busy or the connection fails (default 4). */
  retries?: number;
  /** Bound on waiting for response headers and between body bytes (default 60 s). */
  timeoutMs?: number;
  /** First backoff delay; later ones double, with jitter (default 500 ms). */
  retryBaseMs?: number;
  /** Cap on any one wait between attempts, including a registry's Retry-After (default 30 s). */
  maxRetryDelayMs?: number;
  /** Blobs larger than this are uploaded in PATCH chunks of this size (default 16 MiB). */
  chunkSize?: number;
  /** Concurrent connections per origin (default 8). */
  connections?: number;
}

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

export type PushResult = 'exists' | 'mounted' | 'uploaded';

/** An upload session: where the next chunk goes and how many bytes the registry holds. */
export interface BlobUpload {
  readonly repo: string;
  location: URL;
  offset: number;
  readonly ctx: ErrorContext;
}

export interface PushBlobOptions {
  /** A repository on the same registry that may hold the blob already: mounted instead of uploaded. */
  mountFrom?: string;
}

type Method = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

interface Call {
  /** What is being done, for messages: 'get manifest', 'upload blob chunk', ... */
  op: string;
  method: Method;
  url: URL;
  headers?: Record<string, string>;
  /** Makes the request body; called again for each attempt. */
  body?: () => Buffer | Readable | AsyncIterable<Buffer>;
  scopes: string[];
  ctx: ErrorContext;
  /** Whether a busy registry or a broken connection may be answered by sending the request again. */
  retry: boolean;
  followRedirects?: boolean;
}

interface Response {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

export const ALL_MANIFEST_MEDIA_TYPES: readonly string[] = [...MANIFEST_MEDIA_TYPES, ...INDEX_MEDIA_TYPES];
const RETRY_STATUSES = new Set([429, 500, 502, 503, 504]);
const RETRY_ERROR_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);
/** Codes of a TLS certificate that does not verify: the message says how to trust it. */
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
const MAX_REDIRECTS = 5;
const MAX_ERROR_BODY = 64 << 10;
const USER_AGENT = 'erofs-ondemand/0.1';
/** The referrers tag schema's tag for a subject: `sha256-<hex>`. */
export function referrersTag(subjectDigest: string): string {
  return `sha256-${digestHex(subjectDigest)}`;
}

/** A failed request that may succeed when tried again (busy registry, broken connection). */
class TransientError extends InputError {}

function header(res: { headers: Dispatcher.ResponseData['headers'] }, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown } };
  if (typeof e?.code === 'string') return e.code;
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return undefined;
}

/** Whether a request failed for want of a connection or an answer in time, rather than on an answer. */
export function isUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && RETRY_ERROR_CODES.has(code)) return true;
  }
  return false;
}

/** Milliseconds a Retry-After value (seconds or an HTTP date) asks to wait, or undefined. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? undefined : Math.max(0, when - now);
}

function mediaTypeOf(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0].trim();
}

export class RegistryClient {
  /** The registry host the repositories belong to (what image references name). */
  readonly host: string;
  /** The endpoint spoken to when it is not the host itself (a mirror), for messages. */
  readonly endpoint: string | undefined;
  private readonly origin: string;
  private readonly apiPath: string;
  private readonly namespace: string | undefined;
  private readonly agent: HttpAgent;
  private readonly auth: RegistryAuth;
  private readonly attempts: number;
  private readonly retryBaseMs: number;
  private readonly maxRetryDelayMs: number;
  readonly chunkSize: number;

  constructor(host: string, opts: RegistryClientOptions = {}) {
    this.host = host;
    const api = new URL(opts.api ?? `${opts.plainHttp ? 'http' : 'https'}://${host}/v2`);
    this.origin = api.origin;
    this.apiPath = api.pathname.replace(/\/+$/, '');
    this.endpoint = opts.api === undefined ? undefined : printableUrl(api).replace(/\/+$/, '');
    this.namespace = opts.namespace;
    this.attempts = Math.max(1, opts.retries ?? 4);
    const timeoutMs = opts.timeoutMs ?? 60_000;
    this.retryBaseMs = opts.retryBaseMs ?? 500;
    this.maxRetryDelayMs = opts.maxRetryDelayMs ?? 30_000;
    this.chunkSize = opts.chunkSize ?? 16 << 20;
    this.agent = createHttpAgent({
      connections: opts.connections ?? 8,
      keepAliveTimeout: 30_000,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      connect: { rejectUnauthorized: !opts.insecure, timeout: timeoutMs, ...(opts.ca ? { ca: [...tls.rootCertificates, opts.ca] } : {}) },
    });
    // A mirror's credentials are its own, never the upstream's.
    const credentials = opts.credentials === null ? undefined : (opts.credentials ?? loadDockerCredentials(api.host));
    this.auth = new RegistryAuth(api.host, credentials, (url, headers) => this.fetchToken(url, headers));
  }

  /** Closes the connections; the client is unusable afterwards. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  // ---- manifests ----

  async getManifest(repo: string, reference: string, accept: readonly string[] = ALL_MANIFEST_MEDIA_TYPES): Promise<ManifestResponse> {
    const got = await this.fetchManifest(repo, reference, accept);
    if (!got) throw new InputError('manifest unknown (404)', this.refContext(repo, reference));
    return got;
  }

  /** The manifest's digest, media type and size, or null when the registry does not have it. */
  async headManifest(repo: string, reference: string, accept: readonly string[] = ALL_MANIFEST_MEDIA_TYPES): Promise<ManifestHead | null> {
    const ctx = this.refContext(repo, reference);
    const res = await this.send({
      op: 'head manifest',
      method: 'HEAD',
      url: this.url(`${repo}/manifests/${reference}`),
      headers: { accept: accept.join(', ') },
      scopes: [pullScope(repo)],
      ctx,
      retry: true,
    });
    await res.body.dump();
    if (res.status === 404) return null;
    if (res.status !== 200) throw await this.unexpected(res, 'head manifest', ctx);
    const digest = header(res, 'docker-content-digest') ?? (isDigest(reference) ? reference : undefined);
    if (!digest) {
      // Without the header the digest is only known by hashing the manifest.
      const full = await this.getManifest(repo, reference, accept);
      return { mediaType: full.mediaType, digest: full.digest, size: full.raw.length };
    }
    if (!isDigest(digest)) throw new InputError(`registry answered with an unsupported digest ${JSON.stringify(digest)}`, ctx);
    if (isDigest(reference) && digest !== reference) throw new InputError(`registry answered HEAD with digest ${digest}`, ctx);
    return { mediaType: mediaTypeOf(header(res, 'content-type')), digest, size: Number(header(res, 'content-length') ?? -1) };
  }

  /** Follows an index down to the manifest for `platform`, as `ImageSource.resolve` does. */
  resolveManifest(repo: string, reference: string, platform: Platform): Promise<ResolvedImage> {
    return resolveThroughIndexes(async (next) => {
      const ref = next?.digest ?? reference;
      return { ...(await this.getManifest(repo, ref)), ctx: this.refContext(repo, ref) };
    }, platform);
  }

  /**
   * Stores a manifest under a tag or its digest and returns its digest. A manifest with a `subject`
   * pushed to a registry without the referrers API (no `OCI-Subject` in the answer) is also added to
   * the subject's referrers tag-schema index.
   */
  async putManifest(repo: string, reference: string, raw: Buffer, mediaType: string): Promise<string> {
    const ctx = this.refContext(repo, reference);
    if (raw.length > MAX_MANIFEST_BYTES) throw manifestTooLarge(raw.length, ctx);
    const digest = sha256Digest(raw);
    if (isDigest(reference) && reference !== digest) throw new InputError(`manifest content hashes to ${digest}, not to the reference`, ctx);
    const res = await this.send({
      op: 'put manifest',
      method: 'PUT',
      url: this.url(`${repo}/manifests/${reference}`),
      headers: { 'content-type': mediaType },
      body: () => raw,
      scopes: [pushScope(repo)],
      ctx,
      retry: true,
    });
    if (res.status !== 201 && res.status !== 200) throw await this.unexpected(res, 'put manifest', ctx);
    await res.body.dump();
    const said = header(res, 'docker-content-digest');
    if (said && said !== digest) throw new InputError(`registry stored the manifest as ${said}, its content hashes to ${digest}`, ctx);

    let doc: { subject?: Descriptor; artifactType?: string; config?: Descriptor; annotations?: Record<string, string> } = {};
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
      await this.addReferrerFallback(repo, doc.subject.digest, desc);
    }
    return digest;
  }

  async deleteManifest(repo: string, digest: string): Promise<void> {
    const ctx = this.digestContext(repo, digest);
    const res = await this.send({ op: 'delete manifest', method: 'DELETE', url: this.url(`${repo}/manifests/${digest}`), scopes: [`repository:${repo}:delete`], ctx, retry: true });
    if (res.status !== 202 && res.status !== 200) throw await this.unexpected(res, 'delete manifest', ctx);
    await res.body.dump();
  }

  // ---- referrers ----

  /**
   * Descriptors of the manifests whose `subject` is `digest`: from the referrers API, or on registries
   * without it (404) from the `sha256-<hex>` tag-schema index.
   */
  async referrers(repo: string, digest: string, artifactType?: string): Promise<Descriptor[]> {
    const ctx = this.digestContext(repo, digest);
    const url = this.url(`${repo}/referrers/${digest}`);
    if (artifactType) url.searchParams.set('artifactType', artifactType);
    const res = await this.send({ op: 'list referrers', method: 'GET', url, headers: { accept: MediaType.ociIndex }, scopes: [pullScope(repo)], ctx, retry: true });
    let index: ImageIndex;
    if (res.status === 200) {
      const raw = await this.readManifestBody(res, ctx);
      index = this.parseIndex(raw, mediaTypeOf(header(res, 'content-type')), ctx);
    } else if (res.status === 404) {
      await res.body.dump();
      log.debug('registry has no referrers API; using the tag schema', ctx);
      const got = await this.fetchManifest(repo, referrersTag(digest), [MediaType.ociIndex]);
      if (!got) return [];
      index = this.parseIndex(got.raw, got.mediaType, this.refContext(repo, referrersTag(digest)));
    } else {
      throw await this.unexpected(res, 'list referrers', ctx);
    }
    return artifactType ? index.manifests.filter((m) => m.artifactType === artifactType) : index.manifests;
  }

  /** Adds `descriptor` to the tag-schema referrers index of `subjectDigest`, creating the index if need be. */
  async addReferrerFallback(repo: string, subjectDigest: string, descriptor: Descriptor): Promise<void> {
    const tag = referrersTag(subjectDigest);
    const ctx = this.refContext(repo, tag);
    const got = await this.fetchManifest(repo, tag, [MediaType.ociIndex]);
    const index: ImageIndex = got ? this.parseIndex(got.raw, got.mediaType, ctx) : { schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] };
    if (index.manifests.some((m) => m.digest === descriptor.digest)) return;
    index.manifests.push(descriptor);
    log.debug('adding a referrer to the tag-schema index', { ...ctx, digest: descriptor.digest });
    await this.putManifest(repo, tag, Buffer.from(JSON.stringify(index)), MediaType.ociIndex);
  }

  // ---- blobs ----

  /** The blob's size, or null when the repository does not have it. */
  async headBlob(repo: string, digest: string, scopes = [pullScope(repo)]): Promise<number | null> {
    const ctx = this.digestContext(repo, digest);
    const res = await this.send({ op: 'head blob', method: 'HEAD', url: this.url(`${repo}/blobs/${digest}`), scopes, ctx, retry: true, followRedirects: true });
    await res.body.dump();
    if (res.status === 404) return null;
    if (res.status !== 200) throw await this.unexpected(res, 'head blob', ctx);
    const length = header(res, 'content-length');
    if (length === undefined || !/^\d+$/.test(length)) throw new InputError('registry answered HEAD without a Content-Length', ctx);
    return Number(length);
  }

  /**
   * The blob's bytes. The stream fails at its end (or as soon as it runs long) when they do not match
   * `digest` and `expectedSize`.
   */
  async getBlob(repo: string, digest: string, expectedSize?: number): Promise<ByteStream> {
    const ctx = this.digestContext(repo, digest);
    const res = await this.send({ op: 'get blob', method: 'GET', url: this.url(`${repo}/blobs/${digest}`), scopes: [pullScope(repo)], ctx, retry: true, followRedirects: true });
    if (res.status === 404) {
      await res.body.dump();
      throw new InputError('blob unknown (404)', ctx);
    }
    if (res.status !== 200) throw await this.unexpected(res, 'get blob', ctx);
    const length = header(res, 'content-length');
    if (expectedSize !== undefined && length !== undefined && Number(length) !== expectedSize) {
      res.body.destroy();
      throw new InputError(`registry offers ${length} bytes, the descriptor says ${expectedSize}`, ctx);
    }
    const body = res.body;
    const wrapNetworkError = (err: unknown) => (err instanceof InputError ? err : this.networkError(err, 'reading the blob', ctx));
    async function* checked(): AsyncGenerator<Buffer> {
      try {
        yield* verifyDigest(bodyChunks(body), digest, expectedSize, ctx);
      } catch (err) {
        throw wrapNetworkError(err);
      }
    }
    return streamOver(checked(), body);
  }

  /** Bytes `start..endInclusive` of a blob. The registry must honour Range (206); the bytes are not verifiable against the digest. */
  async getBlobRange(repo: string, digest: string, start: number, endInclusive: number): Promise<Buffer> {
    const ctx = { ...this.digestContext(repo, digest), range: `${start}-${endInclusive}` };
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(endInclusive) || start < 0 || endInclusive < start) {
      throw new InputError('invalid byte range', ctx);
    }
    const res = await this.send({
      op: 'get blob range',
      method: 'GET',
      url: this.url(`${repo}/blobs/${digest}`),
      headers: { range: `bytes=${start}-${endInclusive}` },
      scopes: [pullScope(repo)],
      ctx,
      retry: true,
      followRedirects: true,
    });
    if (res.status === 200) {
      // Reading on would pull the whole blob to use a slice of it.
      res.body.destroy();
      throw new InputError(`registry ignored the Range request (answered 200 with the whole blob${header(res, 'content-length') ? ` of ${header(res, 'content-length')} bytes` : ''}); ranged reads need a registry or storage that supports Range`, ctx);
    }
    if (res.status === 404) {
      await res.body.dump();
      throw new InputError('blob unknown (404)', ctx);
    }
    if (res.status === 416) {
      await res.body.dump();
      throw new InputError(`range not satisfiable (416)${header(res, 'content-range') ? `: blob is ${header(res, 'content-range')}` : ''}`, ctx);
    }
    if (res.status !== 206) throw await this.unexpected(res, 'get blob range', ctx);
    const contentRange = header(res, 'content-range') ?? '';
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange.trim());
    if (!m || Number(m[1]) !== start || Number(m[2]) !== endInclusive) {
      res.body.destroy();
      throw new InputError(`registry answered 206 with Content-Range ${JSON.stringify(contentRange)}, not bytes ${start}-${endInclusive}`, ctx);
    }
    const want = endInclusive - start + 1;
    const data = await this.readLimited(res, want, ctx, 'range');
    if (data.length !== want) throw new InputError(`registry sent ${data.length} bytes for a ${want}-byte range`, ctx);
    return data;
  }

  /**
   * Stores a blob unless the repository has it: mounted from `mountFrom` when that repository has it,
   * else uploaded from `open()` (called again for each attempt) in one PUT or, beyond `chunkSize`,
   * in PATCH chunks.
   */
  async pushBlob(repo: string, digest: string, size: number, open: () => Readable, opts: PushBlobOptions = {}): Promise<PushResult> {
    const ctx = this.digestContext(repo, digest);
    if (!Number.isSafeInteger(size) || size < 0) throw new InputError(`invalid blob size ${size}`, ctx);
    const scopes = [pushScope(repo)];
    for (let attempt = 1; ; attempt++) {
      if ((await this.headBlob(repo, digest, scopes)) !== null) return 'exists';
      try {
        return await this.uploadOnce(repo, digest, size, open, opts, ctx);
      } catch (err) {
        // The upload session's state after a failure is unknown: start a new one from the first byte.
        if (!(err instanceof TransientError) || attempt >= this.attempts) throw err;
        const delay = this.backoff(attempt);
        log.warn('blob upload failed; starting it again', { ...ctx, attempt, delayMs: delay, error: err.detail });
        await sleep(delay);
      }
    }
  }

  private async uploadOnce(repo: string, digest: string, size: number, open: () => Readable, opts: PushBlobOptions, ctx: ErrorContext): Promise<PushResult> {
    const scopes = [pushScope(repo)];
    const start = this.url(`${repo}/blobs/uploads/`);
    if (opts.mountFrom && opts.mountFrom !== repo) {
      if (!isValidRepository(opts.mountFrom)) throw new InputError(`invalid repository to mount from ${JSON.stringify(opts.mountFrom)}`, ctx);
      start.searchParams.set('mount', digest);
      start.searchParams.set('from', opts.mountFrom);
      scopes.push(pullScope(opts.mountFrom));
    }
    const res = await this.send({ op: 'start blob upload', method: 'POST', url: start, headers: { 'content-length': '0' }, scopes, ctx, retry: true });
    await res.body.dump();
    if (res.status === 201 && opts.mountFrom) {
      log.debug('blob mounted', { ...ctx, from: opts.mountFrom });
      return 'mounted';
    }
    if (res.status !== 202) throw await this.unexpected(res, 'start blob upload', ctx);
    const location = this.location(res, ctx);

    if (size <= this.chunkSize) {
      const put = await this.send({
        op: 'upload blob',
        method: 'PUT',
        url: withDigest(location, digest),
        headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
        body: open,
        scopes,
        ctx,
        retry: false,
      });
      if (put.status !== 201) throw await this.unexpected(put, 'upload blob', ctx);
      await put.body.dump();
      this.checkCommitted(put, digest, ctx);
      return 'uploaded';
    }

    const upload: BlobUpload = { repo, location, offset: 0, ctx };
    const hash = createHash('sha256');
    for await (const chunk of chunksOf(open(), this.chunkSize)) {
      if (upload.offset + chunk.length > size) throw new InputError(`the blob's source gives more than ${size} bytes`, ctx);
      hash.update(chunk);
      await this.patchUpload(upload, chunk);
    }
    if (upload.offset !== size) throw new InputError(`the blob's source gave ${upload.offset} bytes, expected ${size}`, ctx);
    const got = `sha256:${hash.digest('hex')}`;
    if (got !== digest) throw new InputError(`digest mismatch: expected ${digest}, got ${got} (upload not committed)`, ctx);
    await this.commitUpload(upload, digest);
    return 'uploaded';
  }

  /**
   * Opens an upload session for a blob whose digest is not known yet (it is still being produced):
   * chunks go in order with `patchUpload` (or all of them as one stream with `streamUpload`), then
   * `commitUpload` names the digest, or `cancelUpload`.
   */
  async startUpload(repo: string): Promise<BlobUpload> {
    this.checkRepo(repo, 'upload');
    const ctx: ErrorContext = { ...this.where(), repository: repo };
    const res = await this.send({ op: 'start blob upload', method: 'POST', url: this.url(`${repo}/blobs/uploads/`), headers: { 'content-length': '0' }, scopes: [pushScope(repo)], ctx, retry: true });
    if (res.status !== 202) throw await this.unexpected(res, 'start blob upload', ctx);
    await res.body.dump();
    return { repo, location: this.location(res, ctx), offset: 0, ctx };
  }

  async patchUpload(upload: BlobUpload, chunk: Buffer): Promise<void> {
    const range = `${upload.offset}-${upload.offset + chunk.length - 1}`;
    await this.patch(upload, 'upload blob chunk', { 'content-length': String(chunk.length), 'content-range': range }, () => chunk);
    upload.offset += chunk.length;
  }

  /**
   * Sends the session's bytes as one PATCH whose body is read as it comes (chunked transfer coding,
   * no Content-Range), the way docker's client streams a layer: the registry takes the bytes as
   * they arrive, and there is no per-part request to wait for at the end. Not retried: the body
   * cannot be read twice.
   */
  async streamUpload(upload: BlobUpload, body: AsyncIterable<Buffer>): Promise<void> {
    let used = false;
    const patch = await this.patch(upload, 'stream blob upload', {}, () => {
      if (used) throw new Error('a streamed upload cannot be sent twice');
      used = true;
      return body;
    });
    const range = /^(?:bytes=)?0-(\d+)$/.exec(header(patch, 'range') ?? '');
    if (!range) throw new InputError(`registry answered the streamed upload with Range ${JSON.stringify(header(patch, 'range') ?? null)}`, { ...upload.ctx, offset: upload.offset });
    upload.offset = Number(range[1]) + 1;
  }

  /** One PATCH of an upload session (not retried: the session's offset moves with it); follows its Location. */
  private async patch(upload: BlobUpload, op: string, headers: Record<string, string>, body: NonNullable<Call['body']>): Promise<Response> {
    const ctx = { ...upload.ctx, offset: upload.offset };
    const res = await this.send({
      op,
      method: 'PATCH',
      url: upload.location,
      headers: { 'content-type': 'application/octet-stream', ...headers },
      body,
      scopes: [pushScope(upload.repo)],
      ctx,
      retry: false,
    });
    if (res.status !== 202) throw await this.unexpected(res, op, ctx);
    await res.body.dump();
    upload.location = this.location(res, ctx);
    return res;
  }

  async commitUpload(upload: BlobUpload, digest: string): Promise<void> {
    const ctx = { ...upload.ctx, digest };
    const put = await this.send({ op: 'commit blob upload', method: 'PUT', url: withDigest(upload.location, digest), headers: { 'content-length': '0' }, scopes: [pushScope(upload.repo)], ctx, retry: false });
    if (put.status !== 201) throw await this.unexpected(put, 'commit blob upload', ctx);
    await put.body.dump();
    this.checkCommitted(put, digest, ctx);
  }

  /** Ends a session without storing anything (the registry would drop it in time anyway). */
  async cancelUpload(upload: BlobUpload): Promise<void> {
    const res = await this.send({ op: 'cancel blob upload', method: 'DELETE', url: upload.location, scopes: [pushScope(upload.repo)], ctx: upload.ctx, retry: false });
    await res.body.dump();
    if (res.status !== 204 && res.status !== 202 && res.status !== 200 && res.status !== 404) throw await this.unexpected(res, 'cancel blob upload', upload.ctx);
  }

  private checkCommitted(res: Response, digest: string, ctx: ErrorContext): void {
    const said = header(res, 'docker-content-digest');
    if (said && said !== digest) throw new InputError(`registry committed the upload as ${said}`, ctx);
  }

  // ---- transport ----

  /** `<api>/<rest>`, with the `ns` query a mirror is told. */
  private url(rest: string): URL {
    const url = new URL(`${this.apiPath}/${rest}`, this.origin);
    if (this.namespace) url.searchParams.set('ns', this.namespace);
    return url;
  }

  /** What every error names: the registry host, and the endpoint when it is a mirror. */
  private where(): ErrorContext {
    return this.endpoint === undefined ? { registry: this.host } : { registry: this.host, endpoint: this.endpoint };
  }

  private refContext(repo: string, reference: string): ErrorContext {
    this.checkRepo(repo, reference);
    if (!isDigest(reference) && !isValidTag(reference)) throw new InputError('invalid tag or digest', { ...this.where(), repository: repo, reference });
    return { ...this.where(), repository: repo, reference };
  }

  private digestContext(repo: string, digest: string): ErrorContext {
    this.checkRepo(repo, digest);
    if (!isDigest(digest)) throw new InputError('invalid digest (sha256:<64 hex digits> expected)', { ...this.where(), repository: repo, digest });
    return { ...this.where(), repository: repo, digest };
  }

  private checkRepo(repo: string, what: string): void {
    if (!isValidRepository(repo)) throw new InputError('invalid repository name', { ...this.where(), repository: repo, reference: what });
  }

  private location(res: Response, ctx: ErrorContext): URL {
    const loc = header(res, 'location');
    if (!loc) throw new InputError(`registry answered ${res.status} without a Location for the upload`, ctx);
    try {
      return new URL(loc, res.url);
    } catch {
      throw new InputError('registry answered with an upload Location that is not a URL', ctx);
    }
  }

  private async fetchManifest(repo: string, reference: string, accept: readonly string[]): Promise<ManifestResponse | null> {
    const ctx = this.refContext(repo, reference);
    const res = await this.send({
      op: 'get manifest',
      method: 'GET',
      url: this.url(`${repo}/manifests/${reference}`),
      headers: { accept: accept.join(', ') },
      scopes: [pullScope(repo)],
      ctx,
      retry: true,
    });
    if (res.status === 404) {
      await res.body.dump();
      return null;
    }
    if (res.status !== 200) throw await this.unexpected(res, 'get manifest', ctx);
    const raw = await this.readManifestBody(res, ctx);
    const digest = sha256Digest(raw);
    if (isDigest(reference) && digest !== reference) throw new InputError(`digest mismatch: expected ${reference}, got ${digest}`, ctx);
    const said = header(res, 'docker-content-digest');
    if (said && said.startsWith('sha256:') && said !== digest) {
      throw new InputError(`digest mismatch: registry says ${said} (Docker-Content-Digest), content hashes to ${digest}`, ctx);
    }
    let mediaType = mediaTypeOf(header(res, 'content-type'));
    if (!ALL_MANIFEST_MEDIA_TYPES.includes(mediaType)) {
      // Some registries answer application/json; the document's own mediaType is then the truth.
      const inner = parseManifestOrIndex(raw, undefined, ctx);
      mediaType = inner.mediaType;
    }
    return { raw, mediaType, digest };
  }

  private async readManifestBody(res: Response, ctx: ErrorContext): Promise<Buffer> {
    const length = header(res, 'content-length');
    if (length !== undefined && Number(length) > MAX_MANIFEST_BYTES) {
      res.body.destroy();
      throw manifestTooLarge(length, ctx);
    }
    return this.readLimited(res, MAX_MANIFEST_BYTES, ctx, 'manifest');
  }

  private parseIndex(raw: Buffer, mediaType: string, ctx: ErrorContext): ImageIndex {
    const parsed = parseManifestOrIndex(raw, mediaType || MediaType.ociIndex, ctx);
    if (parsed.kind !== 'index') throw new InputError('expected an image index, got a manifest', ctx);
    return parsed.index;
  }

  /** Reads a body of at most `limit` bytes, destroying it as soon as it runs longer. */
  private async readLimited(res: Response, limit: number, ctx: ErrorContext, what: 'manifest' | 'range'): Promise<Buffer> {
    const parts: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        if (total > limit) {
          res.body.destroy();
          throw new InputError(what === 'manifest' ? `manifest exceeds the ${limit}-byte bound` : `registry sent more than the ${limit} bytes asked for`, ctx);
        }
        parts.push(chunk as Buffer);
      }
    } catch (err) {
      if (err instanceof InputError) throw err;
      throw this.networkError(err, `reading the ${what}`, ctx);
    }
    return Buffer.concat(parts);
  }

  private async fetchToken(url: URL, headers: Record<string, string>): Promise<{ status: number; body: Buffer }> {
    const ctx: ErrorContext = { ...this.where(), realm: printableUrl(url) };
    for (let attempt = 1; ; attempt++) {
      let res: Dispatcher.ResponseData;
      try {
        res = await this.agent.request({ origin: url.origin, path: `${url.pathname}${url.search}`, method: 'GET', headers: { 'user-agent': USER_AGENT, ...headers } });
        res.body.on('error', () => {});
      } catch (err) {
        const e = this.networkError(err, 'get token', ctx);
        if (!(e instanceof TransientError) || attempt >= this.attempts) throw e;
        await sleep(this.backoff(attempt));
        continue;
      }
      if (RETRY_STATUSES.has(res.statusCode) && attempt < this.attempts) {
        await res.body.dump();
        await sleep(this.retryDelay(attempt, header(res, 'retry-after')));
        continue;
      }
      const parts: Buffer[] = [];
      let total = 0;
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        if (total > 1 << 20) {
          res.body.destroy();
          break;
        }
        parts.push(chunk as Buffer);
      }
      return { status: res.statusCode, body: Buffer.concat(parts) };
    }
  }

  /**
   * Sends a request: authenticates when challenged (once), follows redirects when asked (without the
   * registry's Authorization on other origins), and retries busy answers and broken connections.
   * Returns any final status; 401 and 403 become errors here.
   */
  private async send(call: Call): Promise<Response> {
    let challenged = false;
    for (let attempt = 1; ; ) {
      let res: Response;
      try {
        res = await this.sendFollowing(call);
      } catch (err) {
        if (err instanceof InputError && !(err instanceof TransientError)) throw err;
        const e = err instanceof TransientError ? err : this.networkError(err, call.op, call.ctx);
        if (!(e instanceof TransientError) || !call.retry || attempt >= this.attempts) {
          throw attempt > 1 ? new InputError(`${e.detail} (after ${attempt} attempts)`, call.ctx, { cause: e }) : e;
        }
        const delay = this.backoff(attempt);
        log.warn('registry request failed; retrying', { ...call.ctx, op: call.op, attempt, delayMs: delay, error: e.detail });
        await sleep(delay);
        attempt++;
        continue;
      }
      if (res.status === 401 && !challenged) {
        challenged = true;
        await res.body.dump();
        await this.auth.challenge(res.headers['www-authenticate'], call.scopes, call.ctx);
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        const detail = await this.errorDetail(res);
        const who = this.auth.hasCredentials ? 'with credentials' : 'anonymously';
        throw new InputError(`${call.op}: ${res.status === 401 ? 'unauthorized (401)' : 'denied (403)'} ${who}${detail}`, call.ctx);
      }
      if (RETRY_STATUSES.has(res.status)) {
        if (!call.retry || attempt >= this.attempts) {
          const detail = await this.errorDetail(res);
          const msg = `${call.op}: registry answered ${res.status}${detail}${attempt > 1 ? ` (after ${attempt} attempts)` : ''}`;
          throw call.retry ? new InputError(msg, call.ctx) : new TransientError(msg, call.ctx);
        }
        await res.body.dump();
        const delay = this.retryDelay(attempt, header(res, 'retry-after'));
        log.warn('registry busy; retrying', { ...call.ctx, op: call.op, status: res.status, attempt, delayMs: delay });
        await sleep(delay);
        attempt++;
        continue;
      }
      return res;
    }
  }

  private async sendFollowing(call: Call): Promise<Response> {
    let url = call.url;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...call.headers };
      // Credentials go to the registry only, never to storage it redirects to.
      if (url.origin === this.origin) {
        const authorization = await this.auth.authorization(call.scopes, call.ctx);
        if (authorization) headers.authorization = authorization;
      }
      const data = await this.agent.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method: call.method,
        headers,
        // undici sends an async iterable chunk by chunk (its types leave that case out).
        body: (call.body ? call.body() : null) as Buffer | Readable | null,
      });
      // Destroying a body we stop reading (a 200 to a Range request, an oversized manifest) makes
      // undici emit an abort error on it; readers still get errors through iteration.
      data.body.on('error', () => {});
      const res: Response = { status: data.statusCode, headers: data.headers, body: data.body, url };
      const location = header(res, 'location');
      if (!call.followRedirects || ![301, 302, 303, 307, 308].includes(res.status) || !location) return res;
      await res.body.dump();
      if (hop >= MAX_REDIRECTS) throw new InputError(`${call.op}: more than ${MAX_REDIRECTS} redirects`, call.ctx);
      url = new URL(location, url);
      log.debug('following a redirect', { ...call.ctx, op: call.op, to: printableUrl(url) });
    }
  }

  private networkError(err: unknown, op: string, ctx: ErrorContext): InputError {
    const code = errorCode(err);
    const message = this.auth.redact((err as Error)?.message ?? String(err));
    if (code && TLS_VERIFY_CODES.has(code)) {
      const text = `${op}: the TLS certificate of ${this.origin} does not verify: ${message} (${code}); trust its CA with "ca" in the registries configuration, or skip verification with "insecure"`;
      return new InputError(text, ctx, { cause: err });
    }
    const text = `${op}: ${message}${code ? ` (${code})` : ''}`;
    return code && RETRY_ERROR_CODES.has(code) ? new TransientError(text, ctx, { cause: err }) : new InputError(text, ctx, { cause: err });
  }

  private backoff(attempt: number): number {
    const ceiling = Math.min(this.maxRetryDelayMs, this.retryBaseMs * 2 ** (attempt - 1));
    // Half fixed, half random: spreads clients that failed together without ever retrying at once.
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  private retryDelay(attempt: number, retryAfter: string | undefined): number {
    const asked = parseRetryAfter(retryAfter);
    return asked === undefined ? this.backoff(attempt) : Math.min(asked, this.maxRetryDelayMs);
  }

  private async unexpected(res: Response, op: string, ctx: ErrorContext): Promise<InputError> {
    return new InputError(`${op}: registry answered ${res.status}${await this.errorDetail(res)}`, ctx);
  }

  /** `: CODE message` from a distribution-spec error body, or nothing; other bodies are not quoted. */
  private async errorDetail(res: Response): Promise<string> {
    let text = '';
    try {
      const parts: Buffer[] = [];
      let total = 0;
      for await (const chunk of res.body) {
        total += (chunk as Buffer).length;
        if (total > MAX_ERROR_BODY) break;
        parts.push(chunk as Buffer);
      }
      text = Buffer.concat(parts).toString('utf8');
    } catch {
      return '';
    } finally {
      res.body.destroy();
    }
    try {
      const doc = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
      const errors = (doc.errors ?? [])
        .map((e) => [e.code, e.message].filter((x) => typeof x === 'string' && x).join(' '))
        .filter(Boolean)
        .slice(0, 3);
      return errors.length ? `: ${this.auth.redact(errors.join('; ').slice(0, 300))}` : '';
    } catch {
      return '';
    }
  }
}

/** The upload URL with `digest=` added to whatever query the registry put there. */
function withDigest(location: URL, digest: string): URL {
  const url = new URL(location.toString());
  url.search = `${url.search ? `${url.search}&` : '?'}digest=${encodeURIComponent(digest)}`;
  return url;
}

/** Re-cuts a stream into buffers of exactly `size` bytes (the last one shorter). */
async function* chunksOf(source: AsyncIterable<Buffer>, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let held = 0;
  for await (const b of source) {
    let buf = Buffer.isBuffer(b) ? b : Buffer.from(b);
    while (held + buf.length >= size) {
      const take = size - held;
      parts.push(buf.subarray(0, take));
      yield Buffer.concat(parts);
      parts = [];
      held = 0;
      buf = buf.subarray(take);
    }
    if (buf.length) {
      parts.push(buf);
      held += buf.length;
    }
  }
  if (held) yield Buffer.concat(parts);
}
