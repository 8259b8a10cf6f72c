// A private containerd (Debian's containerd + runc) for the benchmarks: its own root, state, socket
// and configuration under one directory, so it shares nothing with a containerd the host may run.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const NAMESPACE = 'erofs-ondemand-bench';
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export class Containerd {
  private exited: Promise<void>;

  constructor(
    readonly dir: string,
    readonly socket: string,
    private readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Runs `ctr` against this containerd; its stdout. */
  ctr(...args: string[]): string {
    return execFileSync('ctr', ['--address', this.socket, '--namespace', NAMESPACE, ...args], {
      encoding: 'utf8',
      maxBuffer: 1 << 26,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /** containerd's own pull: fetch every layer from a plain-HTTP registry, then unpack it into a snapshot. */
  pull(ref: string): void {
    this.ctr('image', 'pull', '--plain-http', ref);
  }

  /** Runs `cmd` in a new container of an image already pulled, removes the container; its stdout. */
  runImage(ref: string, id: string, cmd: readonly string[]): string {
    return this.ctr('run', '--rm', ref, id, ...cmd);
  }

  /**
   * Runs `cmd` in a new container on a root filesystem containerd does not manage; its stdout. No image
   * config comes with it, so PATH is the one Debian's images set.
   */
  runRootfs(rootfs: string, id: string, cmd: readonly string[]): string {
    return this.ctr('run', '--rm', '--env', `PATH=${DEFAULT_PATH}`, '--rootfs', rootfs, id, ...cmd);
  }

  /** Stops containerd, unmounts whatever is left under its directory and removes the directory. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const killer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
      await this.exited;
      clearTimeout(killer);
    }
    unmountUnder(this.dir);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Lazily unmounts every mount at or below `dir`, deepest first. */
export function unmountUnder(dir: string): void {
  const prefix = path.resolve(dir);
  const targets = fs
    .readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((t): t is string => !!t && (t === prefix || t.startsWith(`${prefix}/`)))
    .sort((a, b) => b.length - a.length);
  for (const t of targets) execFileSync('umount', ['-l', t]);
}

function config(dir: string, socket: string): string {
  const q = (p: string) => JSON.stringify(p);
  return [
    'version = 2',
    `root = ${q(path.join(dir, 'root'))}`,
    `state = ${q(path.join(dir, 'state'))}`,
    // Nothing here speaks CRI; leaving the plugin out keeps its CNI errors out of the log.
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = ${q(socket)}`,
    '[ttrpc]',
    `  address = ${q(`${socket}.ttrpc`)}`,
    '[debug]',
    '  address = ""',
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(path.join(dir, 'opt'))}`,
    '',
  ].join('\n');
}

/** Starts containerd in `dir` (created, must not exist) and waits until it answers on its socket. */
export async function startContainerd(dir: string, timeoutMs = 30_000): Promise<Containerd> {
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'containerd.sock');
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, config(dir, socket));
  const logFile = path.join(dir, 'containerd.log');
  const log = fs.openSync(logFile, 'w');
  const child = spawn('containerd', ['--config', configFile], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const containerd = new Containerd(dir, socket, child);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      const why = fs.readFileSync(logFile, 'utf8').slice(-4000);
      await containerd.stop();
      throw new Error(`containerd in ${dir} did not come up:\n${why}`);
    }
    try {
      containerd.ctr('version');
      return containerd;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
