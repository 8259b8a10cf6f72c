// What this kernel and cache filesystem can do, probed for real rather than guessed from versions.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { native } from '../native';
import { probeCachefiles } from '../transport/cachefiles';
import { kernelHasFileBackedErofs } from '../transport/fuse-backing';
import { TRANSPORT_NAMES, type TransportName } from '../transport/transport';

export type { TransportName };

export interface Probe {
  ok: boolean;
  detail: string;
}

export interface KernelFeatures {
  kernel: string;
  root: boolean;
  erofs: Probe;
  overlay: Probe;
  cachefilesOndemand: Probe;
  fanotifyPreContent: Probe;
  fuse: Probe;
  cacheFs: Probe & { type: string };
  /** What the daemon would use (the best that works, or the one requested); null when none works here. */
  chosen: TransportName | null;
  /** Why nothing was chosen, when nothing was. */
  refusal?: string;
  /** With 'auto': why each transport better than the chosen one could not be used. */
  passedOver?: Partial<Record<TransportName, string>>;
  /** Transports this version of the daemon implements. */
  implemented: TransportName[];
}

const FS_TYPES: Record<number, string> = { 0xef53: 'ext4', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x01021994: 'tmpfs', 0x65735546: 'fuse', 0xe0f5e1e2: 'erofs', 0x794c7630: 'overlayfs' };

function filesystems(): string {
  try {
    return fs.readFileSync('/proc/filesystems', 'utf8');
  } catch {
    return '';
  }
}

function probeFanotify(cacheDir: string): Probe {
  const file = path.join(cacheDir, `.probe-fanotify-${process.pid}`);
  let group;
  try {
    fs.writeFileSync(file, '');
    group = new native.FanotifyGroup();
    group.mark(file);
    return { ok: true, detail: 'FAN_CLASS_PRE_CONTENT group with a FAN_PRE_ACCESS mark on the cache filesystem' };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  } finally {
    group?.close();
    fs.rmSync(file, { force: true });
  }
}

/**
 * FUSE: /dev/fuse opens read-write and the kernel knows the filesystem type. The cache filesystem does
 * not matter: the FUSE files are served from the cache files, whatever holds them (tmpfs included; a
 * bootstrap there is served through FUSE too).
 */
function probeFuse(): Probe {
  if (!/\tfuse\n/.test(filesystems())) return { ok: false, detail: 'fuse is not in /proc/filesystems' };
  try {
    fs.closeSync(fs.openSync('/dev/fuse', 'r+'));
    const backing = kernelHasFileBackedErofs() ? 'EROFS file-backed on its files (6.12+)' : 'EROFS through loop devices (kernel before 6.12)';
    return { ok: true, detail: `/dev/fuse opens read-write; fuse in /proc/filesystems; ${backing}` };
  } catch (err) {
    return { ok: false, detail: (err as Error).message };
  }
}

/** `requested`: 'auto' (best first: cachefiles, fanotify, FUSE) or one transport to insist on. */
/** `cachefilesBound`: a bound device was inherited, so it works (probing would only get EBUSY). */
export function probeKernel(cacheDir: string, requested: TransportName | 'auto' = 'auto', cachefilesBound = false): KernelFeatures {
  fs.mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
  const known = filesystems();
  const has = (name: string) => new RegExp(`\\t${name}\\n`).test(known);
  const statfsType = Number(fs.statfsSync(cacheDir).type);
  const cacheType = FS_TYPES[statfsType] ?? `0x${statfsType.toString(16)}`;
  const features: KernelFeatures = {
    kernel: os.release(),
    root: process.getuid?.() === 0,
    erofs: { ok: has('erofs'), detail: has('erofs') ? 'in /proc/filesystems' : 'erofs is not in /proc/filesystems' },
    overlay: { ok: has('overlay'), detail: has('overlay') ? 'in /proc/filesystems' : 'overlay is not in /proc/filesystems' },
    cachefilesOndemand: cachefilesBound ? { ok: true, detail: 'bound /dev/cachefiles inherited from the previous daemon' } : probeCachefiles(cacheDir),
    fanotifyPreContent: probeFanotify(cacheDir),
    fuse: probeFuse(),
    cacheFs: {
      ok: ['ext4', 'xfs', 'btrfs'].includes(cacheType),
      type: cacheType,
      detail: ['ext4', 'xfs', 'btrfs'].includes(cacheType) ? `${cacheDir} is on ${cacheType}` : `${cacheDir} is on ${cacheType} (fanotify needs ext4, xfs or btrfs; FUSE serves from any)`,
    },
    chosen: null,
    implemented: ['cachefiles', 'fanotify', 'fuse'],
  };
  const usable: Record<TransportName, Probe> = {
    cachefiles: features.cachefilesOndemand,
    fanotify: features.fanotifyPreContent,
    fuse: features.fuse,
  };
  const works = (name: TransportName) => usable[name].ok && features.erofs.ok && features.implemented.includes(name);
  const why = (name: TransportName) =>
    !usable[name].ok ? `${name}: ${usable[name].detail}` : !features.erofs.ok ? `${name}: ${features.erofs.detail}` : `${name}: not implemented by this version`;
  // TRANSPORT_NAMES is best first.
  const candidates: readonly TransportName[] = requested === 'auto' ? TRANSPORT_NAMES : [requested];
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
