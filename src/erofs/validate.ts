// The one walk of a bootstrap's tree, and the rules that make a bootstrap safe to hand to the kernel:
// only what writer.ts produces is accepted; every inode is reached as in a tree (a directory once,
// a non-directory as often as its nlink says); every offset, length, nid and chunk index lies inside
// the image, its device table and the devices; no two structures share bytes. `inspect` walks
// through here too, so a crafted image ends in an error, never in a loop.
//
// The walk is bounded by the image: each directory is expanded once, each structure's bytes are
// claimed before they are read and may be claimed once, so the work grows with the image's size.
import { displayPath } from '../tree/node';
import { dirBlocksEqual, grown, newDirColumns } from './dirent';
import {
  BLOCK_SIZE,
  BLOCK_SIZE_BITS,
  CHUNK_FORMAT_BLKBITS_MASK,
  CHUNK_FORMAT_INDEXES,
  CHUNK_INDEX_SIZE,
  COMPAT_SB_CHKSUM,
  DataLayout,
  DEVICE_SLOT_SIZE,
  DEVICE_TABLE_SLOTOFF,
  DirentType,
  EXTENDED_INODE_SIZE,
  INCOMPAT_CHUNKED_FILE,
  INCOMPAT_DEVICE_TABLE,
  INODE_SLOT_SIZE,
  MAX_CHUNK_BITS,
  MAX_NAME_LEN,
  MIN_CHUNK_BITS,
  NULL_ADDR,
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  S_IFSOCK,
  SUPERBLOCK_OFFSET,
  SUPERBLOCK_SIZE,
} from './format';
import { BootstrapError, BootstrapReader, type InodeInfo } from './reader';
import { deviceTableEnd, superblockChecksum } from './superblock';
import { decodeXattrName, prepareXattrs, readXattrArea, xattrAreaSize, XattrError } from './xattr';

/** A data blob the image is mounted with: device n of the table must be blob n. */
export interface ExpectedDevice {
  /** The blob id (64 hex characters): the device slot's tag. */
  id: string;
  /** Uncompressed size in bytes, when known: the slot's block count must match it. */
  size?: number;
}

export interface ValidateOptions {
  /** Names the bootstrap in errors. */
  what?: string;
  /** The blobs given with the image; when absent, only the device table's own consistency is checked. */
  devices?: readonly ExpectedDevice[];
}

export interface WalkEntry {
  /** The entry's path, '/' for the root (built on demand: most visitors need it rarely). */
  path(): Buffer;
  inode: InodeInfo;
  /** False for the second and later names of a hard-linked inode. */
  first: boolean;
  /** A regular file's chunk map on its first visit (null for a hole); empty otherwise. */
  chunks: ReadonlyArray<{ device: number; blkaddr: number } | null>;
}

export interface BootstrapSummary {
  reader: BootstrapReader;
  /** Distinct inodes reached. */
  inodes: number;
  /** Directory entries (hard links under each name, `.` and `..` not counted) plus the root. */
  entries: number;
}

const DOT = 0x2e;
const SLASH = Buffer.from('/');
const MAX_SYMLINK_LEN = 4095;
const ROOT_OWNER = -1;
const NO_CHUNKS: WalkEntry['chunks'] = Object.freeze([]);

/** The dirent type of a mode's file type; undefined for a mode that is no file type. */
function direntOf(mode: number): DirentType | undefined {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return DirentType.RegFile;
    case S_IFDIR:
      return DirentType.Dir;
    case S_IFCHR:
      return DirentType.CharDev;
    case S_IFBLK:
      return DirentType.BlockDev;
    case S_IFIFO:
      return DirentType.Fifo;
    case S_IFSOCK:
      return DirentType.Socket;
    case S_IFLNK:
      return DirentType.Symlink;
    default:
      return undefined;
  }
}

/** Whether writer.ts writes `layout` for this file type (and, for regular files, size). */
function layoutWritten(ifmt: number, size: number, layout: number): boolean {
  if (ifmt === S_IFREG) return layout === (size === 0 ? DataLayout.FlatPlain : DataLayout.ChunkBased);
  if (ifmt === S_IFDIR || ifmt === S_IFLNK) return layout === DataLayout.FlatPlain || layout === DataLayout.FlatInline;
  return layout === DataLayout.FlatPlain;
}

/**
 * The directory entries to visit, in columns: an object and a name Buffer per entry, each kept for
 * errors, were much of the walk's garbage. Entry e names inode nid[e] by image[nameStart[e], nameEnd[e])
 * in the directory of entry parent[e]; entry 0 is the root (type ROOT_TYPE, no name, its own parent).
 */
class Entries {
  size = 0;
  nid = new Float64Array(1024);
  type = new Int16Array(1024);
  nameStart = new Int32Array(1024);
  nameEnd = new Int32Array(1024);
  parent = new Int32Array(1024);

  add(nid: number, type: number, nameStart: number, nameEnd: number, parent: number): number {
    if (this.size === this.nid.length) {
      this.nid = grown(this.nid, this.size + 1);
      this.type = grown(this.type, this.size + 1);
      this.nameStart = grown(this.nameStart, this.size + 1);
      this.nameEnd = grown(this.nameEnd, this.size + 1);
      this.parent = grown(this.parent, this.size + 1);
    }
    const e = this.size++;
    this.nid[e] = nid;
    this.type[e] = type;
    this.nameStart[e] = nameStart;
    this.nameEnd[e] = nameEnd;
    this.parent[e] = parent;
    return e;
  }
}

const ROOT_TYPE = -1;

/** Thrown inside the walk for the inode at hand; the walk adds its nid and path. */
class Fault extends Error {}

function fault(message: string): never {
  throw new Fault(message);
}

/**
 * Checks `image` and walks its tree, calling `visit` for the root and then every directory entry,
 * parents before children and children in name order. Throws a BootstrapError naming the bootstrap,
 * and for faults in the tree the inode's nid and path, on the first fault.
 */
export function validateBootstrap(
  image: Buffer,
  opts: ValidateOptions = {},
  visit?: (entry: WalkEntry) => void,
): BootstrapSummary {
  const v = new Validator(image, opts);
  v.walk(Infinity, visit);
  return v.summary();
}

/** Steps of the walk between two looks at the clock. */
const STEPS_PER_CLOCK_READ = 64;

/**
 * validateBootstrap for a process that serves others meanwhile (the daemon): the walk gives the
 * event loop back every `sliceMs` of work, so that the misses of mounted images, the chunk tables
 * and responses under way are answered while a large bootstrap is checked. `image` must not change
 * until it resolves.
 */
export async function validateBootstrapInSlices(
  image: Buffer,
  opts: ValidateOptions = {},
  sliceMs = 4,
): Promise<BootstrapSummary> {
  const v = new Validator(image, opts);
  while (!v.walk(performance.now() + sliceMs)) await new Promise((resolve) => setImmediate(resolve));
  return v.summary();
}

class Validator {
  private readonly what: string;
  private readonly reader: BootstrapReader;
  /** Owner of each 32-byte slot of the image (nid + 1; ROOT_OWNER for block 0's headers; 0 free). */
  private readonly owner: Int32Array;
  // Inodes reached, by nid (typed arrays: an object per inode was much of the walk's garbage).
  /** 0: not reached yet; 1: a non-directory; 2: a directory. */
  private readonly reached: Uint8Array;
  private readonly links: Uint32Array;
  private readonly nlinks: Uint32Array;
  /** The entry by which each inode was first reached, for errors. */
  private readonly firstEntry: Int32Array;
  private readonly entryTable = new Entries();
  private readonly dirCols = newDirColumns();
  private readonly reachedNids: number[] = [];
  private chunkBits = -1;
  private entries = 0;

  constructor(
    private readonly image: Buffer,
    private readonly opts: ValidateOptions,
  ) {
    this.what = opts.what ?? 'bootstrap';
    this.reader = new BootstrapReader(image, this.what);
    this.owner = new Int32Array(Math.ceil(image.length / INODE_SLOT_SIZE));
    const slots = this.owner.length;
    this.reached = new Uint8Array(slots);
    this.links = new Uint32Array(slots);
    this.nlinks = new Uint32Array(slots);
    this.firstEntry = new Int32Array(slots);
  }

  private pathOf(entry: number): Buffer {
    const { nameStart, nameEnd, parent } = this.entryTable;
    const names: Buffer[] = [];
    for (let at = entry; at !== 0; at = parent[at]) names.push(this.image.subarray(nameStart[at], nameEnd[at]));
    if (names.length === 0) return SLASH;
    return Buffer.concat(names.reverse().flatMap((n) => [SLASH, n]));
  }

  private fail(message: string): never {
    throw new BootstrapError(message, { bootstrap: this.what });
  }

  /** Entries left to expand; null before the walk began. */
  private stack: number[] | null = null;

  /**
   * Walks on until the tree is done (true) or the clock passes `until` (false: call again to go on).
   * Throws on the first fault.
   */
  walk(until: number, visit?: (entry: WalkEntry) => void): boolean {
    if (!this.stack) {
      this.checkSuperblock();
      this.stack = [this.entryTable.add(this.reader.sb.rootNid, ROOT_TYPE, 0, 0, 0)];
    }
    const stack = this.stack;
    for (let steps = 1; stack.length > 0; steps++) {
      if (steps % STEPS_PER_CLOCK_READ === 0 && performance.now() > until) return false;
      const p = stack.pop()!;
      try {
        this.step(p, stack, visit);
      } catch (err) {
        if (err instanceof Fault || (err instanceof BootstrapError && err.context.path === undefined)) {
          const detail = err instanceof BootstrapError ? err.detail : err.message;
          const nid = this.entryTable.nid[p];
          throw new BootstrapError(detail, { bootstrap: this.what, nid, path: displayPath(this.pathOf(p)) });
        }
        throw err;
      }
    }
    return true;
  }

  /** After the walk: the checks of the whole tree, and what it amounts to. */
  summary(): BootstrapSummary {
    if (!this.stack || this.stack.length > 0) throw new Error(`${this.what}: summary asked before the walk ended`);
    for (const nid of this.reachedNids) {
      if (this.reached[nid] === 1 && this.links[nid] !== this.nlinks[nid]) {
        throw new BootstrapError(`nlink ${this.nlinks[nid]}, but ${this.links[nid]} directory entries name the inode`, {
          bootstrap: this.what,
          nid,
          path: displayPath(this.pathOf(this.firstEntry[nid])),
        });
      }
    }
    const inodes = this.reachedNids.length;
    if (this.reader.sb.inodeCount !== BigInt(inodes))
      this.fail(`superblock counts ${this.reader.sb.inodeCount} inodes, the tree has ${inodes}`);
    return { reader: this.reader, inodes, entries: this.entries };
  }

  private checkSuperblock(): void {
    const { image, reader } = this;
    const sb = image.subarray(SUPERBLOCK_OFFSET, SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE);
    if (image.length < BLOCK_SIZE || image.length % BLOCK_SIZE !== 0)
      this.fail(`size ${image.length} is not a whole number of ${BLOCK_SIZE}-byte blocks`);
    if (reader.sb.blocks * BLOCK_SIZE !== image.length)
      this.fail(`superblock counts ${reader.sb.blocks} blocks, the image has ${image.length / BLOCK_SIZE}`);
    if (sb.readUInt32LE(8) !== COMPAT_SB_CHKSUM)
      this.fail(`compatible features 0x${sb.readUInt32LE(8).toString(16)}, expected the checksum alone`);
    if (sb.readUInt32LE(4) !== superblockChecksum(image)) this.fail('superblock checksum does not match');
    if (sb[12] !== BLOCK_SIZE_BITS) this.fail(`block size 2^${sb[12]}, expected 2^${BLOCK_SIZE_BITS}`);
    if (sb[13] !== 0) this.fail('superblock extension slots are not supported');
    if (sb.readUInt32LE(40) !== 0 || sb.readUInt32LE(44) !== 0)
      this.fail('metadata or shared xattr area not at block 0: not written by this project');
    const count = reader.sb.devices.length;
    const incompat = INCOMPAT_CHUNKED_FILE | (count > 0 ? INCOMPAT_DEVICE_TABLE : 0);
    if (reader.sb.featureIncompat !== incompat)
      this.fail(
        `incompatible features 0x${reader.sb.featureIncompat.toString(16)}, expected 0x${incompat.toString(16)}`,
      );
    if (sb.readUInt16LE(88) !== (count > 0 ? DEVICE_TABLE_SLOTOFF : 0))
      this.fail(`device table at slot ${sb.readUInt16LE(88)}, expected ${DEVICE_TABLE_SLOTOFF}`);
    // Fields of features the writer does not use (compression, prefixes, packed inode, filters): all zero.
    if (sb.readUInt16LE(84) !== 0 || !isZero(sb, 90, SUPERBLOCK_SIZE)) this.fail('superblock sets unsupported fields');
    const tableEnd = deviceTableEnd(count);
    if (tableEnd > image.length) this.fail(`device table of ${count} slots runs past the end`);
    this.claim(0, tableEnd, ROOT_OWNER, 'superblock and device table');

    const expected = this.opts.devices;
    if (expected && expected.length !== count)
      this.fail(`device table names ${count} blobs, ${expected.length} given with the image`);
    reader.sb.devices.forEach((d, i) => {
      const slot = DEVICE_TABLE_SLOTOFF * DEVICE_SLOT_SIZE + i * DEVICE_SLOT_SIZE;
      const dev = `device ${i + 1}`;
      if (!/^[0-9a-f]{64}$/.test(d.tag)) this.fail(`${dev}: tag is not a 64-hex-character blob id`);
      if (d.mappedBlkaddr !== 0 || !isZero(image, slot + 72, slot + DEVICE_SLOT_SIZE))
        this.fail(`${dev}: mapped block address or reserved bytes set`);
      const want = expected?.[i];
      if (want && want.id !== d.tag) this.fail(`${dev} is blob ${d.tag}, the blob given there is ${want.id}`);
      if (want?.size !== undefined && d.blocks * BLOCK_SIZE !== want.size)
        this.fail(`${dev}: ${d.blocks} blocks, blob ${d.tag} has ${want.size} bytes`);
    });
  }

  /** Marks [start, end) as `nid`'s; bytes claimed twice are two structures sharing storage. */
  private claim(start: number, end: number, nid: number, what: string): void {
    this.reader.within(start, end - start, what);
    const from = Math.floor(start / INODE_SLOT_SIZE);
    const to = Math.ceil(end / INODE_SLOT_SIZE);
    for (let s = from; s < to; s++) {
      const other = this.owner[s];
      if (other !== 0) {
        const whose = other === ROOT_OWNER ? 'the superblock' : `inode nid ${other - 1}`;
        fault(`${what} at byte ${start} overlaps ${whose}`);
      }
      this.owner[s] = nid === ROOT_OWNER ? ROOT_OWNER : nid + 1;
    }
  }

  private step(p: number, stack: number[], visit?: (entry: WalkEntry) => void): void {
    this.entries++;
    const nid = this.entryTable.nid[p];
    const known = nid < this.reached.length ? this.reached[nid] : 0;
    if (known !== 0) {
      if (known === 2)
        fault(`directory reached a second time (first at ${displayPath(this.pathOf(this.firstEntry[nid]))})`);
      this.links[nid]++;
      const inode = this.reader.inode(nid);
      this.checkType(p, inode);
      visit?.({ path: () => this.pathOf(p), inode, first: false, chunks: NO_CHUNKS });
      return;
    }
    const inode = this.reader.inode(nid);
    const ifmt = inode.mode & S_IFMT;
    if (p === 0 && ifmt !== S_IFDIR) fault('the root is not a directory');
    this.checkType(p, inode);
    this.checkInodeFields(inode);
    this.reached[nid] = ifmt === S_IFDIR ? 2 : 1;
    this.links[nid] = 1;
    this.nlinks[nid] = inode.nlink;
    this.firstEntry[nid] = p;
    this.reachedNids.push(nid);

    const head = inode.bodyStart + inode.xattrSize;
    let chunks = NO_CHUNKS;
    if (ifmt === S_IFREG && inode.layout === DataLayout.ChunkBased) {
      const count = this.checkChunkFormat(inode);
      const indexAt = this.reader.chunkIndexesAt(inode);
      this.claim(inode.at, indexAt + count * CHUNK_INDEX_SIZE, nid, 'inode with its chunk index');
      this.checkChunks(inode, indexAt, count);
      if (visit) chunks = this.reader.chunks(inode);
    } else {
      const { tailLen, tailAt } = this.reader.extents(inode);
      this.claim(inode.at, head + tailLen, nid, 'inode');
      if (tailLen > 0 && Math.floor(tailAt / BLOCK_SIZE) !== Math.floor((tailAt + tailLen - 1) / BLOCK_SIZE))
        fault('inline data crosses a block boundary');
    }
    this.checkXattrs(inode);
    if (ifmt === S_IFDIR) this.expandDir(p, inode, stack);
    else if (ifmt === S_IFLNK) this.checkSymlink(nid, inode);
    visit?.({ path: () => this.pathOf(p), inode, first: true, chunks });
  }

  private checkType(p: number, inode: InodeInfo): void {
    const type = direntOf(inode.mode);
    if (type === undefined) fault(`mode 0${inode.mode.toString(8)} is not a file type`);
    const named = this.entryTable.type[p];
    if (named !== ROOT_TYPE && named !== type)
      fault(`directory entry says type ${named}, the inode's mode 0${inode.mode.toString(8)} says ${type}`);
  }

  /** Per file type, the layouts and field values writer.ts writes. */
  private checkInodeFields(inode: InodeInfo): void {
    const { image } = this;
    const { view } = this.reader;
    const ifmt = inode.mode & S_IFMT;
    if (inode.format & ~0xf) fault(`inode format 0x${inode.format.toString(16)} has unknown bits`);
    if (inode.extended) {
      if (view.getUint16(inode.at + 6, true) !== 0 || !isZero(image, inode.at + 48, inode.at + EXTENDED_INODE_SIZE))
        fault('extended inode has reserved fields set');
      if (view.getUint32(inode.at + 40, true) >= 1e9) fault('mtime nanoseconds out of range');
      if (!Number.isSafeInteger(inode.size)) fault(`size ${inode.size} is not representable`);
    } else if (view.getUint32(inode.at + 12, true) !== 0 || view.getUint32(inode.at + 28, true) !== 0) {
      fault('compact inode has reserved fields set');
    }
    if (!layoutWritten(ifmt, inode.size, inode.layout))
      fault(`data layout ${inode.layout} not written for this file type and size`);
    if (ifmt === S_IFCHR || ifmt === S_IFBLK || ifmt === S_IFIFO || ifmt === S_IFSOCK) {
      if (inode.size !== 0) fault(`special file has size ${inode.size}`);
      if ((ifmt === S_IFIFO || ifmt === S_IFSOCK) && inode.iU !== 0) fault('fifo or socket has a device number');
    }
    if (ifmt === S_IFREG && inode.size === 0 && inode.iU !== 0) fault('empty file has a block address');
    if (inode.layout === DataLayout.FlatInline && inode.size % BLOCK_SIZE === 0)
      fault('inline layout without an inline tail');
    if (ifmt === S_IFDIR && inode.size === 0) fault('directory of size 0 (it has no `.` and `..`)');
    if (inode.layout === DataLayout.FlatInline && inode.size < BLOCK_SIZE && inode.iU !== NULL_ADDR)
      fault('inline data without whole blocks has a block address');
  }

  /** Chunk count for the file's size; the chunk format is the writer's (indexes, one size for the image). */
  private checkChunkFormat(inode: InodeInfo): number {
    const bits = (inode.iU & CHUNK_FORMAT_BLKBITS_MASK) + BLOCK_SIZE_BITS;
    if ((inode.iU & ~(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES)) !== 0 || !(inode.iU & CHUNK_FORMAT_INDEXES))
      fault(`chunk format 0x${inode.iU.toString(16)} is not an index of 8-byte entries`);
    if (bits < MIN_CHUNK_BITS || bits > MAX_CHUNK_BITS) fault(`chunk size 2^${bits} outside 4 KiB..64 MiB`);
    if (this.chunkBits !== -1 && bits !== this.chunkBits)
      fault(`chunk size 2^${bits}, other files use 2^${this.chunkBits}`);
    this.chunkBits = bits;
    return Math.ceil(inode.size / this.reader.chunkSize(inode));
  }

  /** The `count` chunk indexes at `indexAt` (claimed already), read in place: no object per chunk. */
  private checkChunks(inode: InodeInfo, indexAt: number, count: number): void {
    const { view } = this.reader;
    const devices = this.reader.sb.devices;
    const chunkSize = this.reader.chunkSize(inode);
    for (let k = 0, at = indexAt; k < count; k++, at += CHUNK_INDEX_SIZE) {
      const advise = view.getUint16(at, true);
      const device = view.getUint16(at + 2, true);
      const blkaddr = view.getUint32(at + 4, true);
      if (advise !== 0) fault(`chunk ${k} has advise bits 0x${advise.toString(16)}`);
      if (blkaddr === NULL_ADDR) {
        if (device !== 0) fault(`chunk ${k} is a hole on device ${device}`);
        continue;
      }
      if (device < 1 || device > devices.length)
        fault(`chunk ${k} names device ${device}, the device table has ${devices.length}`);
      const blocks = Math.ceil(Math.min(chunkSize, inode.size - k * chunkSize) / BLOCK_SIZE);
      const dev = devices[device - 1];
      if (blkaddr + blocks > dev.blocks)
        fault(`chunk ${k} at block ${blkaddr} (+${blocks}) lies beyond device ${device}'s ${dev.blocks} blocks`);
    }
  }

  private checkXattrs(inode: InodeInfo): void {
    if (inode.xattrSize === 0) return;
    try {
      const entries = readXattrArea(this.image, inode.bodyStart, inode.xattrSize);
      const canonical = prepareXattrs(entries.map((e) => ({ name: decodeXattrName(e), value: e.value })));
      const same = canonical.every((c, i) => c.index === entries[i].index && c.suffix.equals(entries[i].suffix));
      if (!same) fault('xattrs are not in the order the writer sorts them');
      if (xattrAreaSize(canonical) !== inode.xattrSize) fault('xattr area is not the size its entries take');
    } catch (err) {
      if (err instanceof XattrError) fault(err.message);
      throw err;
    }
  }

  private checkSymlink(nid: number, inode: InodeInfo): void {
    if (inode.size === 0 || inode.size > MAX_SYMLINK_LEN)
      fault(`symlink target of ${inode.size} bytes (1..${MAX_SYMLINK_LEN} allowed)`);
    this.claimBlocks(nid, inode);
    if (this.reader.data(inode).includes(0)) fault('symlink target contains a NUL byte');
  }

  private claimBlocks(nid: number, inode: InodeInfo): void {
    const { blocksAt, blocksLen } = this.reader.extents(inode);
    if (blocksLen > 0) this.claim(blocksAt, blocksAt + blocksLen, nid, 'data blocks');
    else if (inode.layout === DataLayout.FlatPlain && inode.iU !== 0) fault('no data blocks, yet a block address');
  }

  private expandDir(p: number, inode: InodeInfo, stack: number[]): void {
    const nid = this.entryTable.nid[p];
    this.claimBlocks(nid, inode);
    const cols = this.reader.readDir(inode, this.dirCols);
    const { count, names, nameStart, nameEnd, nids, types } = cols;
    let dot = -1;
    let dotdot = -1;
    let subdirs = 0;
    for (let i = 0; i < count; i++) {
      const from = nameStart[i];
      const len = nameEnd[i] - from;
      if (i > 0 && compareNames(names, nameStart[i - 1], nameEnd[i - 1], from, nameEnd[i]) >= 0)
        fault(`entry "${displayPath(names.subarray(from, nameEnd[i]))}" is not in strictly ascending name order`);
      if (len === 1 && names[from] === DOT) dot = i;
      else if (len === 2 && names[from] === DOT && names[from + 1] === DOT) dotdot = i;
      else {
        checkName(names, from, nameEnd[i]);
        if (types[i] === DirentType.Dir) subdirs++;
      }
    }
    if (dot === -1 || nids[dot] !== nid || types[dot] !== DirentType.Dir)
      fault('`.` is missing or does not name the directory');
    if (
      dotdot === -1 ||
      nids[dotdot] !== this.entryTable.nid[this.entryTable.parent[p]] ||
      types[dotdot] !== DirentType.Dir
    )
      fault('`..` is missing or does not name the parent directory');
    // Byte for byte what the writer makes of these entries: packing, offsets, padding and size included.
    if (!dirBlocksEqual(cols, names)) fault('directory blocks are not laid out as the writer lays them out');
    if (inode.nlink !== 2 + subdirs) fault(`nlink ${inode.nlink}, expected ${2 + subdirs} (2 + subdirectories)`);
    // Names are kept as ranges of the image: a directory's data is its whole blocks, then its inline
    // tail, and no name crosses a block.
    const { blocksAt, blocksLen, tailAt } = this.reader.extents(inode);
    const inBlocks = Math.min(inode.size, blocksLen);
    const first = this.entryTable.size;
    for (let i = 0; i < count; i++) {
      if (i === dot || i === dotdot) continue;
      const at = nameStart[i] < inBlocks ? blocksAt + nameStart[i] : tailAt + nameStart[i] - inBlocks;
      this.entryTable.add(nids[i], types[i], at, at + nameEnd[i] - nameStart[i], p);
    }
    for (let e = this.entryTable.size - 1; e >= first; e--) stack.push(e);
  }
}

/** Bytewise order of two names held in `buf`, as Buffer.compare orders them. */
function compareNames(buf: Buffer, aFrom: number, aTo: number, bFrom: number, bTo: number): number {
  const aLen = aTo - aFrom;
  const bLen = bTo - bFrom;
  const n = aLen < bLen ? aLen : bLen;
  for (let k = 0; k < n; k++) {
    const d = buf[aFrom + k] - buf[bFrom + k];
    if (d !== 0) return d;
  }
  return aLen - bLen;
}

/** Names the kernel accepts and a path can hold: buf[from, to). */
function checkName(buf: Buffer, from: number, to: number): void {
  const len = to - from;
  const shown = () => `"${displayPath(buf.subarray(from, to))}"`;
  if (len === 0) fault('empty file name');
  if (len > MAX_NAME_LEN) fault(`file name ${shown()} of ${len} bytes exceeds ${MAX_NAME_LEN}`);
  let slash = false;
  let nul = false;
  for (let k = from; k < to; k++) {
    const c = buf[k];
    if (c === 0x2f) slash = true;
    else if (c === 0) nul = true;
  }
  if (slash) fault(`file name ${shown()} contains '/'`);
  if (nul) fault(`file name ${shown()} contains a NUL byte`);
}

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let k = from; k < to; k++) if (buf[k] !== 0) return false;
  return true;
}
