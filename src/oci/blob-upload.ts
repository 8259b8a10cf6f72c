// Blob uploads of the distribution API: a whole blob mounted from another repository or uploaded
// (one PUT, or PATCH chunks beyond a size), and upload sessions driven step by step for a blob whose
// digest is not known yet (./streamed-push).
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';
import { digestContext, repoContext } from './api-context';
import { pullScope, pushScope } from './auth';
import { headBlob } from './blobs';
import { header, type Call, type HttpClient, type Response } from './http-client';
import { isValidRepository } from './reference';
import { withRetries } from './retry';

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

/**
 * Stores a blob unless the repository has it: mounted from `mountFrom` when that repository has it,
 * else uploaded from `open()` (called again for each attempt) in one PUT or, beyond `chunkSize`,
 * in PATCH chunks. An upload that fails transiently starts again from the first byte in a new
 * session, under the client's retry policy: the old session's state is unknown.
 */
export async function pushBlob(
  http: HttpClient,
  chunkSize: number,
  repo: string,
  digest: string,
  size: number,
  open: () => Readable,
  opts: PushBlobOptions = {},
): Promise<PushResult> {
  const ctx = digestContext(http.where(), repo, digest);
  if (!Number.isSafeInteger(size) || size < 0) throw new InputError(`invalid blob size ${size}`, ctx);
  return withRetries(http.policy, { op: 'push blob', ctx }, async () => {
    if (await blobExists(http, repo, digest, size)) return 'exists';
    return uploadOnce(http, chunkSize, repo, digest, size, open, opts, ctx);
  });
}

/**
 * Whether the repository holds the blob, asked before pushing it: HEAD answers 200 with the blob's
 * size, or 404. A 200 with another size is not that blob (a server answering every request alike):
 * taking it for "exists" would skip the upload and store nothing.
 */
export async function blobExists(http: HttpClient, repo: string, digest: string, size: number): Promise<boolean> {
  const held = await headBlob(http, repo, digest, [pushScope(repo)]);
  if (held === null) return false;
  if (held !== size)
    throw new InputError(
      `head blob: registry answered 200 with ${held} bytes for a blob of ${size} bytes`,
      digestContext(http.where(), repo, digest),
    );
  return true;
}

async function uploadOnce(
  http: HttpClient,
  chunkSize: number,
  repo: string,
  digest: string,
  size: number,
  open: () => Readable,
  opts: PushBlobOptions,
  ctx: ErrorContext,
): Promise<PushResult> {
  const scopes = [pushScope(repo)];
  const start = http.url(`${repo}/blobs/uploads/`);
  if (opts.mountFrom && opts.mountFrom !== repo) {
    if (!isValidRepository(opts.mountFrom))
      throw new InputError(`invalid repository to mount from ${JSON.stringify(opts.mountFrom)}`, ctx);
    start.searchParams.set('mount', digest);
    start.searchParams.set('from', opts.mountFrom);
    scopes.push(pullScope(opts.mountFrom));
  }
  const res = await http.send({
    op: 'start blob upload',
    method: 'POST',
    url: start,
    headers: { 'content-length': '0' },
    scopes,
    ctx,
    retry: true,
  });
  if (res.status === 201 && opts.mountFrom) {
    await res.body.dump();
    checkCommitted(res, digest, ctx);
    log.debug('blob mounted', { ...ctx, from: opts.mountFrom });
    return 'mounted';
  }
  if (res.status !== 202) throw await http.unexpected(res, 'start blob upload', ctx);
  await res.body.dump();
  const location = http.location(res, ctx);

  if (size <= chunkSize) {
    const put = await http.send({
      op: 'upload blob',
      method: 'PUT',
      url: withDigest(location, digest),
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      body: open,
      scopes,
      ctx,
      retry: false,
    });
    if (put.status !== 201) throw await http.unexpected(put, 'upload blob', ctx);
    await put.body.dump();
    checkCommitted(put, digest, ctx);
    return 'uploaded';
  }

  const upload: BlobUpload = { repo, location, offset: 0, ctx };
  const hash = createHash('sha256');
  for await (const chunk of chunksOf(open(), chunkSize)) {
    if (upload.offset + chunk.length > size)
      throw new InputError(`the blob's source gives more than ${size} bytes`, ctx);
    hash.update(chunk);
    await patchUpload(http, upload, chunk);
  }
  if (upload.offset !== size)
    throw new InputError(`the blob's source gave ${upload.offset} bytes, expected ${size}`, ctx);
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== digest)
    throw new InputError(`digest mismatch: expected ${digest}, got ${got} (upload not committed)`, ctx);
  await commitUpload(http, upload, digest);
  return 'uploaded';
}

/**
 * Opens an upload session for a blob whose digest is not known yet (it is still being produced):
 * chunks go in order with `patchUpload` (or all of them as one stream with `streamUpload`), then
 * `commitUpload` names the digest, or `cancelUpload`.
 */
export async function startUpload(http: HttpClient, repo: string): Promise<BlobUpload> {
  const ctx = repoContext(http.where(), repo, 'upload');
  const res = await http.send({
    op: 'start blob upload',
    method: 'POST',
    url: http.url(`${repo}/blobs/uploads/`),
    headers: { 'content-length': '0' },
    scopes: [pushScope(repo)],
    ctx,
    retry: true,
  });
  if (res.status !== 202) throw await http.unexpected(res, 'start blob upload', ctx);
  await res.body.dump();
  return { repo, location: http.location(res, ctx), offset: 0, ctx };
}

export async function patchUpload(http: HttpClient, upload: BlobUpload, chunk: Buffer): Promise<void> {
  const range = `${upload.offset}-${upload.offset + chunk.length - 1}`;
  await patch(
    http,
    upload,
    'upload blob chunk',
    { 'content-length': String(chunk.length), 'content-range': range },
    () => chunk,
  );
  upload.offset += chunk.length;
}

/**
 * Sends the session's bytes as one PATCH whose body is read as it comes (chunked transfer coding,
 * no Content-Range), the way docker's client streams a layer: the registry takes the bytes as
 * they arrive, and there is no per-part request to wait for at the end. Not retried: the body
 * cannot be read twice.
 */
export async function streamUpload(http: HttpClient, upload: BlobUpload, body: AsyncIterable<Buffer>): Promise<void> {
  let used = false;
  const res = await patch(http, upload, 'stream blob upload', {}, () => {
    if (used) throw new Error('a streamed upload cannot be sent twice');
    used = true;
    return body;
  });
  const range = /^(?:bytes=)?0-(\d+)$/.exec(header(res, 'range') ?? '');
  if (!range)
    throw new InputError(
      `registry answered the streamed upload with Range ${JSON.stringify(header(res, 'range') ?? null)}`,
      { ...upload.ctx, offset: upload.offset },
    );
  upload.offset = Number(range[1]) + 1;
}

export async function commitUpload(http: HttpClient, upload: BlobUpload, digest: string): Promise<void> {
  const ctx = { ...upload.ctx, digest };
  const put = await http.send({
    op: 'commit blob upload',
    method: 'PUT',
    url: withDigest(upload.location, digest),
    headers: { 'content-length': '0' },
    scopes: [pushScope(upload.repo)],
    ctx,
    retry: false,
  });
  if (put.status !== 201) throw await http.unexpected(put, 'commit blob upload', ctx);
  await put.body.dump();
  checkCommitted(put, digest, ctx);
}

/** Ends a session without storing anything (the registry would drop it in time anyway). */
export async function cancelUpload(http: HttpClient, upload: BlobUpload): Promise<void> {
  const res = await http.send({
    op: 'cancel blob upload',
    method: 'DELETE',
    url: upload.location,
    scopes: [pushScope(upload.repo)],
    ctx: upload.ctx,
    retry: false,
  });
  await res.body.dump();
  if (![200, 202, 204, 404].includes(res.status)) throw await http.unexpected(res, 'cancel blob upload', upload.ctx);
}

/** One PATCH of an upload session (not retried: the session's offset moves with it); follows its Location. */
async function patch(
  http: HttpClient,
  upload: BlobUpload,
  op: string,
  headers: Record<string, string>,
  body: NonNullable<Call['body']>,
): Promise<Response> {
  const ctx = { ...upload.ctx, offset: upload.offset };
  const res = await http.send({
    op,
    method: 'PATCH',
    url: upload.location,
    headers: { 'content-type': 'application/octet-stream', ...headers },
    body,
    scopes: [pushScope(upload.repo)],
    ctx,
    retry: false,
  });
  if (res.status !== 202) throw await http.unexpected(res, op, ctx);
  await res.body.dump();
  upload.location = http.location(res, ctx);
  return res;
}

function checkCommitted(res: Response, digest: string, ctx: ErrorContext): void {
  const said = header(res, 'docker-content-digest');
  if (said && said !== digest) throw new InputError(`registry committed the upload as ${said}`, ctx);
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
