// `erofs-ondemand inspect IMAGE-REF|BOOTSTRAP`: the tree a bootstrap describes, with file, chunk and
// deduplication statistics. A registry reference is resolved like `mount` does (referrers included).
import fs from 'node:fs';
import { registriesFromFlags, type RegistryFlags } from '../config';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../erofs/format';
import { validateBootstrap, type ExpectedDevice } from '../erofs/validate';
import { readAll } from '../oci/image-io';
import { expectedDevice, findLazyImage } from '../daemon/image-store';
import { closeRegistryClients, type OpenOptions } from '../oci/open-image';
import { displayPath } from '../tree/node';
import { bytes, table } from './format';

export interface InspectReport {
  source: string;
  bootstrapBytes: number;
  devices: string[];
  entries: number;
  inodes: Record<string, number>;
  fileBytes: number;
  chunks: { referenced: number; unique: number; holes: number; dedupRatio: number };
  tree?: Array<{ path: string; mode: string; size: number }>;
}

/** The bootstrap, and for a lazy image the blobs its manifest gives (a local file has no such list). */
async function loadBootstrap(ref: string, opts: OpenOptions): Promise<{ image: Buffer; devices?: ExpectedDevice[] }> {
  if (fs.existsSync(ref)) return { image: fs.readFileSync(ref) };
  const { client, repo, manifest } = await findLazyImage(ref, opts);
  const [boot, ...blobs] = manifest.layers;
  return { image: await client.readBlob(repo, boot.digest, boot.size, readAll), devices: blobs.map(expectedDevice) };
}

const TYPES: Record<number, string> = {
  [S_IFREG]: 'file',
  [S_IFDIR]: 'dir',
  [S_IFLNK]: 'symlink',
  [S_IFCHR]: 'chardev',
  [S_IFBLK]: 'blockdev',
  [S_IFIFO]: 'fifo',
  [S_IFSOCK]: 'socket',
};

export function inspectBootstrap(image: Buffer, source: string, withTree: boolean): InspectReport {
  const inodes: Record<string, number> = {};
  const unique = new Set<string>();
  let fileBytes = 0;
  let referenced = 0;
  let holes = 0;
  const tree: InspectReport['tree'] = [];
  // The validator's walk: a bootstrap whose entries loop back ends in its error, not in a loop.
  const { reader, entries } = validateBootstrap(image, { what: source }, ({ path, inode, first, chunks }) => {
    const type = TYPES[inode.mode & S_IFMT] ?? 'unknown';
    if (withTree)
      tree.push({
        path: path().toString('utf8'),
        mode: (inode.mode & 0o7777).toString(8).padStart(4, '0'),
        size: inode.size,
      });
    if (!first) return;
    inodes[type] = (inodes[type] ?? 0) + 1;
    if (type !== 'file') return;
    fileBytes += inode.size;
    for (const c of chunks) {
      if (!c) holes++;
      else {
        referenced++;
        unique.add(`${c.device}:${c.blkaddr}`);
      }
    }
  });
  return {
    source,
    bootstrapBytes: image.length,
    devices: reader.sb.devices.map((d) => d.tag),
    entries,
    inodes,
    fileBytes,
    chunks: { referenced, unique: unique.size, holes, dedupRatio: unique.size === 0 ? 1 : referenced / unique.size },
    ...(withTree ? { tree } : {}),
  };
}

export async function inspectCommand(
  ref: string,
  opts: RegistryFlags & { json?: boolean; tree?: boolean; check?: boolean },
): Promise<void> {
  try {
    const { image, devices } = await loadBootstrap(ref, registriesFromFlags(opts));
    if (opts.check) {
      // A fault is thrown: the CLI prints it and exits 1.
      const { inodes, entries } = validateBootstrap(image, { what: ref, devices });
      process.stdout.write(`OK: ${inodes} inodes, ${entries} entries\n`);
      return;
    }
    const report = inspectBootstrap(image, ref, Boolean(opts.tree));
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      return;
    }
    // Names are the image author's bytes: escaped, so that they cannot drive the terminal or forge lines.
    if (report.tree)
      for (const t of report.tree)
        process.stdout.write(`${t.mode} ${String(t.size).padStart(12)} ${displayPath(Buffer.from(t.path))}\n`);
    const rows = [
      ['', 'value'],
      ['bootstrap', `${bytes(report.bootstrapBytes)} (${report.devices.length} blobs)`],
      ['entries', String(report.entries)],
      [
        'inodes',
        Object.entries(report.inodes)
          .map(([k, v]) => `${v} ${k}`)
          .join(', '),
      ],
      ['file data', bytes(report.fileBytes)],
      [
        'chunks',
        `${report.chunks.referenced} referenced, ${report.chunks.unique} distinct, ${report.chunks.holes} holes`,
      ],
      ['dedup ratio', `${report.chunks.dedupRatio.toFixed(3)}x`],
    ];
    process.stdout.write(`${table(rows)}\n`);
  } finally {
    await closeRegistryClients();
  }
}
