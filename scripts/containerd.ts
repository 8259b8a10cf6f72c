// A private containerd (Debian's containerd + runc) for the benchmarks: its own root, state, socket
// and configuration under one directory, so it shares nothing with a containerd the host may run.
// With a snapshotter it also serves CRI and pulls as the kubelet does, through erofs-ondemand.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { criPullImage } from '../test/lib/cri';

const NAMESPACE = 'erofs-ondemand-bench';
/** Where CRI keeps what it pulls (containerd's namespace for Kubernetes). */
const CRI_NAMESPACE = 'k8s.io';
/** The proxy plugin's name: what `ctr run --snapshotter` and CRI's `snapshotter` name it by. */
export const SNAPSHOTTER = 'erofs-ondemand';

/** erofs-ondemand's snapshotter as containerd's proxy plugin, and the registries CRI pulls from over plain HTTP. */
export interface SnapshotterConfig {
  socket: string;
  plainHttp: readonly string[];
}

export class Containerd {
  private exited: Promise<void>;

  constructor(
    readonly dir: string,
    readonly socket: string,
    private readonly child: ChildProcess,
    /** CRI's when it serves CRI: `ctr` then sees the images CRI pulled. */
    readonly namespace: string = NAMESPACE,
  ) {
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Runs `ctr` against this containerd; its stdout. */
  ctr(...args: string[]): string {
    return execFileSync('ctr', this.ctrArgs(args), {
      encoding: 'utf8',
      maxBuffer: 1 << 26,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /** `ctr`'s arguments for `args` against this containerd, in its namespace. */
  private ctrArgs(args: readonly string[]): string[] {
    return ['--address', this.socket, '--namespace', this.namespace, ...args];
  }

  /** containerd's own pull: fetch every layer from a plain-HTTP registry, then unpack it into a snapshot. */
  pull(ref: string): void {
    this.ctr('image', 'pull', '--plain-http', ref);
  }

  /** A pull as the kubelet makes it (CRI PullImage), unpacked by the configured snapshotter. */
  async criPull(ref: string): Promise<void> {
    await criPullImage(this.socket, ref);
  }

  /**
   * Runs `cmd` in a new container of an image already pulled (into `snapshotter`'s snapshots) with
   * `ctr run`; resolves when `ctr` has ended, with the container's stdout and when (hrtime) its first
   * bytes arrived (the workload's result) and when `ctr` exited. The two differ by the container's
   * teardown: runc deletes it and unmounts its root filesystem, and unmounting an overlay syncs the
   * whole filesystem of its upper directory, whatever else left dirty pages on it. The container is
   * kept: `removeContainer` removes it, outside the time a benchmark takes.
   */
  runImage(
    ref: string,
    id: string,
    cmd: readonly string[],
    opts: { snapshotter?: string } = {},
  ): Promise<{ stdout: string; resultAt: bigint; exitAt: bigint }> {
    const snapshotter = opts.snapshotter ? ['--snapshotter', opts.snapshotter] : [];
    const child = spawn('ctr', this.ctrArgs(['run', ...snapshotter, ref, id, ...cmd]), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    let stdout = '';
    let stderr = '';
    let resultAt: bigint | null = null;
    child.stdout.on('data', (text: string) => {
      resultAt ??= process.hrtime.bigint();
      stdout += text;
    });
    child.stderr.on('data', (text: string) => (stderr += text));
    let exitAt: bigint | null = null;
    child.once('exit', () => (exitAt = process.hrtime.bigint()));
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (code, signal) => {
        exitAt ??= process.hrtime.bigint();
        if (code !== 0) reject(new Error(`ctr run ${ref} ${id}: exit ${code ?? signal}: ${stderr.trim()}`));
        else resolve({ stdout, resultAt: resultAt ?? exitAt, exitAt });
      });
    });
  }

  /** Removes container `id` with its snapshot (and its task, if `ctr run` left one). */
  removeContainer(id: string): void {
    try {
      this.ctr('tasks', 'rm', '-f', id);
    } catch {
      // `ctr run` deletes the task it waited for: usually there is none
    }
    this.ctr('containers', 'rm', id);
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

function config(dir: string, socket: string, snapshotter?: SnapshotterConfig): string {
  const q = (p: string) => JSON.stringify(p);
  const cri = snapshotter
    ? [
        `[proxy_plugins.${SNAPSHOTTER}]`,
        '  type = "snapshot"',
        `  address = ${q(snapshotter.socket)}`,
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        `  snapshotter = ${q(SNAPSHOTTER)}`,
        '  disable_snapshot_annotations = false',
        ...snapshotter.plainHttp.flatMap((host) => [
          `[plugins."io.containerd.grpc.v1.cri".registry.mirrors.${q(host)}]`,
          `  endpoint = [${q(`http://${host}`)}]`,
        ]),
      ]
    : // Nothing here speaks CRI; leaving the plugin out keeps its CNI errors out of the log.
      ['disabled_plugins = ["io.containerd.grpc.v1.cri"]'];
  return [
    'version = 2',
    `root = ${q(path.join(dir, 'root'))}`,
    `state = ${q(path.join(dir, 'state'))}`,
    ...(snapshotter ? [] : cri),
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
    ...(snapshotter ? cri : []),
    '',
  ].join('\n');
}

/**
 * Starts containerd in `dir` (created, must not exist) and waits until it answers on its socket; with
 * `snapshotter`, serving CRI with erofs-ondemand's snapshotter as its proxy plugin.
 */
export async function startContainerd(
  dir: string,
  opts: { snapshotter?: SnapshotterConfig; timeoutMs?: number } = {},
): Promise<Containerd> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  fs.mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'containerd.sock');
  const configFile = path.join(dir, 'config.toml');
  fs.writeFileSync(configFile, config(dir, socket, opts.snapshotter));
  const logFile = path.join(dir, 'containerd.log');
  const log = fs.openSync(logFile, 'w');
  const child = spawn('containerd', ['--config', configFile], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  const containerd = new Containerd(dir, socket, child, opts.snapshotter ? CRI_NAMESPACE : NAMESPACE);
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
