// Debian's containerd, started by a test with its own root, state and socket, and this project's
// snapshotter configured as its proxy plugin `erofs-ondemand`.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

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
