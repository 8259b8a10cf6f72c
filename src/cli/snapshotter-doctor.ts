// `doctor`'s snapshotter part: which socket the daemon serves containerd's snapshots API on, whether
// only root can reach it, whether a daemon answers on it, and the containerd configuration to add.
// gRPC is loaded only to ask the socket, as the daemon loads it only to serve it.
import fs from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../config';
import { answering, callControl } from '../daemon/control';
import { snapshotterSocket } from '../defaults';

/** The proxy plugin's name in containerd's configuration, which `--snapshotter` and CRI name. */
export const SNAPSHOTTER_NAME = 'erofs-ondemand';
/** How long the daemon and the socket each get to answer. */
const ASK_TIMEOUT_MS = 5000;

export interface SnapshotterCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface SnapshotterReport {
  /** The socket; '' when the snapshotter is off. */
  socket: string;
  /** Where the path came from: the flag, the running daemon, or the configuration (for people). */
  from: string;
  checks: SnapshotterCheck[];
  /** The lines to add to /etc/containerd/config.toml; null when the snapshotter is off. */
  containerdConfig: string | null;
}

export interface SnapshotterDoctorOptions {
  /** The daemon's configuration file (a missing default file means the defaults). */
  config: string;
  configRequired: boolean;
  /** The daemon's control socket, when given; else the configuration's. */
  socket?: string;
  /** The snapshotter socket, when given: checked instead of the one the daemon uses. */
  snapshotterSocket?: string;
}

/** The socket the daemon serves: as told, else as the running daemon says, else as its configuration makes it. */
async function socketInUse(opts: SnapshotterDoctorOptions): Promise<{ socket: string; from: string }> {
  if (opts.snapshotterSocket !== undefined)
    return { socket: opts.snapshotterSocket, from: 'given with --snapshotter-socket' };
  const config = loadConfig(opts.config, opts.configRequired);
  const control = opts.socket ?? config.socket;
  try {
    const status = (await callControl(control, { op: 'status' }, ASK_TIMEOUT_MS)) as { snapshotterSocket?: unknown };
    if (typeof status?.snapshotterSocket === 'string' || status?.snapshotterSocket === null)
      return { socket: status.snapshotterSocket ?? '', from: `what the daemon on ${control} serves` };
  } catch {
    // No daemon (or an older one): the configuration says what it would serve.
  }
  const source = fs.existsSync(opts.config) ? `as ${opts.config} sets it` : 'the default';
  return {
    socket: snapshotterSocket(config.snapshotter.socket, control),
    from: `${source}; no daemon answers on ${control}`,
  };
}

/** The proxy plugin and CRI settings for containerd 1.6/1.7 (config `version = 2`). */
export function containerdConfig(socket: string): string {
  return [
    'version = 2',
    '',
    `[proxy_plugins.${SNAPSHOTTER_NAME}]`,
    '  type = "snapshot"',
    `  address = ${JSON.stringify(socket)}`,
    '',
    '# For Kubernetes (CRI): lazy pulls need the snapshot annotations.',
    '[plugins."io.containerd.grpc.v1.cri".containerd]',
    `  snapshotter = "${SNAPSHOTTER_NAME}"`,
    '  disable_snapshot_annotations = false',
  ].join('\n');
}

/** Mode bits that let someone other than the owner in: a socket must have none, its directory no write bits. */
function accessCheck(socket: string): SnapshotterCheck {
  const name = 'root only';
  const st = fs.statSync(socket);
  const dir = path.dirname(socket);
  const dst = fs.statSync(dir);
  const mode = (m: number) => (m & 0o777).toString(8).padStart(4, '0');
  const problems = [
    ...(st.uid !== 0 ? [`the socket belongs to uid ${st.uid}`] : []),
    ...((st.mode & 0o077) !== 0 ? [`the socket's mode is ${mode(st.mode)}, others may connect`] : []),
    ...(dst.uid !== 0 ? [`${dir} belongs to uid ${dst.uid}`] : []),
    ...((dst.mode & 0o022) !== 0 ? [`${dir}'s mode is ${mode(dst.mode)}, others may replace the socket`] : []),
  ];
  return problems.length
    ? { name, ok: false, detail: problems.join('; ') }
    : { name, ok: true, detail: `socket ${mode(st.mode)}, ${dir} ${mode(dst.mode)}, both root's` };
}

/** How many snapshots the service on `socket` lists, or why it did not. */
async function listSnapshots(socket: string): Promise<SnapshotterCheck> {
  const name = 'answers Snapshots.List';
  const grpc = await import('@grpc/grpc-js');
  const { snapshotsApi } = await import('../snapshotter/proto');
  const Snapshots = snapshotsApi().containerd.services.snapshots.v1.Snapshots;
  const client = new Snapshots(`unix://${socket}`, grpc.credentials.createInsecure());
  try {
    const count = await new Promise<number>((resolve, reject) => {
      let n = 0;
      const call = client.List({ snapshotter: SNAPSHOTTER_NAME }, { deadline: Date.now() + ASK_TIMEOUT_MS });
      call.on('data', (r: { info?: unknown[] }) => (n += r.info?.length ?? 0));
      call.on('end', () => resolve(n));
      call.on('error', reject);
    });
    return { name, ok: true, detail: `${count} snapshot${count === 1 ? '' : 's'}` };
  } catch (err) {
    return { name, ok: false, detail: (err as Error).message };
  } finally {
    client.close();
  }
}

export async function snapshotterDoctor(opts: SnapshotterDoctorOptions): Promise<SnapshotterReport> {
  let socket: string;
  let from: string;
  try {
    ({ socket, from } = await socketInUse(opts));
  } catch (err) {
    // A configuration the daemon would refuse: the kernel's findings still stand.
    const detail = `cannot tell which socket the daemon serves: ${(err as Error).message}`;
    return {
      socket: '',
      from: opts.config,
      checks: [{ name: 'configured', ok: false, detail }],
      containerdConfig: null,
    };
  }
  if (!socket)
    return {
      socket,
      from,
      checks: [{ name: 'configured', ok: false, detail: `off (${from}); serve it with --snapshotter-socket PATH` }],
      containerdConfig: null,
    };
  const checks: SnapshotterCheck[] = [{ name: 'configured', ok: true, detail: `${socket} (${from})` }];
  let isSocket = false;
  try {
    isSocket = fs.statSync(socket).isSocket();
    checks.push({ name: 'exists', ok: isSocket, detail: isSocket ? 'a unix socket' : 'not a socket' });
  } catch (err) {
    checks.push({
      name: 'exists',
      ok: false,
      detail: `${(err as NodeJS.ErrnoException).code}: is the daemon running?`,
    });
  }
  if (isSocket) {
    checks.push(accessCheck(socket));
    const listening = await answering(socket);
    checks.push({
      name: 'daemon listening',
      ok: listening,
      detail: listening ? 'accepts connections' : 'nothing accepts connections: a socket a daemon left behind',
    });
    if (listening) checks.push(await listSnapshots(socket));
  }
  return { socket, from, checks, containerdConfig: containerdConfig(socket) };
}
