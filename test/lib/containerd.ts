// Debian's containerd, started by a test with its own root, state and socket, and this project's
// snapshotter configured as its proxy plugin `erofs-ondemand`.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { holderPids, startDaemon, type Daemon } from './harness';
import { HOLDER_SOCKET } from '../../src/daemon/fd-holder';

const execFileAsync = promisify(execFile);

export const CONTAINERD_BIN = '/usr/bin/containerd';
export const SNAPSHOTTER = 'erofs-ondemand';

export interface Containerd {
  address: string;
  /** `ctr` against this containerd; rejects with its stderr when it exits non-zero. */
  ctr(...args: string[]): Promise<string>;
  log(): string;
  stop(): Promise<void>;
}

export interface ContainerdOptions {
  /** Serve CRI (image pulls through the snapshotter, as the kubelet makes them) for these plain-HTTP registries. */
  cri?: { plainHttp: string[] };
}

/** containerd with `snapshotterSocket` as the `erofs-ondemand` proxy snapshotter; CRI off unless asked for. */
export async function startContainerd(
  dir: string,
  snapshotterSocket: string,
  opts: ContainerdOptions = {},
): Promise<Containerd> {
  const cri = opts.cri;
  fs.mkdirSync(dir, { recursive: true });
  const address = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  fs.writeFileSync(
    config,
    [
      'version = 2',
      `root = ${JSON.stringify(path.join(dir, 'root'))}`,
      `state = ${JSON.stringify(path.join(dir, 'state'))}`,
      cri ? '' : 'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = ${JSON.stringify(address)}`,
      `[proxy_plugins.${SNAPSHOTTER}]`,
      '  type = "snapshot"',
      `  address = ${JSON.stringify(snapshotterSocket)}`,
      '[plugins."io.containerd.grpc.v1.cri".containerd]',
      `  snapshotter = "${SNAPSHOTTER}"`,
      '  disable_snapshot_annotations = false',
      ...(cri?.plainHttp ?? []).flatMap((host) => [
        `[plugins."io.containerd.grpc.v1.cri".registry.mirrors."${host}"]`,
        `  endpoint = ["http://${host}"]`,
      ]),
      '',
    ].join('\n'),
  );
  let log = '';
  const child: ChildProcess = spawn(CONTAINERD_BIN, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr?.on('data', (b) => (log += b));
  const deadline = Date.now() + 20_000;
  while (!fs.existsSync(address) && child.exitCode === null && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 100));
  if (!fs.existsSync(address)) {
    child.kill('SIGKILL');
    throw new Error(`containerd did not start:\n${log}`);
  }
  const ctr = async (...args: string[]): Promise<string> => {
    try {
      return (await execFileAsync('ctr', ['--address', address, ...args], { maxBuffer: 1 << 24 })).stdout;
    } catch (err) {
      const e = err as Error & { stderr?: string };
      throw new Error(`ctr ${args.join(' ')}: ${e.stderr ?? e.message}`, { cause: err });
    }
  };
  return {
    address,
    ctr,
    log: () => log,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The daemon of `work` (cache `work`/cache, control socket `work`/control.sock) with its snapshotter on `work`/snapshotter.sock. */
export async function startDaemonWithSnapshotter(work: string, flags: readonly string[] = []): Promise<Daemon> {
  const sock = path.join(work, 'snapshotter.sock');
  const daemon = await startDaemon({
    cacheDir: path.join(work, 'cache'),
    socket: path.join(work, 'control.sock'),
    flags: ['--metrics-address', '', '--snapshotter-socket', sock, ...flags],
  });
  // The snapshotter socket is served before the control socket; a restarted daemon's replaces the one left behind.
  for (const deadline = Date.now() + 10_000; !fs.existsSync(sock) && Date.now() < deadline;)
    await new Promise((r) => setTimeout(r, 20));
  if (!fs.existsSync(sock)) throw new Error(`no ${sock}:\n${daemon.log}`);
  return daemon;
}

/**
 * Ends a test's daemon of `work` and what it may leave: a planned stop leaves the snapshotter's mounts
 * (and the holder keeping their fds) for a next daemon; they are detached and the holder killed.
 */
export async function stopDaemonWithSnapshotter(work: string, daemon: Daemon | undefined): Promise<void> {
  await daemon?.stop();
  for (const pid of holderPids(path.join(work, 'cache', HOLDER_SOCKET))) process.kill(pid, 'SIGKILL');
  const targets = fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((t) => t?.startsWith(`${work}/`))
    .sort((a, b) => b.length - a.length);
  for (const t of targets) await execFileAsync('umount', ['-l', t]);
}

/**
 * Waits until containerd's client has reconnected to a restarted snapshotter (it does so on its own,
 * after its back-off): until `ls` (a `ctr snapshots` command) answers, at most 30 s.
 */
export async function snapshotterReconnected(ls: () => Promise<string>): Promise<void> {
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 200)))
    if (
      await ls().then(
        () => true,
        () => false,
      )
    )
      return;
  await ls();
}
