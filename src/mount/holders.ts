// Who keeps a mount busy: processes with an open file, a working directory, a root or a mapping
// under it (from /proc, by path: nothing is read from the mount itself, so a mount whose server is
// stuck cannot stall the scan), and mounts stacked on it (below it, or an overlay using it as a layer).
import fs from 'node:fs';
import path from 'node:path';
import { mounts, unescape } from './mountinfo';

export interface Holder {
  pid: number;
  /** The process's command name (/proc/PID/comm). */
  command: string;
  /** How it holds the mount: 'cwd', 'root', 'exe', 'fd', 'mapping'. */
  uses: string[];
}

export interface MountHolders {
  processes: Holder[];
  /** Mount points that keep the target busy: mounted below it, or an overlay with a layer in it. */
  mounts: string[];
}

function under(p: string, target: string): boolean {
  return p === target || p.startsWith(target.endsWith('/') ? target : `${target}/`);
}

function readlink(p: string): string | null {
  try {
    return fs.readlinkSync(p);
  } catch {
    return null; // the process is gone, or the link is not ours to read
  }
}

/** The paths a process's memory maps (the last field of /proc/PID/maps, absolute paths only). */
function mappedPaths(pid: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const slash = line.indexOf('/');
    if (slash !== -1) out.push(line.slice(slash).replace(/ \(deleted\)$/, ''));
  }
  return out;
}

/** Which processes (this one excluded) and mounts hold `target`, a canonical mount point. */
export function mountHolders(target: string): MountHolders {
  const processes: Holder[] = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    const uses = new Set<string>();
    for (const link of ['cwd', 'root', 'exe'] as const) {
      const p = readlink(`/proc/${pid}/${link}`);
      if (p !== null && under(p, target)) uses.add(link);
    }
    let fds: string[] = [];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      // gone, or a kernel thread
    }
    if (fds.some((fd) => under(readlink(`/proc/${pid}/fd/${fd}`) ?? '', target))) uses.add('fd');
    if (mappedPaths(pid).some((p) => under(p, target))) uses.add('mapping');
    if (uses.size === 0) continue;
    let command = '?';
    try {
      command = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      // gone meanwhile
    }
    processes.push({ pid: Number(pid), command, uses: [...uses] });
  }
  const below = mounts()
    .filter((m) => m.target !== target && under(m.target, target))
    .map((m) => m.target);
  return { processes, mounts: [...below, ...overlaysOn(target)] };
}

/**
 * Overlays with a layer in `target`, a canonical mount point. An overlay holds its layers through
 * private clones: `target` unmounts under it without EBUSY, and its readers are left with a mount that
 * nothing serves any more.
 */
export function overlaysOn(target: string): string[] {
  return mounts()
    .filter((m) => m.fstype === 'overlay' && overlayLayers(m.options).some((l) => under(l, target)))
    .map((m) => m.target);
}

const OVERLAY_LAYER_OPTIONS = new Set(['lowerdir', 'upperdir', 'workdir', 'lowerdir+', 'datadir+']);

/** The directories an overlay's options name (lowerdir, upperdir, workdir); `\` escapes `:` in a layer list. */
function overlayLayers(options: string): string[] {
  const out: string[] = [];
  for (const opt of options.split(',')) {
    const eq = opt.indexOf('=');
    if (!OVERLAY_LAYER_OPTIONS.has(opt.slice(0, eq))) continue;
    for (const dir of unescape(opt.slice(eq + 1)).split(/(?<!\\):/))
      out.push(path.normalize(dir.replace(/\\(.)/g, '$1')));
  }
  return out;
}

/** "pid 123 (bash: cwd), pid 456 (python3: fd, mapping); mounted on it: /merged" or '' when nothing was found. */
export function describeHolders(h: MountHolders): string {
  const parts: string[] = [];
  if (h.processes.length > 0)
    parts.push(h.processes.map((p) => `pid ${p.pid} (${p.command}: ${p.uses.join(', ')})`).join(', '));
  if (h.mounts.length > 0) parts.push(`mounted on it: ${h.mounts.join(', ')}`);
  return parts.join('; ');
}

/**
 * `err` as it is, unless it is EBUSY from unmounting `target`: then an error that names who holds
 * the mount (the same `code`, the original as its cause).
 */
export function explainBusy(target: string, err: unknown): unknown {
  if ((err as NodeJS.ErrnoException)?.code !== 'EBUSY') return err;
  const who = describeHolders(mountHolders(target));
  const e = new Error(
    `${target} is busy: ${who || 'no process or mount found holding it (another mount namespace?)'}`,
    { cause: err },
  ) as NodeJS.ErrnoException;
  e.code = 'EBUSY';
  return e;
}
