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
 * Whether `data` is byte for byte what `encodeDirBlocks(entries)` makes, checked in place: validating
 * a bootstrap compares every directory, and encoding each one again was most of that walk's garbage.
 */
export function dirBlocksEqual(entries: readonly DirEntry[], data: Buffer): boolean {
  let i = 0;
  let base = 0;
  while (i < entries.length) {
    let count = 0;
    let used = 0;
    while (i + count < entries.length && used + DIRENT_SIZE + entries[i + count].name.length <= BLOCK_SIZE) {
      used += DIRENT_SIZE + entries[i + count].name.length;
      count++;
    }
    if (count === 0) return false; // a name longer than a block: the writer never makes one
    const last = i + count === entries.length;
    if (base + (last ? used : BLOCK_SIZE) !== (last ? data.length : Math.min(data.length, base + BLOCK_SIZE)))
      return false;
    let nameoff = count * DIRENT_SIZE;
    for (let k = 0; k < count; k++, i++) {
      const e = entries[i];
      const at = base + k * DIRENT_SIZE;
      if (
        data.readUInt32LE(at) !== e.nid % 2 ** 32 ||
        data.readUInt32LE(at + 4) !== Math.floor(e.nid / 2 ** 32) ||
        data.readUInt16LE(at + 8) !== nameoff ||
        data[at + 10] !== e.type ||
        data[at + 11] !== 0 ||
        e.name.compare(data, base + nameoff, base + nameoff + e.name.length) !== 0
      )
        return false;
      nameoff += e.name.length;
    }
    for (let k = base + used; k < base + BLOCK_SIZE && k < data.length; k++) if (data[k] !== 0) return false;
    base += BLOCK_SIZE;
  }
  return entries.length > 0 || data.length === 0;
}
