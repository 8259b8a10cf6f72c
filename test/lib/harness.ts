// The CLI and the daemon as the tests, benchmarks and demo run them: in child processes of the
// built CLI (dist/src/cli/main.js), the daemon in the background until its control socket exists.
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { LayerStats } from '../../src/convert/layer-converter';

/** The built CLI, run with this Node. */
export const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface CliOptions {
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** Milliseconds before the child is killed (sync runs only). */
  timeout?: number;
  /** Working directory (default: this process's). */
  cwd?: string;
}

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function childEnv(env: NodeJS.ProcessEnv | undefined): NodeJS.ProcessEnv {
  return { ...process.env, ...env };
}

/** Runs the CLI to its end, blocking this process: only for tests with no server in this process. */
export function runCli(args: readonly string[], opts: CliOptions = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: childEnv(opts.env),
    timeout: opts.timeout,
  });
}

/** Runs the CLI without blocking (a fault proxy or fake registry in this process keeps serving); never rejects. */
export function runCliAsync(args: readonly string[], opts: CliOptions = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: childEnv(opts.env),
      cwd: opts.cwd,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', reject);
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

const execFileAsync = promisify(execFile);

/** Runs the CLI without blocking; rejects (with `code`, `stdout`, `stderr`) when it exits non-zero. */
export function execCli(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return execFileAsync(process.execPath, [CLI, ...args], { maxBuffer: 1 << 24 });
}

/** Runs the CLI to its end and returns its stdout; throws when it exits non-zero. */
export function execCliSync(args: readonly string[], opts: CliOptions = {}): string {
  return execFileSync(process.execPath, [CLI, ...args], {
    encoding: 'utf8',
    env: childEnv(opts.env),
    maxBuffer: 1 << 26,
  });
}

/**
 * Puts an OCI layout image (`layout:tag`) into a registry as `library/NAME:1` (skopeo) and converts it
 * there to `lazy/NAME:1` with our CLI; returns both references.
 */
export function publishLazy(layoutRef: string, host: string, name: string): { source: string; lazy: string } {
  const source = `${host}/library/${name}:1`;
  const lazy = `${host}/lazy/${name}:1`;
  execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${layoutRef}`, `docker://${source}`]);
  execCliSync(['convert', '-q', source, lazy]);
  return { source, lazy };
}

export interface DaemonOptions {
  cacheDir: string;
  /** The control socket: the daemon is up once it exists. */
  socket: string;
  /** Further `daemon` flags (transport, metrics address, config, prefetch, ...). */
  flags?: readonly string[];
  /** Added to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** The daemon's stderr (its log): kept in `Daemon.log` (default), passed through, or dropped. */
  stderr?: 'capture' | 'inherit' | 'ignore';
  /** How long to wait for the control socket (default 10 s). */
  startTimeoutMs?: number;
}

/** A daemon started by `startDaemon`. */
export class Daemon {
  /** What it has written to stderr so far, when captured; tests may clear it to look at what follows. */
  log = '';

  constructor(
    readonly process: ChildProcess,
    readonly socket: string,
  ) {}

  get running(): boolean {
    return this.process.exitCode === null && this.process.signalCode === null;
  }

  /** Resolves when the process has exited (at once if it has). */
  exited(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.process.once('exit', () => resolve()));
  }

  /**
   * Sends `signal` if it still runs and waits for it to exit. After SIGKILL the socket it leaves
   * behind is removed; on any other signal removing it is the daemon's own job, which tests check.
   */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (this.running) {
      const exited = this.exited();
      this.process.kill(signal);
      await exited;
    }
    if (signal === 'SIGKILL') fs.rmSync(this.socket, { force: true });
  }
}

/** A daemon started some other way (under a supervisor): its stderr, if piped, is kept in `log`. */
export function adoptDaemon(child: ChildProcess, socket: string): Daemon {
  const daemon = new Daemon(child, socket);
  child.stderr?.on('data', (b) => (daemon.log += b));
  return daemon;
}

/** The flags the systemd unit gives node for the daemon: tests and benchmarks run it the same way. */
export const DAEMON_NODE_FLAGS: readonly string[] = (() => {
  const unit = fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'systemd', 'erofs-ondemand.service'), 'utf8');
  const m = /^ExecStart=\S+\/node((?: --\S+)*) /m.exec(unit);
  if (!m) throw new Error('systemd/erofs-ondemand.service: no ExecStart running node');
  return m[1].split(' ').filter(Boolean);
})();

/** Starts `erofs-ondemand daemon` without waiting for it (a test of what it does while starting). */
export function spawnDaemon(opts: DaemonOptions): Daemon {
  const stderr = opts.stderr ?? 'capture';
  const child = spawn(
    process.execPath,
    [...DAEMON_NODE_FLAGS, CLI, 'daemon', '--cache-dir', opts.cacheDir, '--socket', opts.socket, ...(opts.flags ?? [])],
    {
      stdio: ['ignore', 'ignore', stderr === 'capture' ? 'pipe' : stderr],
      env: childEnv(opts.env),
    },
  );
  return adoptDaemon(child, opts.socket);
}

/** Starts `erofs-ondemand daemon` and waits until its control socket exists; throws with its log if it does not come up. */
export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const daemon = spawnDaemon(opts);
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  while (!fs.existsSync(opts.socket) && daemon.running && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  if (!fs.existsSync(opts.socket)) {
    await daemon.stop('SIGKILL');
    throw new Error(`daemon ${opts.flags?.join(' ') ?? ''} did not start:\n${daemon.log}`);
  }
  return daemon;
}

/** The line `convert --json` prints (src/cli/convert.ts). */
export interface ConvertJson {
  source: { ref: string; digest: string };
  target: { ref: string; digest: string };
  seconds: number;
  bootstrapBytes: number;
  blobs: Array<{ digest: string; bytes: number; uncompressedBytes: number; chunks: number; sourceLayer: string }>;
  layers: LayerStats[];
  sourceLayerBytes: number;
  blobBytes: number;
  fileBytes: number;
  tarBytes: number;
  referrer: string | null;
  chunkDictBlobs: Array<{ digest: string; from: string }>;
  uploadedBlobs: number;
  skippedBlobs: number;
}

/** Pids of the fd holder processes serving `socket` (a cache directory's holder.sock). */
export function holderPids(socket: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue; // gone meanwhile
    }
    if (path.basename(argv[0]) === 'erofs-ondemand-holder' && argv[1] === socket) pids.push(Number(entry));
  }
  return pids;
}

export interface SupervisedDaemonOptions {
  cacheDir: string;
  socket: string;
  /** Where fdstore.py's notify socket goes. */
  notifySocket: string;
  /** Further `daemon` flags. */
  flags?: readonly string[];
  /** A restarted daemon (it has LISTEN_FDS) waits to start while this file exists: a window with no daemon. */
  gate?: string;
}

/**
 * `erofs-ondemand daemon` under kernel-tests/fdstore.py, which plays systemd: it keeps the fds the
 * daemon hands its fd store and starts the daemon again with them when it dies of a signal. The
 * returned Daemon is the supervisor; its `log` holds every daemon's stderr.
 */
export function superviseDaemon(opts: SupervisedDaemonOptions): Daemon {
  const fdstore = path.resolve(__dirname, '..', '..', '..', 'kernel-tests', 'fdstore.py');
  const daemonArgs = [
    process.execPath,
    ...DAEMON_NODE_FLAGS,
    CLI,
    'daemon',
    '--cache-dir',
    opts.cacheDir,
    '--socket',
    opts.socket,
    ...(opts.flags ?? []),
  ];
  const gated = 'if [ -n "$LISTEN_FDS" ]; then while [ -e "$GATE" ]; do sleep 0.05; done; fi; exec "$@"';
  const command = opts.gate ? ['sh', '-c', gated, 'gated', ...daemonArgs] : daemonArgs;
  const child = spawn('python3', [fdstore, opts.notifySocket, ...command], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: opts.gate ? { ...process.env, GATE: opts.gate } : process.env,
  });
  return adoptDaemon(child, opts.socket);
}
