// What a mount needs besides its bootstrap, kept in the cache directory so that a restarted daemon
// takes its mounts over without the registry: lazy manifests by digest (<cache>/manifests/<hex>) and
// each data blob's chunk table and trailer as the blob holds them (<cache>/tables/<blob hex>). Each is
// checked when read back; one that fails the check is deleted, and the caller fetches it again.
import fs from 'node:fs';
import path from 'node:path';
import { loadBlobIndex, tableDigest, type BlobIndex, type ExpectedTable } from '../blob/blob-index';
import { decodeTable, decodeTrailer, ENTRY_SIZE, TRAILER_SIZE, type ChunkEntry } from '../blob/chunk-table';
import { log } from '../log';
import { digestHex, sha256Digest } from '../oci/digest';
import type { Descriptor } from '../oci/types';

/** Replaces `file` atomically: a crash leaves no file or the whole one. */
export function writeWhole(file: string, data: Buffer | string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, data, { mode: 0o600 });
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
}

/** What is kept only saves requests later: failing to keep it fails nothing. */
function keep(what: string, file: string, write: () => void): void {
  try {
    write();
  } catch (err) {
    log.warn(`${what} not kept: a restarted daemon will fetch it again`, { file, error: (err as Error).message });
  }
}

function readIfThere(file: string): Buffer | null {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

export class ImageMetadata {
  private readonly manifests: string;
  private readonly tables: string;

  constructor(cacheDir: string) {
    this.manifests = path.join(cacheDir, 'manifests');
    this.tables = path.join(cacheDir, 'tables');
    for (const dir of [this.manifests, this.tables]) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /** Keeps a manifest whose bytes were checked against `digest`. */
  keepManifest(digest: string, raw: Buffer): void {
    const file = path.join(this.manifests, digestHex(digest));
    keep('lazy manifest', file, () => {
      if (sha256Digest(raw) !== digest) throw new Error(`its bytes do not match ${digest}`);
      if (!fs.existsSync(file)) writeWhole(file, raw);
    });
  }

  /** The kept manifest `digest`, checked against it; null when none is kept (or it failed the check). */
  manifest(digest: string): Buffer | null {
    const file = path.join(this.manifests, digestHex(digest));
    const raw = readIfThere(file);
    if (!raw) return null;
    const got = sha256Digest(raw);
    if (got === digest) return raw;
    log.warn('a kept manifest does not match its digest: deleted', { file, expected: digest, got });
    fs.rmSync(file, { force: true });
    return null;
  }

  private tableFile(blob: Descriptor): string {
    return path.join(this.tables, digestHex(blob.digest));
  }

  /**
   * The chunks of the kept table of `blob` (a digest), read without the manifest: for the node's chunk
   * index, a hint that every copy checks against its destination's table. Null when none is kept.
   */
  keptChunks(blob: string): ChunkEntry[] | null {
    const what = `kept chunk table of ${blob}`;
    const bytes = readIfThere(path.join(this.tables, digestHex(blob)));
    if (!bytes) return null;
    const trailer = decodeTrailer(bytes.subarray(Math.max(0, bytes.length - TRAILER_SIZE)), what);
    if (trailer.chunkCount * ENTRY_SIZE + TRAILER_SIZE !== bytes.length)
      throw new Error(`${what}: ${bytes.length} bytes do not hold ${trailer.chunkCount} chunks and the trailer`);
    return decodeTable(bytes.subarray(0, bytes.length - TRAILER_SIZE), what);
  }

  /**
   * Keeps a blob's chunk table and trailer (the blob's bytes from the table to its end), loaded and
   * checked. Without the manifest's digest of them (`expected`), their digest now is kept beside them.
   */
  keepTable(blob: Descriptor, tableAndTrailer: Buffer, expected: ExpectedTable | undefined): void {
    const file = this.tableFile(blob);
    keep('chunk table', file, () => {
      if (!expected) writeWhole(`${file}.digest`, tableDigest(tableAndTrailer));
      writeWhole(file, tableAndTrailer);
    });
  }

  /**
   * The blob's kept chunk table, checked as one read from the blob is: against the manifest's digest
   * of it (`expected`), or the digest kept with it. Null when none is kept or it fails the check.
   */
  async table(blob: Descriptor, expected: ExpectedTable | undefined, what: string): Promise<BlobIndex | null> {
    const file = this.tableFile(blob);
    const bytes = readIfThere(file);
    if (!bytes) return null;
    const start = blob.size - bytes.length;
    try {
      const want = expected ?? { offset: start, digest: readIfThere(`${file}.digest`)?.toString('utf8') ?? '' };
      if (!want.digest) throw new Error('no digest is kept with it');
      return await loadBlobIndex(
        async (offset, length) => {
          if (offset < start || offset + length > blob.size)
            throw new Error(`it holds bytes ${start}..${blob.size}, not ${offset}..${offset + length}`);
          return bytes.subarray(offset - start, offset - start + length);
        },
        blob.size,
        `${what} (kept chunk table)`,
        want,
      );
    } catch (err) {
      log.warn('a kept chunk table failed its check: deleted', { file, error: (err as Error).message });
      fs.rmSync(file, { force: true });
      fs.rmSync(`${file}.digest`, { force: true });
      return null;
    }
  }
}
