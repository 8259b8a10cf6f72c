import { XATTR_ENTRY_HEADER_SIZE, XATTR_HEADER_SIZE, XATTR_PREFIXES } from './format';
import type { Xattr } from '../tree/node';

export interface EncodedXattr {
  index: number;
  suffix: Buffer;
  value: Buffer;
}

export class XattrError extends Error {}

function align4(n: number): number {
  return (n + 3) & ~3;
}

export function encodeXattrName(name: Buffer): { index: number; suffix: Buffer } {
  const text = name.toString('latin1');
  for (const p of XATTR_PREFIXES) {
    if (p.exact ? text === p.prefix : text.startsWith(p.prefix) && text.length > p.prefix.length) {
      return { index: p.index, suffix: name.subarray(p.prefix.length) };
    }
  }
  throw new XattrError(
    `xattr ${JSON.stringify(text)}: namespace not supported (user., trusted., security., POSIX ACLs)`,
  );
}

/** Validated, sorted entries: sorted so the same set always encodes to the same bytes. */
export function prepareXattrs(xattrs: readonly Xattr[]): EncodedXattr[] {
  const out = xattrs.map((x) => {
    const { index, suffix } = encodeXattrName(x.name);
    if (suffix.length > 255)
      throw new XattrError(`xattr ${JSON.stringify(x.name.toString('latin1'))}: name longer than 255 bytes`);
    if (x.value.length > 0xffff) {
      throw new XattrError(
        `xattr ${JSON.stringify(x.name.toString('latin1'))}: value of ${x.value.length} bytes exceeds 65535`,
      );
    }
    return { index, suffix, value: x.value };
  });
  out.sort((a, b) => a.index - b.index || Buffer.compare(a.suffix, b.suffix));
  for (let i = 1; i < out.length; i++) {
    if (out[i].index === out[i - 1].index && out[i].suffix.equals(out[i - 1].suffix)) {
      throw new XattrError(`xattr ${JSON.stringify(out[i].suffix.toString('latin1'))} given twice`);
    }
  }
  return out;
}

/** Size of the inline xattr area (0 when there are none). */
export function xattrAreaSize(entries: readonly EncodedXattr[]): number {
  if (entries.length === 0) return 0;
  let size = XATTR_HEADER_SIZE;
  for (const e of entries) size += align4(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length);
  return size;
}

/** i_xattr_icount for an area of `size` bytes: size = 12 + 4 * (icount - 1). */
export function xattrICount(size: number): number {
  return size === 0 ? 0 : (size - XATTR_HEADER_SIZE) / 4 + 1;
}

export function writeXattrArea(out: Buffer, offset: number, entries: readonly EncodedXattr[]): void {
  if (entries.length === 0) return;
  // Header: name filter 0 (no filter feature), no shared xattrs.
  out.fill(0, offset, offset + XATTR_HEADER_SIZE);
  let pos = offset + XATTR_HEADER_SIZE;
  for (const e of entries) {
    out.writeUInt8(e.suffix.length, pos);
    out.writeUInt8(e.index, pos + 1);
    out.writeUInt16LE(e.value.length, pos + 2);
    e.suffix.copy(out, pos + 4);
    e.value.copy(out, pos + 4 + e.suffix.length);
    pos += align4(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length);
  }
}

/** The full name an entry stands for (prefix of its index, then the suffix). */
export function decodeXattrName(e: { index: number; suffix: Buffer }): Buffer {
  const p = XATTR_PREFIXES.find((x) => x.index === e.index);
  if (!p) throw new XattrError(`xattr name index ${e.index} is not one this project writes`);
  if (p.exact && e.suffix.length > 0) throw new XattrError(`xattr ${p.prefix} has a name suffix`);
  return Buffer.concat([Buffer.from(p.prefix, 'latin1'), e.suffix]);
}

/**
 * Reads an inline xattr area as writeXattrArea lays it out: a zero header (no name filter, no shared
 * xattrs) and entries that fill it exactly. `out` must hold [offset, offset + size).
 */
export function readXattrArea(out: Buffer, offset: number, size: number): EncodedXattr[] {
  if (size === 0) return [];
  if (size < XATTR_HEADER_SIZE) throw new XattrError(`xattr area of ${size} bytes is shorter than its header`);
  const end = offset + size;
  for (let k = offset; k < offset + XATTR_HEADER_SIZE; k++)
    if (out[k] !== 0) throw new XattrError('xattr header has a name filter or shared xattrs');
  const entries: EncodedXattr[] = [];
  let pos = offset + XATTR_HEADER_SIZE;
  while (pos < end) {
    if (pos + XATTR_ENTRY_HEADER_SIZE > end) throw new XattrError('xattr entry header runs past the area');
    const nameLen = out[pos];
    const index = out[pos + 1];
    const valueLen = out.readUInt16LE(pos + 2);
    const next = pos + align4(XATTR_ENTRY_HEADER_SIZE + nameLen + valueLen);
    if (next > end) throw new XattrError(`xattr entry of ${nameLen}+${valueLen} bytes runs past the area`);
    const suffix = out.subarray(pos + 4, pos + 4 + nameLen);
    entries.push({ index, suffix, value: out.subarray(pos + 4 + nameLen, pos + 4 + nameLen + valueLen) });
    pos = next;
  }
  if (entries.length === 0) throw new XattrError('xattr area holds no entry');
  return entries;
}
