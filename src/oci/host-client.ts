// One registry host as configured (src/oci/hosts.ts): pulls go to its mirrors in order, then to the
// upstream; pushes go to the upstream only. Each endpoint has its own connections, TLS settings and
// credentials. A mirror that fails (connection, 5xx, 404, refused authentication, bytes that do not
// verify) is passed over for the next endpoint with a warning. Whatever endpoint serves, content is
// checked against its digest, so a lying mirror causes a fallback or an error, never wrong data.
import fs from 'node:fs';
import { LRUCache } from 'lru-cache';
import { InputError, Interrupted, type ErrorContext } from '../errors';
import { log } from '../log';
import type { Capability, Endpoint, HostEndpoints } from './hosts';
import { streamOver, type ByteStream, type BytesSoFar } from './byte-stream';
import type { ResolvedImage } from './image-io';
import { ALL_MANIFEST_MEDIA_TYPES, resolveManifest, type ManifestResponse } from './manifests';
import { RegistryClient, type RegistryClientOptions } from './registry';
import { isUnreachable, type Priority } from './retry';
import { isDigest, type Descriptor, type Platform } from './types';

export const UNREACHABLE_PAUSE_MS = 15_000;

/** Client settings shared by every endpoint of the host (TLS and addresses come from the endpoints; credentials are the upstream's). */
export interface HostClientOptions extends Omit<
  RegistryClientOptions,
  'plainHttp' | 'insecure' | 'ca' | 'api' | 'namespace' | 'fallback'
> {
  /**
   * A mirror that could not be reached (refused, reset, timed out) is not asked again for this long
   * while other endpoints remain (default: UNREACHABLE_PAUSE_MS): a dead mirror must not cost every request a timeout.
   */
  unreachablePauseMs?: number;
}

/** Checks bytes a range read returned: an error rejects them (and the mirror that sent them). */
export type RangeCheck = (data: Buffer) => Promise<Error | null>;

export interface RangeOptions {
  /** Called with the bytes of each endpoint tried; a mirror whose bytes it rejects is passed over. */
  verify?: RangeCheck;
  /** Bytes nothing can verify come from the upstream only (default: mirrors too). */
  mirrors?: boolean;
  /** How hard each endpoint is retried (default 'demand'); a mirror another endpoint follows gets one attempt either way. */
  priority?: Priority;
  /** Milliseconds each endpoint's request may take, retries included (default: attempts alone bound it). */
  budgetMs?: number;
  /** Told the bytes received so far as they come; each attempt at each endpoint starts again from none. */
  onBytes?: BytesSoFar;
}

interface Slot {
  endpoint: Endpoint;
  client: RegistryClient;
  /** The endpoint for messages and logs: its API root, never credentials. */
  name: string;
}

interface Request {
  op: string;
  ctx: ErrorContext;
  /** Log which endpoint served at debug level (many small requests, e.g. chunk ranges), not info. */
  quiet?: boolean;
}

function detailOf(err: unknown): string {
  return err instanceof InputError ? err.detail : ((err as Error)?.message ?? String(err));
}

function readCa(file: string, host: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InputError(`cannot read the CA file: ${(err as Error).message}`, { registry: host, path: file });
  }
}

export class HostClient {
  /** Where pushes go: the registry host itself. */
  readonly upstream: RegistryClient;
  private readonly pulls: Slot[];
  private readonly mirrored: boolean;
  /** Mirrors whose bytes of a blob failed verification (or broke off), and why: not asked for that blob again. */
  private readonly distrusted = new LRUCache<string, Map<Slot, string>>({ max: 4096 });
  /** (blob, endpoint) pairs whose first range read was logged at info level. */
  private readonly announced = new LRUCache<string, true>({ max: 4096 });
  /** Mirrors found unreachable, until when they are left out. */
  private readonly pausedUntil = new Map<Slot, number>();
  private readonly pauseMs: number;

  constructor(
    readonly host: string,
    endpoints: HostEndpoints,
    { unreachablePauseMs, ...opts }: HostClientOptions = {},
  ) {
    const upstreamPulled = endpoints.pull.includes(endpoints.upstream);
    this.pauseMs = unreachablePauseMs ?? UNREACHABLE_PAUSE_MS;
    const slot = (e: Endpoint): Slot => {
      const client = new RegistryClient(host, {
        ...opts,
        api: e.mirror ? e.api : undefined,
        plainHttp: e.api.startsWith('http:'),
        insecure: e.insecure,
        ca: e.ca === undefined ? undefined : readCa(e.ca, host),
        namespace: e.namespace,
        // Credentials given are the upstream's: a mirror looks up its own (null: anonymous everywhere).
        credentials: e.mirror && opts.credentials ? undefined : opts.credentials,
        fallback: e.mirror && upstreamPulled,
      });
      return { endpoint: e, client, name: e.mirror ? `${e.api} (mirror)` : e.api };
    };
    const upstream = slot(endpoints.upstream);
    this.upstream = upstream.client;
    this.pulls = endpoints.pull.map((e) => (e === endpoints.upstream ? upstream : slot(e)));
    this.mirrored = this.pulls.some((s) => s.endpoint.mirror);
  }

  async close(): Promise<void> {
    await Promise.all([...new Set([this.upstream, ...this.pulls.map((s) => s.client)])].map((c) => c.close()));
  }

  // ---- manifests: by tag needs "resolve", by digest "pull" ----

  getManifest(
    repo: string,
    reference: string,
    accept: readonly string[] = ALL_MANIFEST_MEDIA_TYPES,
  ): Promise<ManifestResponse> {
    return this.first(capabilityFor(reference), { op: 'get manifest', ctx: this.refContext(repo, reference) }, (c) =>
      c.getManifest(repo, reference, accept),
    );
  }

  /** Follows an index down to the manifest for `platform`; the index's entries are fetched by digest. */
  resolveManifest(repo: string, reference: string, platform: Platform): Promise<ResolvedImage> {
    return resolveManifest(this, repo, reference, platform);
  }

  /** Referrers list what refers to a digest, which may change: they need "resolve". A mirror listing none is passed over. */
  referrers(repo: string, digest: string, artifactType?: string): Promise<Descriptor[]> {
    return this.first(
      'resolve',
      { op: 'list referrers', ctx: this.digestContext(repo, digest) },
      (c) => c.referrers(repo, digest, artifactType),
      {
        missing: (r) => r.length === 0,
      },
    );
  }

  // ---- blobs: "pull" ----

  /**
   * The blob's bytes, streamed; the stream fails at its end when they do not match `digest`. A
   * mirror's stream that fails passes the mirror over for this blob: asking again goes elsewhere.
   * `endpoint` names the mirror serving it, for a consumer's messages (a layer that does not
   * decompress fails before the digest is known).
   */
  async getBlob(repo: string, digest: string, expectedSize?: number): Promise<ByteStream & { endpoint?: string }> {
    const { body, slot } = await this.openBlob(repo, digest, expectedSize);
    return slot.endpoint.mirror ? Object.assign(body, { endpoint: slot.name }) : body;
  }

  /**
   * Reads a whole blob through `consume`. When a mirror's bytes fail verification (or its stream
   * breaks off), `consume` is called again, from the first byte, with the next endpoint's stream; so
   * it must start over (a temporary file rewritten, a buffer collected afresh).
   */
  async readBlob<T>(
    repo: string,
    digest: string,
    expectedSize: number | undefined,
    consume: (body: ByteStream) => Promise<T>,
  ): Promise<T> {
    for (;;) {
      const opened = await this.openBlob(repo, digest, expectedSize);
      try {
        return await consume(opened.body);
      } catch (err) {
        // The last endpoint's failure is the answer; a mirror's with endpoints after it is not.
        if (!opened.failed() || !opened.slot.endpoint.mirror || !opened.more || err instanceof Interrupted) throw err;
        log.warn('blob from a mirror failed; reading it again from the next endpoint', {
          ...this.digestContext(repo, digest),
          endpoint: opened.slot.name,
          error: detailOf(err),
        });
      }
    }
  }

  /**
   * Bytes `start..endInclusive` of a blob, which a Range GET cannot check against the blob's digest:
   * `opts.verify` checks them (e.g. chunk digests from a verified chunk table), and a mirror whose
   * bytes it rejects is passed over for the next endpoint. The last endpoint's bytes are returned
   * whatever the check said: the caller has its verdict.
   */
  async getBlobRange(
    repo: string,
    digest: string,
    start: number,
    endInclusive: number,
    opts: RangeOptions = {},
  ): Promise<Buffer> {
    const ctx = { ...this.digestContext(repo, digest), range: `${start}-${endInclusive}` };
    return this.first(
      'pull',
      { op: 'get blob range', ctx, quiet: true },
      async (c, slot, more) => {
        const data = await c.getBlobRange(repo, digest, start, endInclusive, {
          priority: opts.priority,
          budgetMs: opts.budgetMs,
          onBytes: opts.onBytes,
        });
        const bad = opts.verify ? await opts.verify(data) : null;
        if (bad && slot.endpoint.mirror) {
          this.distrust(digest, slot, bad);
          if (more)
            throw new InputError(`bytes failed verification: ${detailOf(bad)}`, { ...ctx, endpoint: slot.name });
        }
        return data;
      },
      { digest, mirrors: opts.mirrors },
    );
  }

  // ---- endpoint selection ----

  private async openBlob(
    repo: string,
    digest: string,
    expectedSize: number | undefined,
  ): Promise<{ body: ByteStream; slot: Slot; more: boolean; failed: () => boolean }> {
    let served: Slot | undefined;
    let more = false;
    const stream = await this.first(
      'pull',
      { op: 'get blob', ctx: this.digestContext(repo, digest) },
      (c, slot, others) => {
        served = slot;
        more = others;
        return c.getBlob(repo, digest, expectedSize);
      },
      { digest },
    );
    const slot = served!;
    let failed = false;
    const distrust = (err: unknown) => {
      failed = true;
      if (slot.endpoint.mirror) this.distrust(digest, slot, err);
    };
    async function* watched(): AsyncGenerator<Buffer> {
      try {
        yield* stream;
      } catch (err) {
        distrust(err);
        throw err;
      }
    }
    return { body: streamOver(watched(), stream), slot, more, failed: () => failed };
  }

  private distrust(digest: string, slot: Slot, err: unknown): void {
    let bad = this.distrusted.get(digest);
    if (!bad) {
      bad = new Map();
      this.distrusted.set(digest, bad);
    }
    if (bad.has(slot)) return;
    bad.set(slot, detailOf(err));
    log.warn('mirror passed over for this blob: its bytes failed', {
      registry: this.host,
      digest,
      endpoint: slot.name,
      error: detailOf(err),
    });
  }

  /**
   * Runs `run` against each endpoint that may serve `need`, in order, until one succeeds (and, for a
   * mirror, does not answer `missing`). Failures before the last endpoint are logged and passed over;
   * the last endpoint's failure is thrown, with the earlier ones appended.
   */
  private async first<T>(
    need: Capability,
    req: Request,
    run: (client: RegistryClient, slot: Slot, more: boolean) => Promise<T>,
    opts: { digest?: string; missing?: (r: T) => boolean; mirrors?: boolean } = {},
  ): Promise<T> {
    const slots = this.candidates(need, req, opts.digest, opts.mirrors ?? true);
    const passed: string[] = [];
    for (const [i, slot] of slots.entries()) {
      const more = i < slots.length - 1;
      let result: T;
      try {
        result = await run(slot.client, slot, more);
      } catch (err) {
        if (!more || err instanceof Interrupted)
          throw passed.length && err instanceof InputError ? withPassed(err, passed) : err;
        passed.push(`${slot.name}: ${detailOf(err)}`);
        log.warn('registry endpoint failed; trying the next', {
          ...req.ctx,
          op: req.op,
          endpoint: slot.name,
          next: slots[i + 1].name,
          error: detailOf(err),
        });
        if (slot.endpoint.mirror && isUnreachable(err) && this.pauseMs > 0) {
          this.pausedUntil.set(slot, Date.now() + this.pauseMs);
          log.warn('mirror unreachable; not asking it again for a while', {
            registry: this.host,
            endpoint: slot.name,
            pauseMs: this.pauseMs,
          });
        }
        continue;
      }
      if (more && slot.endpoint.mirror && opts.missing?.(result)) {
        passed.push(`${slot.name}: not found`);
        log.warn('mirror does not have it; trying the next endpoint', {
          ...req.ctx,
          op: req.op,
          endpoint: slot.name,
          next: slots[i + 1].name,
        });
        continue;
      }
      this.served(req, slot, opts.digest);
      return result;
    }
    throw new Error('unreachable: candidates() returns at least one endpoint');
  }

  /** The endpoints to try for `need`, in order; fails, saying why, when there are none. */
  private candidates(need: Capability, req: Request, digest: string | undefined, mirrors: boolean): Slot[] {
    const capable = this.pulls.filter((s) => s.endpoint.capabilities.has(need) && (mirrors || !s.endpoint.mirror));
    const bad = digest ? this.distrusted.get(digest) : undefined;
    const slots = bad ? capable.filter((s) => !bad.has(s)) : capable;
    // Paused mirrors are left out while something else remains to ask.
    const now = Date.now();
    const awake = slots.filter((s) => (this.pausedUntil.get(s) ?? 0) <= now);
    if (awake.length) return awake;
    if (slots.length) return slots;
    if (capable.length) {
      const why = [...bad!].map(([s, e]) => `${s.name}: ${e}`).join('; ');
      throw new InputError(`${req.op}: every endpoint that may serve it failed for this blob: ${why}`, req.ctx);
    }
    const what = !mirrors
      ? 'bytes that cannot be verified need the upstream'
      : need === 'resolve'
        ? 'resolving a tag needs the "resolve" capability'
        : 'pulling needs the "pull" capability';
    throw new InputError(
      `${req.op}: no endpoint to ask: ${what}, and the upstream is not pulled from (fallbackToUpstream is false)`,
      req.ctx,
    );
  }

  private served(req: Request, slot: Slot, digest: string | undefined): void {
    // Without mirrors there is nothing to tell: the host served, as always.
    if (!this.mirrored) return;
    const fields = { ...req.ctx, op: req.op, endpoint: slot.name };
    if (!req.quiet) return void log.info('registry endpoint served', fields);
    // Ranges: the first per blob and endpoint at info, the rest at debug.
    const key = `${digest}@${slot.name}`;
    if (this.announced.has(key)) return void log.debug('registry endpoint served', fields);
    this.announced.set(key, true);
    log.info('registry endpoint serves ranges of this blob', { ...fields, range: undefined });
  }

  private refContext(repo: string, reference: string): ErrorContext {
    return { registry: this.host, repository: repo, reference };
  }

  private digestContext(repo: string, digest: string): ErrorContext {
    return { registry: this.host, repository: repo, digest };
  }
}

function capabilityFor(reference: string): Capability {
  return isDigest(reference) ? 'pull' : 'resolve';
}

function withPassed(err: InputError, passed: string[]): InputError {
  return new InputError(`${err.detail} (endpoints tried before: ${passed.join('; ')})`, err.context, { cause: err });
}
