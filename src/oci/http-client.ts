// HTTP to one registry endpoint: connections (undici's Agent), authentication when challenged,
// redirects, retries under the policy of ./retry, network errors turned into messages that say what
// to do, and one bounded reader for every body that is collected (manifests, tokens, error bodies,
// ranges). The distribution API (./manifests, ./blobs, ./blob-upload) speaks through it.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import tls from 'node:tls';
import v8 from 'node:v8';
import type { Agent, Dispatcher } from 'undici';
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';
import { MAX_TOKEN_BYTES, printableUrl, RegistryAuth, type TokenResponse } from './auth';
import { readAtMost, type BytesSoFar } from './byte-stream';
import { lookupDockerCredentials, type Credentials } from './docker-credentials';
import {
  forPriority,
  isTransientCode,
  isTransientStatus,
  once,
  parseRetryAfter,
  TransientError,
  withRetries,
  type Priority,
  type RetryPolicy,
} from './retry';

// undici parses HTTP/1.1 with llhttp compiled to WebAssembly. Left to itself V8 recompiles the
// parser's hot state machine with its optimizing compiler, which costs far more CPU than it saves:
// bodies pass through the parser in large spans, so the baseline compiler's code is fast enough.
// The flag must be set before the first connection compiles the module, which undici does lazily.
v8.setFlagsFromString('--liftoff-only');

export type Method = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

export interface Call {
  /** What is being done, for messages: 'get manifest', 'upload blob chunk', ... */
  op: string;
  method: Method;
  url: URL;
  headers?: Record<string, string>;
  /** Makes the request body; called again for each attempt. */
  body?: () => Buffer | Readable | AsyncIterable<Buffer>;
  scopes: string[];
  ctx: ErrorContext;
  /**
   * Whether a transient failure may be answered by sending the request again. When not, the
   * request is sent once and a transient failure thrown as a TransientError (an upload session's
   * PATCH: the whole upload starts again instead).
   */
  retry: boolean;
  /** How hard a transient failure is retried (default 'demand'). */
  priority?: Priority;
  /** Milliseconds the request may take, retries and waits included (see RetryPolicy.budgetMs). */
  budgetMs?: number;
  followRedirects?: boolean;
}

export interface Response {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  url: URL;
}

export interface HttpClientOptions {
  /** The endpoint's API root, e.g. `https://registry.example/v2`. */
  api: URL;
  /** Set when the endpoint is not the registry host itself (a mirror): errors name it. */
  endpoint?: string;
  /** Sent as `?ns=` with every request: a mirror learns which upstream host is meant. */
  namespace?: string;
  /** undefined: look them up in the docker config under the endpoint's host; null: anonymous. */
  credentials?: Credentials | null;
  insecure?: boolean;
  ca?: string;
  timeoutMs: number;
  connections: number;
  policy: RetryPolicy;
}

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
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;
const MAX_ERROR_BODY = 64 << 10;
const USER_AGENT = 'erofs-ondemand/0.1';

export function header(res: { headers: Dispatcher.ResponseData['headers'] }, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

export function mediaTypeOf(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0].trim();
}

function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown } };
  if (typeof e?.code === 'string') return e.code;
  if (typeof e?.cause?.code === 'string') return e.cause.code;
  return undefined;
}

/**
 * undici is loaded when the first client is made, not when this module is: commands that never talk
 * to a registry do not pay for loading all of it.
 */
function newAgent(options: Agent.Options): Agent {
  return new (loadUndici().Agent)(options);
}

function loadUndici(): typeof import('undici') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('undici') as typeof import('undici');
}

/**
 * Loads undici now and makes one request with it to a throwaway server on loopback. The daemon, which
 * talks to registries all its life, does so at start: undici compiles its HTTP parser (WebAssembly)
 * at a process's first connection, and the first mount would otherwise wait for that, and for the
 * request path run cold, while containerd waits on the answer to its first Prepare.
 */
export async function preloadHttpClient(): Promise<void> {
  const undici = loadUndici();
  const server = http.createServer((_req, res) => res.end());
  const agent = new undici.Agent();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const { port } = server.address() as AddressInfo;
    const res = await agent.request({ origin: `http://127.0.0.1:${port}`, path: '/', method: 'GET' });
    await res.body.dump();
  } finally {
    await agent.close();
    server.close();
  }
}

export class HttpClient {
  /** The registry host the repositories belong to (what image references name). */
  readonly host: string;
  /** The endpoint spoken to when it is not the host itself (a mirror), for messages. */
  readonly endpoint: string | undefined;
  readonly policy: RetryPolicy;
  private readonly origin: string;
  private readonly apiPath: string;
  private readonly namespace: string | undefined;
  private readonly agent: Agent;
  private readonly auth: RegistryAuth;
  private readonly timeoutMs: number;
  /** Whether the registry serves the referrers API, once it has answered (404: it does not). */
  referrersApi: boolean | undefined = undefined;

  constructor(host: string, opts: HttpClientOptions) {
    this.host = host;
    this.endpoint = opts.endpoint;
    this.policy = opts.policy;
    this.origin = opts.api.origin;
    this.apiPath = opts.api.pathname.replace(/\/+$/, '');
    this.namespace = opts.namespace;
    this.timeoutMs = opts.timeoutMs;
    this.agent = newAgent({
      connections: opts.connections,
      keepAliveTimeout: 30_000,
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      connect: {
        rejectUnauthorized: !opts.insecure,
        timeout: opts.timeoutMs,
        ...(opts.ca ? { ca: [...tls.rootCertificates, opts.ca] } : {}),
      },
    });
    // A mirror's credentials are its own, never the upstream's.
    // The docker config is read, and a credential helper run, only once the registry asks.
    const authHost = opts.api.host;
    const credentials =
      opts.credentials === null ? undefined : (opts.credentials ?? (() => lookupDockerCredentials(authHost)));
    this.auth = new RegistryAuth(authHost, credentials, (url, headers, form) => this.fetchToken(url, headers, form));
  }

  /** Closes the connections; the client is unusable afterwards. */
  async close(): Promise<void> {
    await this.agent.close();
  }

  /** `<api>/<rest>`, with the `ns` query a mirror is told. */
  url(rest: string): URL {
    const url = new URL(`${this.apiPath}/${rest}`, this.origin);
    if (this.namespace) url.searchParams.set('ns', this.namespace);
    return url;
  }

  /** What every error names: the registry host, and the endpoint when it is a mirror. */
  where(): ErrorContext {
    return this.endpoint === undefined ? { registry: this.host } : { registry: this.host, endpoint: this.endpoint };
  }

  /**
   * Sends a request: authenticates when challenged (once per attempt), follows redirects when asked
   * (without the registry's Authorization on other origins), and retries transient failures under
   * the policy for the call's priority. Returns any final status; 401 and 403 become errors here.
   */
  send(call: Call): Promise<Response> {
    const policy = call.retry ? forPriority(this.policy, call.priority) : once(this.policy);
    return withRetries({ ...policy, budgetMs: call.budgetMs ?? policy.budgetMs }, call, (_n, _last, leftMs) =>
      this.sendOnce(call, leftMs),
    );
  }

  /**
   * The body of `res`, or null when it runs past `limit` bytes (it is destroyed then). A connection
   * that breaks meanwhile is an error saying what was being read. `sizeHint`, `onBytes`: see readAtMost.
   */
  async readBody(
    res: Response,
    limit: number,
    what: string,
    ctx: ErrorContext,
    sizeHint = 0,
    onBytes?: BytesSoFar,
  ): Promise<Buffer | null> {
    try {
      const data = await readAtMost(res.body, limit, sizeHint, onBytes);
      if (data === null) res.body.destroy();
      return data;
    } catch (err) {
      throw this.networkError(err, `reading the ${what}`, ctx);
    }
  }

  /** An error for an answer the caller did not expect, quoting a distribution-spec error body. */
  async unexpected(res: Response, op: string, ctx: ErrorContext): Promise<InputError> {
    return new InputError(`${op}: registry answered ${res.status}${await this.errorDetail(res)}`, ctx);
  }

  /** Where an upload session continues: the answer's Location, resolved against the request URL. */
  location(res: Response, ctx: ErrorContext): URL {
    const loc = header(res, 'location');
    if (!loc) throw new InputError(`registry answered ${res.status} without a Location for the upload`, ctx);
    try {
      return new URL(loc, res.url);
    } catch {
      throw new InputError('registry answered with an upload Location that is not a URL', ctx);
    }
  }

  /** A failed connection or read as an error: transient when sending again may help, with a hint when TLS does not verify. */
  networkError(err: unknown, op: string, ctx: ErrorContext): InputError {
    if (err instanceof InputError) return err;
    const code = errorCode(err);
    const message = this.auth.redact((err as Error)?.message ?? String(err));
    if (code && TLS_VERIFY_CODES.has(code)) {
      const text = `${op}: the TLS certificate of ${this.origin} does not verify: ${message} (${code}); trust its CA with "ca" in the registries configuration, or skip verification with "insecure"`;
      return new InputError(text, ctx, { cause: err });
    }
    const text = `${op}: ${message}${code ? ` (${code})` : ''}`;
    return isTransientCode(code)
      ? new TransientError(text, ctx, { cause: err })
      : new InputError(text, ctx, { cause: err });
  }

  /** One attempt; `leftMs`, when given, bounds the wait for headers and between body bytes. */
  private async sendOnce(call: Call, leftMs?: number): Promise<Response> {
    let res = await this.sendFollowing(call, leftMs);
    if (res.status === 401) {
      await res.body.dump();
      await this.auth.challenge(res.headers['www-authenticate'], call.scopes, call.ctx);
      res = await this.sendFollowing(call, leftMs);
    }
    if (res.status === 401 || res.status === 403) {
      const detail = await this.errorDetail(res);
      const who = this.auth.hasCredentials ? 'with credentials' : 'anonymously';
      throw new InputError(
        `${call.op}: ${res.status === 401 ? 'unauthorized (401)' : 'denied (403)'} ${who}${detail}`,
        call.ctx,
      );
    }
    if (isTransientStatus(res.status)) {
      const retryAfterMs = parseRetryAfter(header(res, 'retry-after'));
      throw new TransientError(`${call.op}: registry answered ${res.status}${await this.errorDetail(res)}`, call.ctx, {
        status: res.status,
        retryAfterMs,
      });
    }
    return res;
  }

  private async sendFollowing(call: Call, leftMs?: number): Promise<Response> {
    let url = call.url;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': USER_AGENT, ...call.headers };
      // Credentials go to the registry only, never to storage it redirects to.
      if (url.origin === this.origin) {
        const authorization = await this.auth.authorization(call.scopes, call.ctx);
        if (authorization) headers.authorization = authorization;
      }
      // undici sends an async iterable chunk by chunk (its types leave that case out).
      const body = (call.body ? call.body() : null) as Buffer | Readable | null;
      const res = await this.request(url, call.method, headers, body, call.op, call.ctx, leftMs);
      const location = header(res, 'location');
      if (!call.followRedirects || !REDIRECT_STATUSES.has(res.status) || !location) return res;
      await res.body.dump();
      if (hop >= MAX_REDIRECTS) throw new InputError(`${call.op}: more than ${MAX_REDIRECTS} redirects`, call.ctx);
      url = new URL(location, url);
      log.debug('following a redirect', { ...call.ctx, op: call.op, to: printableUrl(url) });
    }
  }

  /** One request and its answer's headers; a connection that fails is an error naming `op`. */
  private async request(
    url: URL,
    method: Method,
    headers: Record<string, string>,
    body: Buffer | Readable | null,
    op: string,
    ctx: ErrorContext,
    leftMs?: number,
  ): Promise<Response> {
    let data: Dispatcher.ResponseData;
    const bound = leftMs === undefined ? this.timeoutMs : Math.min(this.timeoutMs, leftMs);
    try {
      data = await this.agent.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method,
        headers,
        body,
        headersTimeout: bound,
        bodyTimeout: bound,
      });
    } catch (err) {
      throw this.networkError(err, op, ctx);
    }
    // Destroying a body we stop reading (a 200 to a Range request, an oversized manifest) makes
    // undici emit an abort error on it; readers still get errors through iteration.
    data.body.on('error', () => {});
    return { status: data.statusCode, headers: data.headers, body: data.body, url };
  }

  /** A token endpoint's answer, retried like any request; the last attempt's answer is returned whatever its status. */
  private fetchToken(url: URL, headers: Record<string, string>, form?: string): Promise<TokenResponse> {
    const job = { op: 'get token', ctx: { ...this.where(), realm: printableUrl(url) } };
    return withRetries(this.policy, job, async (_n, last) => {
      const method = form === undefined ? 'GET' : 'POST';
      const body = form === undefined ? null : Buffer.from(form);
      const res = await this.request(url, method, { 'user-agent': USER_AGENT, ...headers }, body, job.op, job.ctx);
      if (isTransientStatus(res.status) && !last) {
        await res.body.dump();
        throw new TransientError(`${job.op}: token server answered ${res.status}`, job.ctx, {
          status: res.status,
          retryAfterMs: parseRetryAfter(header(res, 'retry-after')),
        });
      }
      return { status: res.status, body: await this.readBody(res, MAX_TOKEN_BYTES, 'token', job.ctx) };
    });
  }

  /** `: CODE message` from a distribution-spec error body, or nothing; other bodies are not quoted. */
  private async errorDetail(res: Response): Promise<string> {
    let text: string;
    try {
      const data = await readAtMost(res.body, MAX_ERROR_BODY);
      if (data === null) return '';
      text = data.toString('utf8');
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
