// Human-readable numbers for CLI output, and the sizes and mount points users type.
import fs from 'node:fs';
import path from 'node:path';
import { MAX_CHUNK_BITS, MIN_CHUNK_BITS } from '../erofs/format';
import { MAX_ZSTD_LEVEL, MIN_ZSTD_LEVEL } from '../blob/zstd-level';
import { InputError } from '../errors';

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[u]}`;
}

export function table(rows: ReadonlyArray<readonly string[]>): string {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows
    .map((r) => r.map((cell, c) => (c === rows[0].length - 1 ? cell : cell.padEnd(widths[c]))).join('  '))
    .join('\n');
}

/** Parses 4096, 64K, 1M, 1MiB into bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)\s*([kmg]?)(i?b)?$/i.exec(text.trim());
  if (!m) throw new Error(`cannot parse size ${JSON.stringify(text)}`);
  const scale = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Number(m[1]) * scale;
}

/** `--compression-level`: a whole number from MIN_ZSTD_LEVEL to MAX_ZSTD_LEVEL. */
export function zstdLevelOf(text: string): number {
  const level = /^\d+$/.test(text.trim()) ? Number(text) : NaN;
  if (!(level >= MIN_ZSTD_LEVEL && level <= MAX_ZSTD_LEVEL)) {
    throw new InputError(
      `compression level ${JSON.stringify(text)} must be a whole number from ${MIN_ZSTD_LEVEL} (fastest) to ${MAX_ZSTD_LEVEL} (smallest)`,
    );
  }
  return level;
}

export function chunkBitsOf(text: string): number {
  const size = parseSize(text);
  const bits = Math.log2(size);
  if (!Number.isInteger(bits) || bits < MIN_CHUNK_BITS || bits > MAX_CHUNK_BITS) {
    throw new InputError(`chunk size ${text} must be a power of two from 4 KiB to 64 MiB`);
  }
  return bits;
}

/**
 * A `<mount point or image>` argument (fsck, prefetch, trace show): a path (it starts with / or .,
 * or names a directory here) made absolute as `mount` makes its target; else an image reference.
 */
export function mountPointOrImage(arg: string): string {
  const isPath = /^[/.]/.test(arg) || fs.statSync(arg, { throwIfNoEntry: false })?.isDirectory();
  return isPath ? path.resolve(arg) : arg;
}
