// Blobs of the distribution API as they are read: their size, their bytes streamed and checked
// against the digest, and byte ranges (which no digest can check: the caller verifies them).
import { InputError } from '../errors';
import { digestContext } from './api-context';
import { pullScope } from './auth';
import { bodyChunks, streamOver, type ByteStream, type BytesSoFar } from './byte-stream';
import { verifyDigest } from './digest';
import { header, type HttpClient } from './http-client';
import type { Priority } from './retry';

/** The blob's size, or null when the repository does not have it. */
export async function headBlob(
  http: HttpClient,
  repo: string,
  digest: string,
  scopes = [pullScope(repo)],
): Promise<number | null> {
  const ctx = digestContext(http.where(), repo, digest);
  const res = await http.send({
    op: 'head blob',
    method: 'HEAD',
    url: http.url(`${repo}/blobs/${digest}`),
    scopes,
    ctx,
    retry: true,
    followRedirects: true,
  });
  await res.body.dump();
  if (res.status === 404) return null;
  if (res.status !== 200) throw await http.unexpected(res, 'head blob', ctx);
  const length = header(res, 'content-length');
  if (length === undefined || !/^\d+$/.test(length))
    throw new InputError('registry answered HEAD without a Content-Length', ctx);
  const said = header(res, 'docker-content-digest');
  if (said !== undefined && said !== digest)
    throw new InputError(`head blob: registry answered with digest ${JSON.stringify(said)}`, ctx);
  return Number(length);
}

/**
 * The blob's bytes. The stream fails at its end (or as soon as it runs long) when they do not match
 * `digest` and `expectedSize`.
 */
export async function getBlob(
  http: HttpClient,
  repo: string,
  digest: string,
  expectedSize?: number,
): Promise<ByteStream> {
  const ctx = digestContext(http.where(), repo, digest);
  const res = await http.send({
    op: 'get blob',
    method: 'GET',
    url: http.url(`${repo}/blobs/${digest}`),
    scopes: [pullScope(repo)],
    ctx,
    retry: true,
    followRedirects: true,
  });
  if (res.status === 404) {
    await res.body.dump();
    throw new InputError('blob unknown (404)', ctx);
  }
  if (res.status !== 200) throw await http.unexpected(res, 'get blob', ctx);
  const length = header(res, 'content-length');
  if (expectedSize !== undefined && length !== undefined && Number(length) !== expectedSize) {
    res.body.destroy();
    throw new InputError(`registry offers ${length} bytes, the descriptor says ${expectedSize}`, ctx);
  }
  const body = res.body;
  async function* checked(): AsyncGenerator<Buffer> {
    try {
      yield* verifyDigest(bodyChunks(body), digest, expectedSize, ctx);
    } catch (err) {
      throw http.networkError(err, 'reading the blob', ctx);
    }
  }
  return streamOver(checked(), body);
}

/**
 * Bytes `start..endInclusive` of a blob. The registry must honour Range (206); the bytes are not
 * verifiable against the digest. `priority` says how hard a transient failure is retried; `budgetMs`
 * bounds the request's time, retries included.
 */
export async function getBlobRange(
  http: HttpClient,
  repo: string,
  digest: string,
  start: number,
  endInclusive: number,
  { priority = 'demand', budgetMs, onBytes }: { priority?: Priority; budgetMs?: number; onBytes?: BytesSoFar } = {},
): Promise<Buffer> {
  const ctx = { ...digestContext(http.where(), repo, digest), range: `${start}-${endInclusive}` };
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(endInclusive) || start < 0 || endInclusive < start) {
    throw new InputError('invalid byte range', ctx);
  }
  const res = await http.send({
    op: 'get blob range',
    method: 'GET',
    url: http.url(`${repo}/blobs/${digest}`),
    headers: { range: `bytes=${start}-${endInclusive}` },
    scopes: [pullScope(repo)],
    ctx,
    retry: true,
    priority,
    budgetMs,
    followRedirects: true,
  });
  if (res.status === 200) {
    // Reading on would pull the whole blob to use a slice of it.
    res.body.destroy();
    const length = header(res, 'content-length');
    throw new InputError(
      `registry ignored the Range request (answered 200 with the whole blob${length ? ` of ${length} bytes` : ''}); ranged reads need a registry or storage that supports Range`,
      ctx,
    );
  }
  if (res.status === 404) {
    await res.body.dump();
    throw new InputError('blob unknown (404)', ctx);
  }
  if (res.status === 416) {
    await res.body.dump();
    const range = header(res, 'content-range');
    throw new InputError(`range not satisfiable (416)${range ? `: blob is ${range}` : ''}`, ctx);
  }
  if (res.status !== 206) throw await http.unexpected(res, 'get blob range', ctx);
  const contentRange = header(res, 'content-range') ?? '';
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange.trim());
  if (!m || Number(m[1]) !== start || Number(m[2]) !== endInclusive) {
    res.body.destroy();
    throw new InputError(
      `registry answered 206 with Content-Range ${JSON.stringify(contentRange)}, not bytes ${start}-${endInclusive}`,
      ctx,
    );
  }
  const want = endInclusive - start + 1;
  const data = await http.readBody(res, want, 'range', ctx, want, onBytes);
  if (data === null) throw new InputError(`registry sent more than the ${want} bytes asked for`, ctx);
  if (data.length !== want) throw new InputError(`registry sent ${data.length} bytes for a ${want}-byte range`, ctx);
  return data;
}
