// `erofs-ondemand inspect IMAGE-REF|BOOTSTRAP`: the tree a bootstrap describes, with file, chunk and
// deduplication statistics. A registry reference is resolved like `mount` does (referrers included).
import fs from 'node:fs';
import { registriesFromFlags, type RegistryFlags } from '../config';
import { S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK } from '../erofs/format';
import { BootstrapReader } from '../erofs/reader';
import { readAll } from '../oci/image-io';
import { findLazyImage } from '../daemon/image-store';
import { closeRegistryClients, type OpenOptions } from '../oci/open-image';
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

async function loadBootstrap(ref: string, opts: OpenOptions): Promise<Buffer> {
  if (fs.existsSync(ref)) return fs.readFileSync(ref);
  const { client, repo, manifest } = await findLazyImage(ref, opts);
  const boot = manifest.layers[0];
  return client.readBlob(repo, boot.digest, boot.size, readAll);
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
  const r = new BootstrapReader(image, source);
  const seen = new Set<number>();
  const inodes: Record<string, number> = {};
  const unique = new Set<string>();
  let entries = 0;
  let fileBytes = 0;
  let referenced = 0;
  let holes = 0;
  const tree: InspectReport['tree'] = [];
  for (const { path, inode } of r.walk()) {
    entries++;
    const type = TYPES[inode.mode & S_IFMT] ?? 'unknown';
    if (withTree)
      tree.push({
        path: path.toString('utf8'),
        mode: (inode.mode & 0o7777).toString(8).padStart(4, '0'),
        size: inode.size,
      });
    if (seen.has(inode.nid)) continue;
    seen.add(inode.nid);
    inodes[type] = (inodes[type] ?? 0) + 1;
    if (type !== 'file') continue;
    fileBytes += inode.size;
    for (const c of r.chunks(inode)) {
      if (!c) holes++;
      else {
        referenced++;
        unique.add(`${c.device}:${c.blkaddr}`);
      }
    }
  }
  return {
    source,
    bootstrapBytes: image.length,
    devices: r.sb.devices.map((d) => d.tag),
    entries,
    inodes,
    fileBytes,
    chunks: { referenced, unique: unique.size, holes, dedupRatio: unique.size === 0 ? 1 : referenced / unique.size },
    ...(withTree ? { tree } : {}),
  };
}

export async function inspectCommand(
  ref: string,
  opts: RegistryFlags & { json?: boolean; tree?: boolean },
): Promise<void> {
  try {
    const report = inspectBootstrap(await loadBootstrap(ref, registriesFromFlags(opts)), ref, Boolean(opts.tree));
    if (opts.json) {
      process.stdout.write(`${JSON.stringify(report)}\n`);
      return;
    }
    if (report.tree)
      for (const t of report.tree) process.stdout.write(`${t.mode} ${String(t.size).padStart(12)} ${t.path}\n`);
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
