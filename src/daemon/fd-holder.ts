// The holder process (native/holder/holder.cc, protocol at its top): where the kernel-facing fds
// outlive the daemon on a node without systemd. One holder per cache directory, at
// <cache>/holder.sock; it hands the fds only to the daemon holding the cache lock (HELLO proves it).
// The daemon starts one when none answers, and again when it dies while the daemon runs, keeping its
// fds there again. A holder that keeps nothing exits once its daemon is gone.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { native } from '../native';
import { executablePath } from '../native/addon-path';
import type { FdKeeper } from '../transport/transport';
import type { CacheLock } from './cache-lock';
import { HandedFds } from './handed-fds';

export const HOLDER_SOCKET = 'holder.sock';
export const HOLDER_LOG = 'holder.log';
export const HOLDER_EXECUTABLE = 'erofs-ondemand-holder';

const REPLY_TIMEOUT_MS = 5000;
const WATCH_INTERVAL_MS = 1000;
const CONNECT_ATTEMPTS = 5;

/** The holder closed the connection (it died, or exited between our connect and HELLO). */
class HolderGone extends Error {}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

export class HolderProcess implements FdKeeper {
  readonly kind = 'holder' as const;
  /** Every fd the holder should have, by name: kept again in a new holder when this one dies. */
  private readonly kept = new Map<string, number>();
  /** What the holder had when this daemon came: an earlier daemon's fds, now this process's. */
  private handed = new HandedFds(new Map());
  private sock = -1;
  private watch: NodeJS.Timeout | undefined;
  /** The holder's pid, from its answer to HELLO. */
  pid = 0;

  private constructor(
    readonly socket: string,
    private readonly lock: CacheLock,
    private readonly logFile: string,
  ) {}

  /**
   * Connects to the cache directory's holder (starting one when none answers), proves the lock and
   * takes what an earlier daemon kept there. Throws when the holder refuses or cannot be started.
   */
  static open(cacheDir: string, lock: CacheLock): HolderProcess {
    const dir = path.resolve(cacheDir);
    const holder = new HolderProcess(path.join(dir, HOLDER_SOCKET), lock, path.join(dir, HOLDER_LOG));
    holder.connect();
    let handed: Map<string, number>;
    try {
      handed = holder.list();
    } catch (err) {
      holder.disconnect();
      throw err;
    }
    holder.handed = new HandedFds(handed);
    for (const [name, fd] of handed) holder.kept.set(name, fd);
    log.info('fd holder serves this daemon', {
      pid: holder.pid,
      socket: holder.socket,
      inherited: holder.handed.names(),
    });
    holder.watch = setInterval(() => holder.check(), WATCH_INTERVAL_MS).unref();
    return holder;
  }

  inherited(name: string): number | undefined {
    return this.handed.take(name);
  }

  keep(name: string, fd: number): boolean {
    this.kept.set(name, fd);
    const reply = this.ask(`KEEP ${name}`, [fd]);
    if (reply === 'OK') return true;
    this.kept.delete(name);
    log.warn('fd holder did not keep an fd', { name, reply });
    return false;
  }

  drop(name: string): void {
    this.kept.delete(name);
    const reply = this.ask(`DROP ${name}`);
    if (reply !== 'OK' && reply !== `ERR nothing kept as ${name}`)
      log.warn('fd holder did not drop an fd', { name, reply });
  }

  releaseUnclaimed(): string[] {
    const names = this.handed.closeUnclaimed();
    for (const name of names) this.drop(name);
    if (names.length) log.info('fds no transport took over: dropped from the fd holder', { names });
    return names;
  }

  /** Disconnects (the fds stay kept; a holder that keeps nothing then exits) and stops watching it. */
  close(): void {
    clearInterval(this.watch);
    this.disconnect();
  }

  private disconnect(): void {
    if (this.sock >= 0) fs.closeSync(this.sock);
    this.sock = -1;
  }

  /** A request on the current connection; a dead holder is replaced first (with every fd kept again). */
  private ask(text: string, fds: readonly number[] = []): string {
    try {
      if (this.sock < 0) this.revive('not connected');
      try {
        return this.request(this.sock, text, fds);
      } catch (err) {
        if (!(err instanceof HolderGone)) throw err;
        // A KEEP is among what revive keeps again (`kept` has it already).
        const failed = this.revive(err.message);
        return failed.some((name) => text === `KEEP ${name}`) ? 'ERR the new holder refused it' : 'OK';
      }
    } catch (err) {
      return `ERR ${(err as Error).message}`;
    }
  }

  private request(sock: number, text: string, fds: readonly number[] = []): string {
    try {
      native.sendPacket(sock, text, fds);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EPIPE' || code === 'ECONNRESET' || code === 'ENOTCONN') throw new HolderGone(`${text}: ${code}`);
      throw err;
    }
    const reply = native.recvPacket(sock, REPLY_TIMEOUT_MS);
    if (reply === 'closed') throw new HolderGone(`${text}: connection closed`);
    if (reply === 'timeout') throw new Error(`fd holder ${this.socket} did not answer ${text.split(' ')[0]}`);
    for (const fd of reply.fds) fs.closeSync(fd);
    return reply.text;
  }

  private connect(): void {
    let why = '';
    let started = false;
    for (let attempt = 0; attempt < CONNECT_ATTEMPTS; attempt++) {
      if (attempt > 0 && !started) sleepSync(50 * attempt);
      started = false;
      let sock: number;
      try {
        sock = native.seqpacketConnect(this.socket);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw new Error(`fd holder: ${(err as Error).message}`);
        why = (err as Error).message;
        started = this.start();
        continue;
      }
      try {
        const reply = this.request(sock, 'HELLO', [this.lock.fd]);
        if (!reply.startsWith('OK')) throw new Error(`fd holder ${this.socket} refused this daemon: ${reply}`);
        this.sock = sock;
        this.pid = Number(/pid (\d+)/.exec(reply)?.[1] ?? 0);
        return;
      } catch (err) {
        fs.closeSync(sock);
        if (!(err instanceof HolderGone)) throw err;
        why = err.message;
      }
    }
    throw new Error(`no fd holder answers on ${this.socket} (${why}); see ${this.logFile}`);
  }

  /** Starts a holder; it returns once its socket takes connections. False when it did not start. */
  private start(): boolean {
    const exe = executablePath(HOLDER_EXECUTABLE);
    const out = fs.openSync(this.logFile, 'a', 0o600);
    try {
      const r = spawnSync(exe, [this.socket, this.lock.file], {
        stdio: ['ignore', out, out],
        timeout: REPLY_TIMEOUT_MS,
      });
      if (r.error) throw new Error(`cannot start the fd holder ${exe}: ${r.error.message}`);
      // Not 0: e.g. another holder answers by now; the next attempt connects to it.
      if (r.status !== 0) log.warn('fd holder did not start', { status: r.status, log: this.logFile });
      return r.status === 0;
    } finally {
      fs.closeSync(out);
    }
  }

  private list(): Map<string, number> {
    native.sendPacket(this.sock, 'LIST');
    const fds = new Map<string, number>();
    for (;;) {
      const reply = native.recvPacket(this.sock, REPLY_TIMEOUT_MS);
      if (typeof reply === 'string') throw new Error(`fd holder ${this.socket}: LIST: ${reply}`);
      const m = /^FD (\S+)$/.exec(reply.text);
      if (m && reply.fds.length === 1) fds.set(m[1], reply.fds[0]);
      else for (const fd of reply.fds) fs.closeSync(fd);
      if (reply.text === 'END') return fds;
      if (!m) throw new Error(`fd holder ${this.socket}: LIST: unexpected ${JSON.stringify(reply.text)}`);
    }
  }

  /** The holder died while this daemon runs: a new one gets every fd again. */
  private revive(why: string): string[] {
    this.disconnect();
    this.connect();
    const failed: string[] = [];
    for (const [name, fd] of this.kept) if (this.request(this.sock, `KEEP ${name}`, [fd]) !== 'OK') failed.push(name);
    log.warn('fd holder gone: a new one keeps the fds again', {
      why,
      pid: this.pid,
      kept: [...this.kept.keys()],
      ...(failed.length ? { failed } : {}),
    });
    return failed;
  }

  /** Run every WATCH_INTERVAL_MS: the holder died when its connection closed. */
  private check(): void {
    try {
      const got = this.sock < 0 ? 'closed' : native.recvPacket(this.sock, 0);
      if (got === 'closed') this.revive('connection closed');
      else if (got !== 'timeout') for (const fd of got.fds) fs.closeSync(fd);
    } catch (err) {
      this.disconnect(); // tried again at the next check
      log.error('fd holder could not be started again', { socket: this.socket, error: (err as Error).message });
    }
  }
}
