// A client for one registry endpoint speaking the OCI distribution spec: manifests and referrers
// (./manifests), blobs read (./blobs) and pushed (./blob-upload), over one HTTP layer
// (./http-client) with one retry policy (./retry). Every error names the registry, the repository
// and the digest or reference involved.
import type { Readable } from 'node:stream';
import { printableUrl, pullScope } from './auth';
import type { Credentials } from './docker-credentials';
import {
  blobExists,
  cancelUpload,
  commitUpload,
  patchUpload,
  pushBlob,
  startUpload,
  streamUpload,
  type BlobUpload,
  type PushBlobOptions,
  type PushResult,
} from './blob-upload';
import { getBlob, getBlobRange, headBlob } from './blobs';
import type { ByteStream, BytesSoFar } from './byte-stream';
import { HttpClient } from './http-client';
import type { ResolvedImage } from './image-io';
import * as manifests from './manifests';
import { ALL_MANIFEST_MEDIA_TYPES, type ManifestHead, type ManifestResponse } from './manifests';
import { DEFAULT_RETRY_POLICY, once, type Priority, type RetryPolicy } from './retry';
import type { Descriptor, Platform } from './types';

/** How long a registry may leave a request without an answer, or a body without bytes. */
export const DEFAULT_TIMEOUT_MS = 60_000;

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
  /** Attempts of a demand request when the registry is busy or the connection fails (default: DEFAULT_RETRY_POLICY); prefetches get fewer. */
  retries?: number;
  /**
   * Another endpoint follows this one (a mirror before the upstream): every request gets one
   * attempt, its transient failure left to the caller's fallback: falling back beats waiting.
   */
  fallback?: boolean;
  /** Bound on waiting for response headers and between body bytes (default: DEFAULT_TIMEOUT_MS). */
  timeoutMs?: number;
  /** First backoff delay; later ones double, with jitter (default: DEFAULT_RETRY_POLICY). */
  retryBaseMs?: number;
  /** Cap on any one wait between attempts, including a registry's Retry-After (default: DEFAULT_RETRY_POLICY). */
  maxRetryDelayMs?: number;
  /** Blobs larger than this are uploaded in PATCH chunks of this size (default 16 MiB). */
  chunkSize?: number;
  /** Concurrent connections per origin (default 8). */
  connections?: number;
}

export class RegistryClient {
  /** The registry host the repositories belong to (what image references name). */
  readonly host: string;
  /** The endpoint spoken to when it is not the host itself (a mirror), for messages. */
  readonly endpoint: string | undefined;
  readonly chunkSize: number;
  private readonly http: HttpClient;

  constructor(host: string, opts: RegistryClientOptions = {}) {
    const api = new URL(opts.api ?? `${opts.plainHttp ? 'http' : 'https'}://${host}/v2`);
    this.host = host;
    this.endpoint = opts.api === undefined ? undefined : printableUrl(api).replace(/\/+$/, '');
    this.chunkSize = opts.chunkSize ?? 16 << 20;
    const policy: RetryPolicy = {
      attempts: Math.max(1, opts.retries ?? DEFAULT_RETRY_POLICY.attempts),
      baseMs: opts.retryBaseMs ?? DEFAULT_RETRY_POLICY.baseMs,
      maxDelayMs: opts.maxRetryDelayMs ?? DEFAULT_RETRY_POLICY.maxDelayMs,
    };
    this.http = new HttpClient(host, {
      api,
      endpoint: this.endpoint,
      namespace: opts.namespace,
      credentials: opts.credentials,
      insecure: opts.insecure,
      ca: opts.ca,
      timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      connections: opts.connections ?? 8,
      policy: opts.fallback ? once(policy) : policy,
    });
  }

  /** Closes the connections; the client is unusable afterwards. */
  close(): Promise<void> {
    return this.http.close();
  }

  // ---- manifests and referrers (./manifests) ----

  getManifest(
    repo: string,
    reference: string,
    accept: readonly string[] = ALL_MANIFEST_MEDIA_TYPES,
  ): Promise<ManifestResponse> {
    return manifests.getManifest(this.http, repo, reference, accept);
  }

  headManifest(
    repo: string,
    reference: string,
    accept: readonly string[] = ALL_MANIFEST_MEDIA_TYPES,
  ): Promise<ManifestHead | null> {
    return manifests.headManifest(this.http, repo, reference, accept);
  }

  resolveManifest(repo: string, reference: string, platform: Platform): Promise<ResolvedImage> {
    return manifests.resolveManifest(this, repo, reference, platform);
  }

  putManifest(repo: string, reference: string, raw: Buffer, mediaType: string): Promise<string> {
    return manifests.putManifest(this.http, repo, reference, raw, mediaType);
  }

  deleteManifest(repo: string, digest: string): Promise<void> {
    return manifests.deleteManifest(this.http, repo, digest);
  }

  referrers(repo: string, digest: string, artifactType?: string): Promise<Descriptor[]> {
    return manifests.referrers(this.http, repo, digest, artifactType);
  }

  addReferrerFallback(repo: string, subjectDigest: string, descriptor: Descriptor): Promise<void> {
    return manifests.addReferrerFallback(this.http, repo, subjectDigest, descriptor);
  }

  // ---- blobs read (./blobs) ----

  headBlob(repo: string, digest: string, scopes = [pullScope(repo)]): Promise<number | null> {
    return headBlob(this.http, repo, digest, scopes);
  }

  getBlob(repo: string, digest: string, expectedSize?: number): Promise<ByteStream> {
    return getBlob(this.http, repo, digest, expectedSize);
  }

  getBlobRange(
    repo: string,
    digest: string,
    start: number,
    endInclusive: number,
    opts: { priority?: Priority; budgetMs?: number; onBytes?: BytesSoFar } = {},
  ): Promise<Buffer> {
    return getBlobRange(this.http, repo, digest, start, endInclusive, opts);
  }

  // ---- blobs pushed (./blob-upload) ----

  pushBlob(
    repo: string,
    digest: string,
    size: number,
    open: () => Readable,
    opts: PushBlobOptions = {},
  ): Promise<PushResult> {
    return pushBlob(this.http, this.chunkSize, repo, digest, size, open, opts);
  }

  /** Whether the repository holds the blob, asked before pushing it (see blobExists). */
  blobExists(repo: string, digest: string, size: number): Promise<boolean> {
    return blobExists(this.http, repo, digest, size);
  }

  startUpload(repo: string): Promise<BlobUpload> {
    return startUpload(this.http, repo);
  }

  patchUpload(upload: BlobUpload, chunk: Buffer): Promise<void> {
    return patchUpload(this.http, upload, chunk);
  }

  streamUpload(upload: BlobUpload, body: AsyncIterable<Buffer>): Promise<void> {
    return streamUpload(this.http, upload, body);
  }

  commitUpload(upload: BlobUpload, digest: string): Promise<void> {
    return commitUpload(this.http, upload, digest);
  }

  cancelUpload(upload: BlobUpload): Promise<void> {
    return cancelUpload(this.http, upload);
  }
}
