// The access trace of a mounted image: the chunks its readers asked for, in the order of first access.
// Recorded by the daemon for every mount (the window closes after a quiet spell, at a bound or on
// command), shared through the registry as a referrer of the lazy image, and replayed as prefetch
// on the next cold start. A trace is a hint: it is checked against the image before use, and every
// chunk it leads to is still verified when fetched.
import { InputError } from '../errors';
import type { BlobCache } from './blob-cache';

export const TRACE_MEDIA_TYPE = 'application/vnd.erofs-ondemand.trace.v1+json';

export interface TraceEntry {
  /** Index into `AccessTrace.blobs`. */
  blob: number;
  /** Index into that blob's chunk table. */
  chunk: number;
  /** Milliseconds from the mount to the first access. */
  ms: number;
  /** SHA-256 (hex) of the chunk's uncompressed bytes, as the chunk table has it. */
  digest: string;
}

export interface AccessTrace {
  version: 1;
  /** The lazy image's manifest digest (the trace artifact's subject). */
  image: string;
  /** Digests of the image's data blobs, in device order. */
  blobs: string[];
  entries: TraceEntry[];
}

export interface RecorderOptions {
  /** The window closes after this long without a new chunk (default 5 s). */
  idleMs?: number;
  /** ... or once this many chunks are recorded (default 65536). */
  maxEntries?: number;
  /** Called once when the window closes, with the trace (not when nothing was recorded). */
  onEnd?: (trace: AccessTrace, reason: EndReason) => void;
}

/** Why a recording ended; null while it is open. */
export type EndReason = 'idle' | 'bound' | 'command' | 'unmount';

/** Records the first demand access of each chunk of one mounted image. */
export class TraceRecorder {
  private readonly start = Date.now();
  private readonly seen: Array<Set<number>>;
  private readonly entries: TraceEntry[] = [];
  private readonly unsubscribe: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly idleMs: number;
  private readonly maxEntries: number;
  private readonly onEnd: RecorderOptions['onEnd'];
  ended: EndReason | null = null;

  constructor(
    readonly image: string,
    private readonly blobs: readonly BlobCache[],
    opts: RecorderOptions = {},
  ) {
    this.idleMs = opts.idleMs ?? 5000;
    this.maxEntries = opts.maxEntries ?? 1 << 16;
    this.onEnd = opts.onEnd;
    this.seen = blobs.map(() => new Set<number>());
    blobs.forEach((b, i) => this.unsubscribe.push(b.onDemand((chunks) => this.record(i, chunks))));
  }

  /** The idle timer starts at the first chunk: a mount nobody reads yet is not a finished trace. */
  private arm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => this.end('idle'), this.idleMs);
    this.timer.unref();
  }

  private record(blob: number, chunks: readonly number[]): void {
    if (this.ended) return;
    const ms = Date.now() - this.start;
    let added = false;
    for (const chunk of chunks) {
      if (this.seen[blob].has(chunk)) continue;
      this.seen[blob].add(chunk);
      this.entries.push({ blob, chunk, ms, digest: this.blobs[blob].index.chunks[chunk].digest.toString('hex') });
      added = true;
      if (this.entries.length >= this.maxEntries) return this.end('bound');
    }
    if (added) this.arm();
  }

  end(reason: EndReason): void {
    if (this.ended) return;
    this.ended = reason;
    if (this.timer) clearTimeout(this.timer);
    for (const u of this.unsubscribe) u();
    if (this.entries.length > 0) this.onEnd?.(this.trace(), reason);
  }

  get size(): number {
    return this.entries.length;
  }

  trace(): AccessTrace {
    return { version: 1, image: this.image, blobs: this.blobs.map((b) => b.remote.digest), entries: [...this.entries] };
  }
}

/** The most entries a trace may hold: a trace bigger than any image could need is not a trace. */
export const MAX_TRACE_ENTRIES = 1 << 20;

/**
 * Checks a trace (parsed JSON from anywhere) against the image it is to be replayed on: its subject,
 * its blobs, every index in range and every chunk digest equal to the chunk table's. Throws naming
 * the first fault.
 */
export function checkTrace(
  doc: unknown,
  image: string,
  blobs: ReadonlyArray<Pick<BlobCache, 'remote' | 'index'>>,
): AccessTrace {
  const fail = (why: string): never => {
    throw new InputError(`access trace refused: ${why}`, { image });
  };
  const t = doc as Partial<AccessTrace> | null;
  if (!t || typeof t !== 'object') return fail('not an object');
  if (t.version !== 1) return fail(`version ${JSON.stringify(t.version)} is not 1`);
  if (t.image !== image) return fail(`it is the trace of ${JSON.stringify(t.image)}`);
  if (
    !Array.isArray(t.blobs) ||
    t.blobs.length !== blobs.length ||
    t.blobs.some((d, i) => d !== blobs[i].remote.digest)
  ) {
    return fail("its blobs are not the image's");
  }
  if (!Array.isArray(t.entries) || t.entries.length > MAX_TRACE_ENTRIES) return fail('entries missing or too many');
  for (const [k, e] of t.entries.entries()) {
    const ok =
      e &&
      Number.isInteger(e.blob) &&
      e.blob >= 0 &&
      e.blob < blobs.length &&
      Number.isInteger(e.chunk) &&
      e.chunk >= 0 &&
      e.chunk < blobs[e.blob].index.chunks.length &&
      Number.isFinite(e.ms) &&
      typeof e.digest === 'string';
    if (!ok) return fail(`entry ${k} is out of range`);
    if (blobs[e.blob].index.chunks[e.chunk].digest.toString('hex') !== e.digest) {
      return fail(`entry ${k}: chunk ${e.chunk} of blob ${blobs[e.blob].remote.digest} has another digest`);
    }
  }
  return t as AccessTrace;
}

/**
 * A checked trace of one image carried over to another (a rebuild: the same files in other blobs) by
 * chunk digest: each entry goes to the first chunk of `blobs` with its digest, in the trace's order;
 * entries whose digest `blobs` lack, or whose chunk an earlier entry took, are left out. The result
 * is a trace of `image`, checked again like any other where it is used.
 */
export function rebaseTrace(
  trace: AccessTrace,
  image: string,
  blobs: ReadonlyArray<Pick<BlobCache, 'remote' | 'index'>>,
): AccessTrace {
  const places = new Map<string, { blob: number; chunk: number }>();
  blobs.forEach((b, blob) =>
    b.index.chunks.forEach((c, chunk) => {
      const digest = c.digest.toString('hex');
      if (!places.has(digest)) places.set(digest, { blob, chunk });
    }),
  );
  const entries: TraceEntry[] = [];
  for (const e of trace.entries) {
    const place = places.get(e.digest);
    if (!place) continue;
    places.delete(e.digest); // the chunk is in the trace now
    entries.push({ ...place, ms: e.ms, digest: e.digest });
  }
  return { version: 1, image, blobs: blobs.map((b) => b.remote.digest), entries };
}
