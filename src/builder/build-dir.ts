// `erofs-ondemand build`: a local directory -> bootstrap + one uncompressed data blob.
import fs from 'node:fs';
import path from 'node:path';
import { BlobWriter, type BlobSummary } from '../blob/blob-writer';
import { ChunkDictionary } from '../blob/chunk-dict';
import { FileChunker, type ChunkingStats } from '../blob/chunker';
import { writeBootstrap } from '../erofs/writer';
import { InputError } from '../errors';
import { scanDirectory } from '../tree/scan-dir';
import type { Inode } from '../tree/node';

export const BOOTSTRAP_FILE = 'bootstrap.erofs';
export const BLOB_DIR = 'blobs';

export interface BuildOptions {
  chunkBits: number;
}

export interface BuildResult {
  bootstrapPath: string;
  bootstrapBytes: number;
  blob: BlobSummary | null;
  blobPath: string | null;
  inodes: number;
  counts: Record<Inode['type'], number>;
  chunking: ChunkingStats;
  chunkSize: number;
}

function countTypes(root: Inode): Record<Inode['type'], number> {
  const counts: Record<Inode['type'], number> = {
    file: 0,
    dir: 0,
    symlink: 0,
    chardev: 0,
    blockdev: 0,
    fifo: 0,
    socket: 0,
  };
  const seen = new Set<Inode>();
  const stack: Inode[] = [root];
  while (stack.length > 0) {
    const node = stack.pop()!;
    if (seen.has(node)) continue;
    seen.add(node);
    counts[node.type]++;
    if (node.type === 'dir') stack.push(...node.entries.values());
  }
  return counts;
}

/** Builds into a private temporary folder inside `outDir` and moves the results in only on success. */
export function buildFromDirectory(source: string, outDir: string, opts: BuildOptions): BuildResult {
  const createdOut = !fs.existsSync(outDir);
  try {
    fs.mkdirSync(outDir, { recursive: true });
  } catch (err) {
    throw new InputError(`cannot create output directory: ${(err as Error).message}`, { path: outDir }, { cause: err });
  }
  if (!fs.statSync(outDir).isDirectory()) throw new InputError('output is not a directory', { path: outDir });
  const work = fs.mkdtempSync(path.join(outDir, '.build-'));
  try {
    const result = buildInto(source, work, opts);
    fs.mkdirSync(path.join(outDir, BLOB_DIR), { recursive: true });
    let blobPath: string | null = null;
    if (result.blob) {
      blobPath = path.join(outDir, BLOB_DIR, result.blob.id);
      fs.renameSync(path.join(work, 'blob'), blobPath);
    }
    const bootstrapPath = path.join(outDir, BOOTSTRAP_FILE);
    fs.renameSync(path.join(work, BOOTSTRAP_FILE), bootstrapPath);
    return { ...result, bootstrapPath, blobPath };
  } catch (err) {
    if (createdOut) fs.rmSync(outDir, { recursive: true, force: true });
    throw err;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function buildInto(source: string, work: string, opts: BuildOptions): Omit<BuildResult, 'bootstrapPath' | 'blobPath'> {
  const tree = scanDirectory(source);
  const chunkSize = 2 ** opts.chunkBits;
  const blobFd = fs.openSync(path.join(work, 'blob'), 'w');
  let blob: BlobSummary;
  let chunker: FileChunker;
  try {
    const writer = new BlobWriter(blobFd, 1, new ChunkDictionary());
    chunker = new FileChunker(chunkSize, writer);
    for (const f of tree.files) f.inode.chunks = chunker.chunkFile(f.source, f.inode.size, f.sparse);
    blob = writer.finish();
  } finally {
    fs.closeSync(blobFd);
  }
  const hasBlob = blob.chunks.length > 0;
  const { image, inodeCount } = writeBootstrap(tree.root, {
    chunkBits: opts.chunkBits,
    devices: hasBlob ? [{ id: blob.id, size: blob.size }] : [],
  });
  fs.writeFileSync(path.join(work, BOOTSTRAP_FILE), image);
  return {
    bootstrapBytes: image.length,
    blob: hasBlob ? blob : null,
    inodes: inodeCount,
    counts: countTypes(tree.root),
    chunking: chunker.stats,
    chunkSize,
  };
}
