// The kernel's requests for data that a transport has taken and not answered yet (fanotify events,
// cachefiles READs, FUSE READs). Each is served through `RangeSource.serve`, the one miss path, and
// answered exactly once: 0 when served, EIO when serving failed, when its deadline passed or when the
// transport closes. After its answer a request's sink is never written again.
import os from 'node:os';
import { log } from '../log';
import type { RangeSink, RangeSource } from '../storage/range-source';

const { EIO } = os.constants.errno;

/**
 * How long a reader waits for a miss by default before it gets EIO: as long as the registry client
 * waits for one silent request (DEFAULT_TIMEOUT_MS), so a stuck registry fails a read where a
 * program and its user would still wait for it, never one stalled request after another.
 */
export const DEFAULT_READ_DEADLINE_MS = 60_000;

export interface MissOptions {
  /** A request not served within this many milliseconds is answered EIO (default DEFAULT_READ_DEADLINE_MS); 0: no deadline. */
  deadlineMs?: number;
  /** Called for each request that needed chunks fetched, with the seconds from taking it to its answer. */
  onMiss?: (seconds: number) => void;
}

/** Sends the kernel its answer: 0 (served) or an errno. */
export type Answer = (errno: number) => void;

export interface MissRequest {
  source: RangeSource;
  start: number;
  end: number;
  sink: RangeSink;
  answer: Answer;
  /** For the log: the reader's pid, when the kernel says. */
  pid?: number;
}

export class MissRequests<Id> {
  private readonly pending = new Map<Id, { answer: Answer; timer?: NodeJS.Timeout }>();
  /** Requests taken from the kernel so far. */
  requests = 0;

  constructor(
    private readonly transport: string,
    private readonly opts: MissOptions = {},
  ) {}

  get size(): number {
    return this.pending.size;
  }

  /** Whether `id` still waits for its answer. */
  isPending(id: Id): boolean {
    return this.pending.has(id);
  }

  /** Serves one request and answers it. Never rejects. */
  async serve(id: Id, req: MissRequest): Promise<void> {
    this.take(id, req.answer, { what: req.source.what, offset: req.start, length: req.end - req.start, pid: req.pid });
    const t0 = process.hrtime.bigint();
    try {
      const fetched = req.end > req.start ? await req.source.serve(req.start, req.end, req.sink, 'demand') : 0;
      const answered = this.answer(id, 0);
      if (fetched > 0 && answered) {
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        this.opts.onMiss?.(seconds);
        log.debug('cache miss served', {
          source: req.source.what,
          offset: req.start,
          length: req.end - req.start,
          chunks: fetched,
          ms: seconds * 1000,
        });
      }
    } catch (err) {
      if (this.isPending(id)) {
        log.error('cache miss not served: the reader gets EIO', {
          transport: this.transport,
          source: req.source.what,
          offset: req.start,
          length: req.end - req.start,
          pid: req.pid,
          error: (err as Error).message,
        });
      }
      this.answer(id, EIO);
    }
  }

  /** Answers at once, without serving: a request that names nothing this daemon serves. */
  refuse(answer: Answer, reason: string, context: Record<string, unknown>): void {
    this.requests++;
    log.error('cache miss not served: the reader gets EIO', { transport: this.transport, reason, ...context });
    this.send(answer, EIO);
  }

  /** Answers `id` if it still waits; false when it was answered already. */
  answer(id: Id, errno: number): boolean {
    const p = this.pending.get(id);
    if (!p) return false;
    this.pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    this.send(p.answer, errno);
    return true;
  }

  /** Answers every request still waiting with EIO (the transport is closing). */
  failAll(): void {
    for (const id of [...this.pending.keys()]) this.answer(id, EIO);
  }

  private take(id: Id, answer: Answer, context: Record<string, unknown>): void {
    this.requests++;
    const deadline = this.opts.deadlineMs ?? DEFAULT_READ_DEADLINE_MS;
    const timer =
      deadline > 0
        ? setTimeout(() => {
            log.error('cache miss not served in time: the reader gets EIO', {
              transport: this.transport,
              ...context,
              deadlineMs: deadline,
            });
            this.answer(id, EIO);
          }, deadline)
        : undefined;
    this.pending.set(id, { answer, timer });
  }

  private send(answer: Answer, errno: number): void {
    try {
      answer(errno);
    } catch (err) {
      log.warn('answer to the kernel not delivered', {
        transport: this.transport,
        errno,
        error: (err as Error).message,
      });
    }
  }
}
