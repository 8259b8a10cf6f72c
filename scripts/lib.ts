// Helpers shared by the benchmark and demo scripts.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { execCliSync } from '../test/lib/harness';

/** Runs an `erofs-ondemand` command to its end; its stdout. */
export function cli(...args: string[]): string {
  return execCliSync(args);
}

/** Cold-cache runs: write back dirty pages, then drop the page cache, dentries and inodes. */
export function dropCaches(): void {
  execFileSync('sync');
  fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
}

let clockTicks: number | undefined;

function statTimes(pid: number | 'self'): number[] {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name, from field 3 (state): utime, stime, cutime, cstime are 14-17.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  return fields.slice(11, 15).map((f) => Number(f) / clockTicks!);
}

/** CPU seconds (user + system) a running process has used so far. */
export function processCpuSeconds(pid: number): number {
  const [utime, stime] = statTimes(pid);
  return utime + stime;
}

/** CPU seconds (user + system) of this process's children that have ended and been waited for. */
export function childrenCpuSeconds(): number {
  const [, , cutime, cstime] = statTimes('self');
  return cutime + cstime;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Seconds from `t0` to `t` (now by default), both from `process.hrtime.bigint()`. */
export function secondsSince(t0: bigint, t = process.hrtime.bigint()): number {
  return Number(t - t0) / 1e9;
}

/** Runs `fn` and returns its result with the wall time it took, in seconds. */
export function timed<T>(fn: () => T): [T, number] {
  const t0 = process.hrtime.bigint();
  const r = fn();
  return [r, secondsSince(t0)];
}

/** A table with the first column left-aligned and the others right-aligned (numbers). */
export function numberTable(rows: ReadonlyArray<readonly string[]>): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows
    .map((r) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  '))
    .join('\n');
}
