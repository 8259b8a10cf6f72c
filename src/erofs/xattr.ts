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
