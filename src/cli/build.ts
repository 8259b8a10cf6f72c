import { buildFromDirectory } from '../builder/build-dir';
import { bytes, chunkBitsOf, table } from './format';

export interface BuildCommandOptions {
  chunkSize: string;
  json?: boolean;
}

export function buildCommand(source: string, outDir: string, opts: BuildCommandOptions): void {
  const started = process.hrtime.bigint();
  const r = buildFromDirectory(source, outDir, { chunkBits: chunkBitsOf(opts.chunkSize) });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const c = r.chunking;
  const dedupRatio = c.storedBytes === 0 ? 1 : c.dataBytes / c.storedBytes;
  const summary = {
    bootstrap: { path: r.bootstrapPath, bytes: r.bootstrapBytes },
    blob: r.blob ? { id: r.blob.id, path: r.blobPath, bytes: r.blob.size, chunks: r.blob.chunks.length } : null,
    inodes: r.inodes,
    types: r.counts,
    chunkSize: r.chunkSize,
    chunks: { referenced: c.dataChunks, stored: c.storedChunks, holes: c.holeChunks },
    contentBytes: c.dataBytes,
    storedBytes: c.storedBytes,
    dedupRatio,
    seconds,
  };
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    return;
  }
  const rows: string[][] = [
    ['bootstrap', `${bytes(r.bootstrapBytes)} (${r.bootstrapBytes} B) ${r.bootstrapPath}`],
    ['blob', r.blob ? `${bytes(r.blob.size)} (${r.blob.size} B) ${r.blobPath}` : 'none (no file data)'],
    ['inodes', `${r.inodes} (${r.counts.file} files, ${r.counts.dir} dirs, ${r.counts.symlink} symlinks)`],
    ['chunk size', bytes(r.chunkSize)],
    ['chunks', `${c.dataChunks} referenced, ${c.storedChunks} stored, ${c.holeChunks} holes/zero`],
    ['content', `${bytes(c.dataBytes)} in data chunks, ${bytes(c.storedBytes)} stored`],
    ['dedup ratio', `${dedupRatio.toFixed(3)}x`],
    ['time', `${seconds.toFixed(2)} s`],
  ];
  process.stdout.write(`${table(rows)}\n`);
}
