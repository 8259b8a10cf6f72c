// Hand-made tar archives for tests that need entries no well-behaved tar tool writes
// (absolute names, '..', dangling hard links, binary PAX values).

export interface TestTarEntry {
  name: string | Buffer;
  type?: '0' | '1' | '2' | '3' | '4' | '5' | '6' | 'x';
  body?: Buffer | string;
  linkname?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  pax?: Record<string, Buffer | string>;
}

function octal(n: number, len: number): string {
  return n.toString(8).padStart(len - 1, '0') + '\0';
}

function header(e: TestTarEntry, size: number, type: string): Buffer {
  const h = Buffer.alloc(512);
  const name = Buffer.isBuffer(e.name) ? e.name : Buffer.from(e.name);
  name.copy(h, 0, 0, 100);
  h.write(octal(e.mode ?? 0o644, 8), 100, 'latin1');
  h.write(octal(e.uid ?? 0, 8), 108, 'latin1');
  h.write(octal(e.gid ?? 0, 8), 116, 'latin1');
  h.write(octal(size, 12), 124, 'latin1');
  h.write(octal(e.mtime ?? 1_600_000_000, 12), 136, 'latin1');
  h.write(type, 156, 'latin1');
  if (e.linkname) h.write(e.linkname, 157, 'utf8');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + ' ', 148, 'latin1');
  return h;
}

/** The header of a regular file of `size` bytes, for a body the caller streams (padded to 512 bytes) itself. */
export function fileHeader(name: string, size: number): Buffer {
  return header({ name }, size, '0');
}

/** A PAX ('x', 'g') or GNU long name/link ('L', 'K') entry on its own, as many of them may precede one entry. */
export function metadataEntry(type: 'x' | 'g' | 'L' | 'K', body: Buffer): Buffer {
  return Buffer.concat([header({ name: 'meta' }, body.length, type), padded(body)]);
}

function padded(body: Buffer): Buffer {
  return Buffer.concat([body, Buffer.alloc((512 - (body.length % 512)) % 512)]);
}

function paxRecords(pax: Record<string, Buffer | string>): Buffer {
  const out: Buffer[] = [];
  for (const [k, v] of Object.entries(pax)) {
    const value = Buffer.isBuffer(v) ? v : Buffer.from(v);
    const rest = Buffer.concat([Buffer.from(` ${k}=`), value, Buffer.from('\n')]);
    let len = rest.length + 1;
    while (String(len).length + rest.length !== len) len = String(len).length + rest.length;
    out.push(Buffer.from(String(len)), rest);
  }
  return Buffer.concat(out);
}

export function makeTar(entries: readonly TestTarEntry[], opts: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    if (e.pax) {
      const body = paxRecords(e.pax);
      parts.push(header({ name: 'PaxHeader' }, body.length, 'x'), padded(body));
    }
    const body = Buffer.isBuffer(e.body) ? e.body : Buffer.from(e.body ?? '');
    const type = e.type ?? '0';
    parts.push(header(e, type === '0' ? body.length : 0, type));
    if (type === '0') parts.push(padded(body));
  }
  if (opts.end !== false) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}
