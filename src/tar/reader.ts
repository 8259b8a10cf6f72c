// A streaming tar reader (ustar, GNU long names, PAX) that keeps names, link targets and xattr values
// as raw bytes: general-purpose tar libraries decode PAX values as UTF-8, which corrupts binary xattrs
// such as security.capability and non-UTF-8 file names.
import { ByteReader, type SkippableSource } from './byte-reader';

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'chardev' | 'blockdev' | 'dir' | 'fifo';

export interface TarEntry {
  name: Buffer;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: bigint;
  mtimeNsec: number;
  linkname: Buffer;
  devmajor: number;
  devminor: number;
  xattrs: Array<{ name: Buffer; value: Buffer }>;
}

export class TarFormatError extends Error {}

const BLOCK = 512;
const ZERO_BLOCK = Buffer.alloc(BLOCK);
const NO_PAX: ReadonlyMap<string, Buffer> = new Map();
const USTAR_MAGIC = Buffer.from('ustar\0', 'latin1');
const ENTRY_TYPES: Readonly<Record<string, TarEntryType | undefined>> = {
  '0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'chardev',
  '4': 'blockdev',
  '5': 'dir',
  '6': 'fifo',
};

function field(h: Buffer, off: number, len: number): Buffer {
  const raw = h.subarray(off, off + len);
  const nul = raw.indexOf(0);
  return nul === -1 ? raw : raw.subarray(0, nul);
}

/** Octal ASCII, or base-256 (GNU) when the high bit of the first byte is set. */
function numeric(h: Buffer, off: number, len: number, what: string): number {
  if (h[off] & 0x80) {
    let v = BigInt(h[off] & 0x7f) - (h[off] & 0x40 ? 0x80n : 0n);
    for (let i = 1; i < len; i++) v = (v << 8n) | BigInt(h[off + i]);
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER))
      throw new TarFormatError(`${what} out of range`);
    return Number(v);
  }
  // Octal digits, optionally padded with spaces before and NULs or spaces after. Read byte by byte:
  // six fields per header, thousands of headers per layer.
  const end = off + len;
  let i = off;
  while (i < end && h[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < end && h[i] >= 0x30 && h[i] <= 0x37; i++, digits++) v = v * 8 + (h[i] - 0x30);
  for (; i < end; i++) {
    if (h[i] !== 0 && h[i] !== 0x20) {
      const text = h
        .toString('latin1', off, end)
        .replace(/[\0 ]+$/, '')
        .trim();
      throw new TarFormatError(`${what} field is not octal: ${JSON.stringify(text)}`);
    }
  }
  if (digits > 17) throw new TarFormatError(`${what} out of range`);
  return v;
}

function checksumOk(h: Buffer): boolean {
  const stored = numeric(h, 148, 8, 'checksum');
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : h[i];
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return stored === unsigned || stored === signed;
}

function parseTime(text: string, what: string): { sec: bigint; nsec: number } {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!m) throw new TarFormatError(`${what} ${JSON.stringify(text)} is not a time`);
  const frac = Number((m[3] ?? '').padEnd(9, '0').slice(0, 9));
  let sec = BigInt(m[2]);
  let nsec = frac;
  if (m[1] === '-') {
    sec = -sec;
    if (nsec > 0) {
      sec -= 1n;
      nsec = 1e9 - nsec;
    }
  }
  return { sec, nsec };
}

/**
 * A numeric PAX value (size, uid, gid, device numbers, a record's length): decimal digits only, as GNU
 * tar and Go's archive/tar read them. `Number()` would also take `0x10`, `1e1` or ` 16`: a reader
 * that sees another size than the scanners do could hide content from them.
 */
function paxDecimal(text: string, what: string): number {
  const v = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(v)) throw new TarFormatError(`${what} ${JSON.stringify(text)} is not a decimal number`);
  return v;
}

interface Pax {
  records: Map<string, Buffer>;
}

function parsePax(data: Buffer): Pax {
  const records = new Map<string, Buffer>();
  let pos = 0;
  while (pos < data.length) {
    if (data[pos] === 0) break;
    const space = data.indexOf(0x20, pos);
    if (space === -1) throw new TarFormatError('PAX record without a length');
    const len = paxDecimal(data.subarray(pos, space).toString('latin1'), 'PAX record length');
    if (len <= space - pos + 1 || pos + len > data.length) throw new TarFormatError('PAX record length is wrong');
    const record = data.subarray(space + 1, pos + len);
    if (record[record.length - 1] !== 0x0a) throw new TarFormatError('PAX record does not end in a newline');
    const eq = record.indexOf(0x3d);
    if (eq === -1) throw new TarFormatError('PAX record without =');
    records.set(record.subarray(0, eq).toString('utf8'), record.subarray(eq + 1, record.length - 1));
    pos += len;
  }
  return { records };
}

/** PAX and GNU long-name bodies held at once: an entry's own and every global PAX header so far. */
const METADATA_BYTES = 16 << 20;

export class TarReader {
  private readonly in: ByteReader;
  private remaining = 0;
  private padding = 0;
  private globalPax = new Map<string, Buffer>();
  private globalPaxBytes = 0;
  private done = false;

  /** Bodies not read are skipped: by position where the source can (see SkippableSource), else read through. */
  constructor(source: SkippableSource) {
    this.in = new ByteReader(source);
  }

  /** Next entry, or null at the end of the archive. Any unread body of the previous entry is skipped. */
  async next(): Promise<TarEntry | null> {
    if (this.done) return null;
    await this.in.skip(this.remaining + this.padding);
    this.remaining = 0;
    this.padding = 0;
    let longName: Buffer | null = null;
    let longLink: Buffer | null = null;
    let pax: Map<string, Buffer> | null = null;
    let metadataBytes = this.globalPaxBytes;
    for (;;) {
      const block = await this.in.readExact(BLOCK, true);
      if (block === null) throw new TarFormatError('archive ends without its end-of-archive blocks (truncated)');
      // Names, link targets and PAX values are subarrays of the header and metadata bodies, and the tree
      // keeps them: copies, so that they do not pin the whole decompressed chunk they came from.
      const h = Buffer.from(block);
      if (h.equals(ZERO_BLOCK)) {
        this.done = true;
        return null;
      }
      if (!checksumOk(h)) throw new TarFormatError('header checksum mismatch (corrupt archive)');
      const typeflag = String.fromCharCode(h[156] || 0x30);
      const size = numeric(h, 124, 12, 'size');
      const padded = Math.ceil(size / BLOCK) * BLOCK;
      if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
        metadataBytes += size;
        if (metadataBytes > METADATA_BYTES)
          throw new TarFormatError(`metadata entries of ${metadataBytes} bytes for one entry are too large`);
        if (typeflag === 'g') this.globalPaxBytes += size;
        const body = Buffer.from((await this.in.readExact(padded))!.subarray(0, size));
        if (typeflag === 'x') pax = new Map([...(pax ?? []), ...parsePax(body).records]);
        else if (typeflag === 'g') this.globalPax = new Map([...this.globalPax, ...parsePax(body).records]);
        else if (typeflag === 'L') longName = field(body, 0, body.length);
        else longLink = field(body, 0, body.length);
        continue;
      }
      const records = this.globalPax.size === 0 ? (pax ?? NO_PAX) : new Map([...this.globalPax, ...(pax ?? [])]);
      const entry = this.entryOf(h, typeflag, size, longName, longLink, records);
      this.remaining = entry.type === 'file' ? entry.size : size;
      this.padding = (entry.type === 'file' ? Math.ceil(entry.size / BLOCK) * BLOCK : padded) - this.remaining;
      return entry;
    }
  }

  /** Offset in the archive of the current entry's next unread body byte. */
  get bodyOffset(): number {
    return this.in.position;
  }

  /** Reads the next `n` bytes of the current entry's body (at most what is left). */
  /** The next (up to) `n` bytes of the current entry's body, as the pieces of input they are in: not copied. */
  async readBody(n: number): Promise<Buffer[]> {
    const len = Math.min(n, this.remaining);
    const parts = await this.in.readParts(len);
    this.remaining -= len;
    return parts;
  }

  private entryOf(
    h: Buffer,
    typeflag: string,
    size: number,
    longName: Buffer | null,
    longLink: Buffer | null,
    pax: ReadonlyMap<string, Buffer>,
  ): TarEntry {
    const ustar = h.compare(USTAR_MAGIC, 0, USTAR_MAGIC.length, 257, 263) === 0;
    let name = longName ?? field(h, 0, 100);
    if (!longName && ustar) {
      const prefix = field(h, 345, 155);
      if (prefix.length > 0) name = Buffer.concat([prefix, Buffer.from('/'), name]);
    }
    let linkname = longLink ?? field(h, 157, 100);
    let mtime = { sec: BigInt(numeric(h, 136, 12, 'mtime')), nsec: 0 };
    let uid = numeric(h, 108, 8, 'uid');
    let gid = numeric(h, 116, 8, 'gid');
    let devmajor = numeric(h, 329, 8, 'devmajor');
    let devminor = numeric(h, 337, 8, 'devminor');
    const xattrs: TarEntry['xattrs'] = [];
    for (const [key, value] of pax) {
      const text = () => value.toString('utf8');
      if (key === 'path') name = value;
      else if (key === 'linkpath') linkname = value;
      else if (key === 'size') size = paxDecimal(text(), 'PAX size');
      else if (key === 'uid') uid = paxDecimal(text(), 'PAX uid');
      else if (key === 'gid') gid = paxDecimal(text(), 'PAX gid');
      else if (key === 'mtime') mtime = parseTime(text(), 'PAX mtime');
      else if (key === 'SCHILY.devmajor') devmajor = paxDecimal(text(), 'PAX SCHILY.devmajor');
      else if (key === 'SCHILY.devminor') devminor = paxDecimal(text(), 'PAX SCHILY.devminor');
      else if (key.startsWith('SCHILY.xattr.'))
        xattrs.push({ name: Buffer.from(key.slice('SCHILY.xattr.'.length), 'utf8'), value });
      else if (key.startsWith('LIBARCHIVE.xattr.')) {
        xattrs.push({
          name: Buffer.from(decodeURIComponent(key.slice('LIBARCHIVE.xattr.'.length)), 'utf8'),
          value: Buffer.from(text(), 'base64'),
        });
      } else if (key.startsWith('GNU.sparse.'))
        throw new TarFormatError('sparse files (GNU.sparse PAX records) are not supported');
    }
    if (!Number.isSafeInteger(size) || size < 0) throw new TarFormatError(`entry size ${size} is invalid`);
    let type = ENTRY_TYPES[typeflag];
    if (typeflag === 'S') throw new TarFormatError('GNU sparse entries are not supported');
    if (!type) throw new TarFormatError(`unsupported entry type ${JSON.stringify(typeflag)}`);
    // Old tars mark directories only by a trailing slash on a regular-file entry.
    if (type === 'file' && name[name.length - 1] === 0x2f) type = 'dir';
    return {
      name,
      type,
      mode: numeric(h, 100, 8, 'mode') & 0o7777,
      uid,
      gid,
      size: type === 'file' ? size : 0,
      mtimeSec: mtime.sec,
      mtimeNsec: mtime.nsec,
      linkname,
      devmajor,
      devminor,
      xattrs,
    };
  }
}
