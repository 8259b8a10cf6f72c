// The one retry policy of the registry layer: which failures are transient, how many attempts a
// request gets for its priority, and how long to wait between them. Requests, token fetches and
// whole-blob upload restarts all go through `withRetries`.
import { setTimeout as sleep } from 'node:timers/promises';
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';

/**
 * Why bytes are wanted. A demand read has a reader blocked on it and is retried harder; a prefetch
 * (an access trace: soon wanted) and a background fetch (the whole image, blindly) only warm the
 * cache, so they give up sooner and leave the connections to demand reads.
 */
export type Priority = 'demand' | 'prefetch' | 'background';

export interface RetryPolicy {
  /** Attempts in all, the first included (at least 1). */
  attempts: number;
  /** First backoff delay; later ones double, with jitter. */
  baseMs: number;
  /** Cap on any one wait, a registry's Retry-After included. */
  maxDelayMs: number;
  /**
   * Time from the first attempt after which no wait begins and no attempt starts; each attempt is
   * told what is left, to bound its own waiting (undefined: attempts alone bound the request).
   */
  budgetMs?: number;
}

export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = { attempts: 4, baseMs: 500, maxDelayMs: 30_000 };

/** Attempts a prefetch gets at most: a failed prefetch costs nothing a demand read cannot fetch again. */
const PREFETCH_ATTEMPTS = 2;

/** `policy` as it applies to a request of `priority`. */
export function forPriority(policy: RetryPolicy, priority: Priority = 'demand'): RetryPolicy {
  return priority === 'demand' ? policy : { ...policy, attempts: Math.min(policy.attempts, PREFETCH_ATTEMPTS) };
}

/**
 * `policy` for an endpoint that another endpoint follows (a mirror before the upstream), or for a
 * request that cannot be repeated on its own (an upload session's PATCH): one attempt, its transient
 * failure left to the caller (the fallback, or a restart of the whole upload).
 */
export function once(policy: RetryPolicy): RetryPolicy {
  return { ...policy, attempts: 1 };
}

/** Answers a busy or failing registry may give differently when asked again. */
const TRANSIENT_STATUSES = new Set([429, 500, 502, 503, 504]);

/** Connection failures and timeouts: the request may not have reached the registry at all. */
const TRANSIENT_ERROR_CODES = new Set([
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

export function isTransientStatus(status: number): boolean {
  return TRANSIENT_STATUSES.has(status);
}

export function isTransientCode(code: string | undefined): boolean {
  return code !== undefined && TRANSIENT_ERROR_CODES.has(code);
}

/** Whether a request failed for want of a connection or an answer in time, rather than on an answer. */
export function isUnreachable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && TRANSIENT_ERROR_CODES.has(code)) return true;
  }
  return false;
}

/** A failure that may not recur when the request is sent again (busy registry, broken connection). */
export class TransientError extends InputError {
  /** The status answered, when it was an answer. */
  readonly status: number | undefined;
  /** How long the registry asked to be left alone (Retry-After), in milliseconds. */
  readonly retryAfterMs: number | undefined;

  constructor(
    message: string,
    context: ErrorContext,
    options: { cause?: unknown; status?: number; retryAfterMs?: number } = {},
  ) {
    super(message, context, { cause: options.cause });
    this.status = options.status;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** Milliseconds a Retry-After value (seconds or an HTTP date) asks to wait, or undefined. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? undefined : Math.max(0, when - now);
}

/** The wait before attempt `attempt + 1`: the registry's Retry-After if it sent one, else exponential backoff; capped. */
export function retryDelay(policy: RetryPolicy, attempt: number, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxDelayMs);
  const ceiling = Math.min(policy.maxDelayMs, policy.baseMs * 2 ** (attempt - 1));
  // Half fixed, half random: spreads clients that failed together without ever retrying at once.
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

export interface RetriedJob {
  /** What is being done, for messages: 'get manifest', 'get token', 'push blob', ... */
  op: string;
  ctx: ErrorContext;
}

/**
 * Runs `attempt` until it succeeds, throws something other than a TransientError, or has been run
 * `policy.attempts` times or its budget is spent. A transient failure of the last of several attempts
 * becomes a plain InputError saying how many were made, so that an enclosing `withRetries` does not
 * multiply them; with a single attempt it is thrown as it is, transient, for the caller to decide.
 * `attempt` gets the milliseconds left of the budget (undefined without one).
 */
export async function withRetries<T>(
  policy: RetryPolicy,
  job: RetriedJob,
  attempt: (n: number, last: boolean, leftMs: number | undefined) => Promise<T>,
): Promise<T> {
  const attempts = Math.max(1, policy.attempts);
  const end = policy.budgetMs === undefined ? undefined : Date.now() + policy.budgetMs;
  for (let n = 1; ; n++) {
    try {
      return await attempt(n, n >= attempts, end === undefined ? undefined : Math.max(1, end - Date.now()));
    } catch (err) {
      if (!(err instanceof TransientError)) throw err;
      const delayMs = retryDelay(policy, n, err.retryAfterMs);
      const spent = end !== undefined && Date.now() + delayMs >= end;
      if (n >= attempts || spent) {
        const tried = `after ${n} attempt${n > 1 ? 's' : ''}`;
        const why = spent ? `${tried} in ${policy.budgetMs! / 1000} s` : tried;
        throw n > 1 || spent ? new InputError(`${err.detail} (${why})`, job.ctx, { cause: err }) : err;
      }
      log.warn('registry request failed; retrying', {
        ...job.ctx,
        op: job.op,
        attempt: n,
        delayMs,
        status: err.status,
        error: err.detail,
      });
      await sleep(delayMs);
    }
  }
}
