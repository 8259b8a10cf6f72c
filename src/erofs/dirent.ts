import { BLOCK_SIZE, DIRENT_SIZE, DirentType } from './format';

export interface DirEntry {
  name: Buffer;
  nid: number;
  type: DirentType;
}

/** Packs name lengths into blocks: returns how many entries each block holds. Entries never span blocks. */
export function packDirBlocks(nameLengths: readonly number[]): number[] {
  const counts: number[] = [];
  let used = 0;
  let count = 0;
  for (const len of nameLengths) {
    const need = DIRENT_SIZE + len;
    if (used + need > BLOCK_SIZE) {
      counts.push(count);
      used = 0;
      count = 0;
    }
    used += need;
    count++;
  }
  if (count > 0) counts.push(count);
  return counts;
}

/** Directory i_size: every block but the last counts in full, the last by the bytes it uses. */
export function dirDataSize(nameLengths: readonly number[]): number {
  const counts = packDirBlocks(nameLengths);
  let i = 0;
  let size = 0;
  counts.forEach((count, block) => {
    let used = 0;
    for (let k = 0; k < count; k++) used += DIRENT_SIZE + nameLengths[i++];
    size = block < counts.length - 1 ? size + BLOCK_SIZE : size + used;
  });
  return size;
}

/** Encodes entries, which must already be sorted bytewise by name (`.` and `..` included). */
export function encodeDirBlocks(entries: readonly DirEntry[]): Buffer {
  const counts = packDirBlocks(entries.map((e) => e.name.length));
  const size = dirDataSize(entries.map((e) => e.name.length));
  const out = Buffer.alloc(size);
  let i = 0;
  counts.forEach((count, block) => {
    const base = block * BLOCK_SIZE;
    let nameoff = count * DIRENT_SIZE;
    for (let k = 0; k < count; k++, i++) {
      const e = entries[i];
      const at = base + k * DIRENT_SIZE;
      // Two 32-bit halves: a BigInt per entry was a visible part of writing and validating directories.
      out.writeUInt32LE(e.nid % 2 ** 32, at);
      out.writeUInt32LE(Math.floor(e.nid / 2 ** 32), at + 4);
      out.writeUInt16LE(nameoff, at + 8);
      out.writeUInt8(e.type, at + 10);
      e.name.copy(out, base + nameoff);
      nameoff += e.name.length;
    }
  });
  return out;
}

/**
 * A directory's entries in columns, names as ranges of one buffer: reading a bootstrap's directories
 * made an object and a Buffer per entry, most of that walk's garbage. Entry i is named
 * names[nameStart[i], nameEnd[i]).
 */
export interface DirColumns {
  count: number;
  names: Buffer;
  nameStart: Int32Array;
  nameEnd: Int32Array;
  nids: Float64Array;
  types: Uint8Array;
}

/** Empty columns with room for `capacity` entries. */
export function newDirColumns(capacity = 64): DirColumns {
  return {
    count: 0,
    names: Buffer.alloc(0),
    nameStart: new Int32Array(capacity),
    nameEnd: new Int32Array(capacity),
    nids: new Float64Array(capacity),
    types: new Uint8Array(capacity),
  };
}

/** A copy of `a` with room for at least `length` elements (doubling). */
export function grown<T extends Int16Array | Int32Array | Float64Array | Uint8Array>(a: T, length: number): T {
  const b = new (a.constructor as new (n: number) => T)(Math.max(2 * a.length, length));
  b.set(a);
  return b;
}

/** Makes room for entry `index` (the columns grow by doubling, entries kept). */
export function reserveDirColumns(cols: DirColumns, index: number): void {
  if (index < cols.nids.length) return;
  cols.nameStart = grown(cols.nameStart, index + 1);
  cols.nameEnd = grown(cols.nameEnd, index + 1);
  cols.nids = grown(cols.nids, index + 1);
  cols.types = grown(cols.types, index + 1);
}

/** The columns of `entries`, their names copied into one buffer. */
export function dirColumns(entries: readonly DirEntry[]): DirColumns {
  const cols = newDirColumns(Math.max(1, entries.length));
  cols.names = Buffer.concat(entries.map((e) => e.name));
  let at = 0;
  entries.forEach((e, i) => {
    cols.nameStart[i] = at;
    at += e.name.length;
    cols.nameEnd[i] = at;
    cols.nids[i] = e.nid;
    cols.types[i] = e.type;
  });
  cols.count = entries.length;
  return cols;
}

/**
 * Whether `data` is byte for byte what `encodeDirBlocks` makes of the entries, checked in place:
 * validating a bootstrap compares every directory, and encoding each one again was most of that walk's
 * garbage.
 */
export function dirBlocksEqual(cols: DirColumns, data: Buffer): boolean {
  const { count: total, names, nameStart, nameEnd, nids, types } = cols;
  let i = 0;
  let base = 0;
  while (i < total) {
    let count = 0;
    let used = 0;
    while (i + count < total && used + DIRENT_SIZE + (nameEnd[i + count] - nameStart[i + count]) <= BLOCK_SIZE) {
      used += DIRENT_SIZE + (nameEnd[i + count] - nameStart[i + count]);
      count++;
    }
    if (count === 0) return false; // a name longer than a block: the writer never makes one
    const last = i + count === total;
    if (base + (last ? used : BLOCK_SIZE) !== (last ? data.length : Math.min(data.length, base + BLOCK_SIZE)))
      return false;
    let nameoff = count * DIRENT_SIZE;
    for (let k = 0; k < count; k++, i++) {
      const at = base + k * DIRENT_SIZE;
      const nid = nids[i];
      const from = nameStart[i];
      const len = nameEnd[i] - from;
      if (
        le32(data, at) !== nid % 2 ** 32 ||
        le32(data, at + 4) !== Math.floor(nid / 2 ** 32) ||
        (data[at + 8] | (data[at + 9] << 8)) !== nameoff ||
        data[at + 10] !== types[i] ||
        data[at + 11] !== 0
      )
        return false;
      const to = base + nameoff;
      for (let b = 0; b < len; b++) if (data[to + b] !== names[from + b]) return false;
      nameoff += len;
    }
    for (let k = base + used; k < base + BLOCK_SIZE && k < data.length; k++) if (data[k] !== 0) return false;
    base += BLOCK_SIZE;
  }
  return total > 0 || data.length === 0;
}

/** The little-endian u32 at `at` (which the caller knows to lie inside `buf`). */
function le32(buf: Uint8Array, at: number): number {
  return (buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16)) + buf[at + 3] * 2 ** 24;
}
