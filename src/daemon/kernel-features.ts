// What this kernel and cache filesystem can do, probed for real rather than guessed from versions,
// and which transport the daemon would choose from it.
import fs from 'node:fs';
import os from 'node:os';
import { TRANSPORTS } from '../transport/transports';
import {
  TRANSPORT_NAMES,
  whenDaemonDies,
  type CrashOutcome,
  type FdKeeper,
  type Probe,
  type TransportName,
} from '../transport/transport';
import { NO_KEEPER } from './fd-keeper';

export type { Probe, TransportName };

export interface KernelFeatures {
  kernel: string;
  root: boolean;
  erofs: Probe;
  overlay: Probe;
  /** Each transport's probe, in the order 'auto' tries them. */
  transports: Record<TransportName, Probe>;
  cacheFs: Probe & { type: string };
  /** Where kernel-facing fds outlive the daemon ('none': they close with it). */
  keeper: FdKeeper['kind'];
  /** Per transport, what readers of data not cached see while the daemon is dead. */
  whenDaemonDies: Record<TransportName, CrashOutcome>;
  /** What the daemon would use (the best that works, or the one requested); null when none works here. */
  chosen: TransportName | null;
  /** Why nothing was chosen, when nothing was. */
  refusal?: string;
  /** With 'auto': why each transport better than the chosen one could not be used. */
  passedOver?: Partial<Record<TransportName, string>>;
}

const FS_TYPES: Record<number, string> = {
  0xef53: 'ext4',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs',
  0x65735546: 'fuse',
  0xe0f5e1e2: 'erofs',
  0x794c7630: 'overlayfs',
};
/** Filesystems that take fanotify pre-content marks (and so can hold a fanotify cache). */
const MARKABLE_FS = ['ext4', 'xfs', 'btrfs'];

function filesystems(): string {
  try {
    return fs.readFileSync('/proc/filesystems', 'utf8');
  } catch {
    return '';
  }
}

/**
 * `requested`: 'auto' (best first, TRANSPORT_NAMES) or one transport to insist on. `fds` holds the
 * kernel-facing fds a previous daemon left: a transport holding one probes as working (probing it
 * afresh would only find its device busy).
 */
export function probeKernel(
  cacheDir: string,
  requested: TransportName | 'auto' = 'auto',
  fds: FdKeeper = NO_KEEPER,
): KernelFeatures {
  fs.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const known = filesystems();
  const has = (name: string) => new RegExp(`\\t${name}\\n`).test(known);
  const statfsType = Number(fs.statfsSync(cacheDir).type);
  const cacheType = FS_TYPES[statfsType] ?? `0x${statfsType.toString(16)}`;
  const markable = MARKABLE_FS.includes(cacheType);
  const transports = Object.fromEntries(TRANSPORTS.map((t) => [t.name, t.probe({ cacheDir, fds })])) as Record<
    TransportName,
    Probe
  >;
  const features: KernelFeatures = {
    kernel: os.release(),
    root: process.getuid?.() === 0,
    erofs: { ok: has('erofs'), detail: has('erofs') ? 'in /proc/filesystems' : 'erofs is not in /proc/filesystems' },
    overlay: {
      ok: has('overlay'),
      detail: has('overlay') ? 'in /proc/filesystems' : 'overlay is not in /proc/filesystems',
    },
    transports,
    cacheFs: {
      ok: markable,
      type: cacheType,
      detail: markable
        ? `${cacheDir} is on ${cacheType}`
        : `${cacheDir} is on ${cacheType} (fanotify needs ${MARKABLE_FS.join(', ')}; FUSE serves from any)`,
    },
    keeper: fds.kind,
    whenDaemonDies: Object.fromEntries(TRANSPORTS.map((t) => [t.name, whenDaemonDies(t, fds.kind)])) as Record<
      TransportName,
      CrashOutcome
    >,
    chosen: null,
  };
  // Never a transport that would serve wrong bytes if the daemon died, even when asked for by name.
  const safe = (name: TransportName) => features.whenDaemonDies[name] !== 'zeros';
  const works = (name: TransportName) => transports[name].ok && features.erofs.ok && safe(name);
  const why = (name: TransportName) =>
    `${name}: ${
      !transports[name].ok
        ? transports[name].detail
        : !features.erofs.ok
          ? features.erofs.detail
          : "with no fd keeper (systemd's fd store or the holder process), data not fetched yet would read as zeros after a daemon crash"
    }`;
  // A transport whose fd a dead daemon left comes first: its mounts wait for this daemon to take them over.
  const inherited = TRANSPORT_NAMES.filter((name) => fds.inherited(name) !== undefined);
  const candidates: readonly TransportName[] =
    requested === 'auto' ? [...inherited, ...TRANSPORT_NAMES.filter((n) => !inherited.includes(n))] : [requested];
  features.chosen = candidates.find(works) ?? null;
  if (features.chosen && requested === 'auto') {
    const better = candidates.slice(0, candidates.indexOf(features.chosen));
    if (better.length > 0) features.passedOver = Object.fromEntries(better.map((t) => [t, why(t)]));
  }
  if (!features.chosen) {
    features.refusal = `${requested === 'auto' ? 'no usable cache-miss transport' : `transport ${requested} was requested but cannot work here`} (${candidates.map(why).join('; ')}; cache filesystem: ${features.cacheFs.detail})`;
  }
  return features;
}
