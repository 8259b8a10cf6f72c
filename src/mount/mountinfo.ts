// /proc/self/mountinfo, parsed: what is mounted where (mount points unescaped).
import fs from 'node:fs';

export interface MountEntry {
  /** major:minor of the mounted filesystem. */
  dev: string;
  target: string;
  fstype: string;
  source: string;
  /** The filesystem's own options (an overlay's lowerdir=...), as mountinfo shows them: see `unescape`. */
  options: string;
}

/** mountinfo escapes space, tab, newline and backslash as \ooo (and commas in options). */
export function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function mounts(): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    if (!line) continue;
    const [left, right] = line.split(' - ');
    const f = left.split(' ');
    const r = (right ?? '').split(' ');
    out.push({ dev: f[2], target: unescape(f[4]), fstype: r[0], source: unescape(r[1] ?? ''), options: r[2] ?? '' });
  }
  return out;
}
