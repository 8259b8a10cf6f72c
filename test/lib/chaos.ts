// The chaos test's parts: an image of random data files (no page of it reads as zeros), a daemon
// that is SIGKILLed and comes back (how it comes back is pluggable), readers in child processes
// (./chaos-reader) comparing every byte they read, and the tally of what they saw.
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { callControl } from '../../src/daemon/control';
import { startDaemon, superviseDaemon, type Daemon } from './harness';

const PAGE = 4096;

/** Random bytes with no all-zero 4 KiB page: a page of zeros read back is always a wrong read. */
export function nonZeroPages(size: number): Buffer {
  const b = randomBytes(size);
  for (let p = 0; p < size; p += PAGE) b[p] |= 1;
  return b;
}

/** Writes files of random data (sizes in bytes) under `dir`; returns their names. */
export function writeRandomTree(dir: string, sizes: readonly number[]): string[] {
  fs.mkdirSync(path.join(dir, 'data'), { recursive: true });
  return sizes.map((size, i) => {
    const name = path.join('data', `random-${i}`);
    fs.writeFileSync(path.join(dir, name), nonZeroPages(size));
    return name;
  });
}

/** The wall-clock time a daemon was SIGKILLed and the time the next one answered. */
export interface Gap {
  killedAt: number;
  readyAt: number;
}

/**
 * How the daemon is run and brought back after a SIGKILL. `fdstore`: under kernel-tests/fdstore.py
 * (systemd's fd store and Restart=on-failure: the new daemon inherits the stored fds); `restart`: the
 * test starts it again itself (what suffices once a holder process keeps the fds).
 */
export type RestartKind = 'fdstore' | 'restart';

export interface DaemonRunner {
  readonly kind: RestartKind;
  start(): Promise<void>;
  /** SIGKILLs the daemon, resolves once the next one answers `status`. */
  crash(): Promise<Gap>;
  stop(): Promise<void>;
  /** What the daemons (and the supervisor) wrote to stderr. */
  log(): string;
}

export interface RunnerOptions {
  cacheDir: string;
  socket: string;
  /** `daemon` flags besides --cache-dir and --socket. */
  flags: readonly string[];
  /** Directory for the supervisor's notify socket. */
  work: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The daemon's pid once it answers `status` with a pid other than `not`; throws after `timeoutMs`. */
async function waitForDaemon(
  socket: string,
  not: number | null,
  timeoutMs: number,
  log: () => string,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      const { pid } = (await callControl(socket, { op: 'status' }, 2000)) as { pid: number };
      if (pid !== not) return pid;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(20);
  }
  throw new Error(`no daemon answered at ${socket} within ${timeoutMs} ms (${last}); log tail:\n${log().slice(-3000)}`);
}

/** The daemon under kernel-tests/fdstore.py, which starts it again with the stored fds after a signal death. */
class FdStoreRunner implements DaemonRunner {
  readonly kind = 'fdstore';
  private supervisor: Daemon | null = null;
  private pid: number | null = null;

  constructor(private readonly opts: RunnerOptions) {}

  async start(): Promise<void> {
    this.supervisor = superviseDaemon({
      cacheDir: this.opts.cacheDir,
      socket: this.opts.socket,
      notifySocket: path.join(this.opts.work, 'notify.sock'),
      flags: this.opts.flags,
    });
    this.pid = await waitForDaemon(this.opts.socket, null, 30_000, () => this.log());
  }

  async crash(): Promise<Gap> {
    if (this.pid === null) throw new Error('no daemon to crash');
    const killedAt = Date.now();
    process.kill(this.pid, 'SIGKILL');
    this.pid = await waitForDaemon(this.opts.socket, this.pid, 60_000, () => this.log());
    return { killedAt, readyAt: Date.now() };
  }

  async stop(): Promise<void> {
    // SIGTERM goes on to the daemon, which stops cleanly; then the supervisor ends.
    const s = this.supervisor;
    if (!s) return;
    const killer = setTimeout(() => {
      if (this.pid !== null) process.kill(this.pid, 'SIGKILL');
      s.process.kill('SIGKILL');
    }, 30_000);
    await s.stop('SIGTERM');
    clearTimeout(killer);
  }

  log(): string {
    return this.supervisor?.log ?? '';
  }
}

/** The daemon started again by the test after each SIGKILL, through the harness's `startDaemon`. */
class RestartRunner implements DaemonRunner {
  readonly kind = 'restart';
  private daemon: Daemon | null = null;
  private logs = '';

  constructor(private readonly opts: RunnerOptions) {}

  async start(): Promise<void> {
    this.daemon = await startDaemon({
      cacheDir: this.opts.cacheDir,
      socket: this.opts.socket,
      flags: this.opts.flags,
      startTimeoutMs: 60_000,
    });
    await waitForDaemon(this.opts.socket, null, 30_000, () => this.log());
  }

  async crash(): Promise<Gap> {
    const killedAt = Date.now();
    await this.daemon?.stop('SIGKILL');
    this.logs += this.daemon?.log ?? '';
    await this.start();
    return { killedAt, readyAt: Date.now() };
  }

  async stop(): Promise<void> {
    await this.daemon?.stop('SIGTERM');
  }

  log(): string {
    return this.logs + (this.daemon?.log ?? '');
  }
}

export function daemonRunner(kind: RestartKind, opts: RunnerOptions): DaemonRunner {
  return kind === 'fdstore' ? new FdStoreRunner(opts) : new RestartRunner(opts);
}

// ---- readers ----

export interface ReaderFile {
  name: string;
  /** The file in the mount. */
  mounted: string;
  /** The same file in the source tree. */
  source: string;
}

export type ReadOutcome =
  | { kind: 'ok' }
  /** Fewer bytes than asked, all right: a read cut short by a failure. */
  | { kind: 'short'; bytes: number }
  | { kind: 'wrong'; zeroPages: number; bytes: number; firstWrong: number }
  | { kind: 'error'; code: string };

export interface ReadEvent {
  type: 'read';
  file: string;
  offset: number;
  length: number;
  via: 'old-fd' | 'new-fd';
  t0: number;
  t1: number;
  outcome: ReadOutcome;
}

export interface OldFdResult {
  file: string;
  right: boolean;
  wrongReads: number;
  lastError: string | null;
  ms: number;
}

export type ReaderEvent =
  | { type: 'opened' }
  | { type: 'counts'; ok: number; short: number; wrong: number; errors: number }
  | ReadEvent
  | { type: 'verified'; results: OldFdResult[] }
  | { type: 'failed'; error: string };

export type ReaderCommand = { type: 'start'; files: ReaderFile[] } | { type: 'verify'; timeoutMs: number };

/** A reader child process and what it reported. */
export class Reader {
  readonly events: ReadEvent[] = [];
  counts = { ok: 0, short: 0, wrong: 0, errors: 0 };
  verified: OldFdResult[] | null = null;
  failure: string | null = null;
  private opened = false;
  private readonly child: ChildProcess;

  constructor(files: ReaderFile[]) {
    // More pool threads than reads in flight: a read blocked in the kernel leaves room for the others.
    this.child = fork(path.join(__dirname, 'chaos-reader.js'), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, UV_THREADPOOL_SIZE: '8' },
    });
    this.child.on('message', (e: ReaderEvent) => {
      if (e.type === 'opened') this.opened = true;
      else if (e.type === 'counts') this.counts = { ok: e.ok, short: e.short, wrong: e.wrong, errors: e.errors };
      else if (e.type === 'read') this.events.push(e);
      else if (e.type === 'verified') this.verified = e.results;
      else if (e.type === 'failed') this.failure = e.error;
    });
    this.child.on('exit', (code, signal) => {
      if (this.verified === null && this.failure === null) this.failure = `reader exited (${code ?? signal})`;
    });
    this.child.send({ type: 'start', files } satisfies ReaderCommand);
  }

  async whenOpened(timeoutMs: number): Promise<void> {
    for (const deadline = Date.now() + timeoutMs; !this.opened && this.failure === null;) {
      if (Date.now() > deadline) throw new Error('a reader did not open its files');
      await sleep(20);
    }
    if (this.failure) throw new Error(this.failure);
  }

  /** Asks for the full read through the fds opened at the start; waits for its answer at most `timeoutMs` (plus a margin). */
  async verify(timeoutMs: number): Promise<void> {
    this.child.send({ type: 'verify', timeoutMs } satisfies ReaderCommand);
    for (const deadline = Date.now() + timeoutMs + 10_000; this.verified === null && this.failure === null;) {
      if (Date.now() > deadline) {
        this.failure = `no answer to the verification within ${timeoutMs + 10_000} ms (a read blocked for good)`;
        break;
      }
      await sleep(50);
    }
  }

  /** Ends the child (SIGKILL: a read blocked in the kernel ends with it). */
  async kill(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGKILL');
    await Promise.race([exited, sleep(10_000)]);
  }
}

// ---- the tally ----

export interface ChaosSummary {
  transport: string;
  restart: RestartKind;
  crashes: number;
  reads: number;
  wrong: number;
  wrongZeroPages: number;
  /** Wrong reads through fds opened before the first crash, and through fresh opens. */
  wrongVia: { oldFd: number; newFd: number };
  /** Reads that returned fewer bytes than asked, every one right. */
  short: number;
  errors: Record<string, number>;
  /** Reads that overlapped a time with no daemon: served late (blocked), failed, or read wrong bytes. */
  gap: { blocked: number; failed: number; short: number; wrong: number };
  /** Files read in full through fds opened before the first crash, after the last restart. */
  oldFds: { right: number; files: number; failures: string[] };
  /** Wrong reads, a few, for the message. */
  wrongSamples: ReadEvent[];
}

export function tally(
  transport: string,
  restart: RestartKind,
  readers: readonly Reader[],
  gaps: readonly Gap[],
): ChaosSummary {
  const events = readers.flatMap((r) => r.events);
  const inGap = (e: ReadEvent) => gaps.some((g) => e.t0 <= g.readyAt && e.t1 >= g.killedAt);
  const errors: Record<string, number> = {};
  for (const e of events) if (e.outcome.kind === 'error') errors[e.outcome.code] = (errors[e.outcome.code] ?? 0) + 1;
  const wrong = events.filter((e) => e.outcome.kind === 'wrong');
  const gapEvents = events.filter(inGap);
  const oldFailures: string[] = [];
  let right = 0;
  let files = 0;
  for (const r of readers) {
    if (r.verified === null) {
      oldFailures.push(r.failure ?? 'no verification');
      continue;
    }
    for (const v of r.verified) {
      files++;
      if (v.right) right++;
      else oldFailures.push(`${v.file}: ${v.wrongReads} wrong reads, last error ${v.lastError ?? 'none'}`);
    }
  }
  return {
    transport,
    restart,
    crashes: gaps.length,
    reads: readers.reduce((n, r) => n + r.counts.ok + r.counts.short + r.counts.wrong + r.counts.errors, 0),
    wrong: wrong.length + readers.reduce((n, r) => n + (r.verified ?? []).reduce((m, v) => m + v.wrongReads, 0), 0),
    wrongZeroPages: wrong.reduce((n, e) => n + (e.outcome.kind === 'wrong' ? e.outcome.zeroPages : 0), 0),
    wrongVia: {
      oldFd: wrong.filter((e) => e.via === 'old-fd').length,
      newFd: wrong.filter((e) => e.via === 'new-fd').length,
    },
    short: events.filter((e) => e.outcome.kind === 'short').length,
    errors,
    gap: {
      blocked: gapEvents.filter((e) => e.outcome.kind === 'ok').length,
      failed: gapEvents.filter((e) => e.outcome.kind === 'error').length,
      short: gapEvents.filter((e) => e.outcome.kind === 'short').length,
      wrong: gapEvents.filter((e) => e.outcome.kind === 'wrong').length,
    },
    oldFds: { right, files, failures: oldFailures },
    // Those outside any gap first: a daemon was up when they were read.
    wrongSamples: [...wrong.filter((e) => !inGap(e)), ...wrong.filter(inGap)].slice(0, 5),
  };
}

export function summaryLine(s: ChaosSummary): string {
  const errors = Object.entries(s.errors)
    .map(([code, n]) => `${code}=${n}`)
    .join(',');
  const wrong = `${s.wrong} wrong (${s.wrongZeroPages} zero pages; ${s.wrongVia.oldFd} via old fds, ${s.wrongVia.newFd} via new)`;
  const gap = `${s.gap.blocked} blocked then served, ${s.gap.failed} failed, ${s.gap.short} short, ${s.gap.wrong} wrong`;
  return (
    `chaos ${s.transport} (${s.restart}, ${s.crashes} SIGKILLs): ${s.reads} reads, ${wrong}, ${s.short} short, ` +
    `errors {${errors}}; during gaps: ${gap}; old fds after the last restart: ${s.oldFds.right}/${s.oldFds.files} right`
  );
}
