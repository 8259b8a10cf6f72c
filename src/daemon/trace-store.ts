// Access traces this node recorded, one file per lazy image (<cache-dir>/traces/<digest hex>.json),
// and the lookup of the trace to replay when an image is mounted.
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../log';
import { digestHex } from '../oci/digest';
import { checkTrace, type AccessTrace } from '../storage/access-trace';
import type { BlobCache } from '../storage/blob-cache';

export class TraceStore {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  private file(image: string): string {
    return path.join(this.dir, `${digestHex(image)}.json`);
  }

  /** Keeps a finished recording (atomically: a crash leaves the old trace or the new one). */
  save(trace: AccessTrace): void {
    const file = this.file(trace.image);
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(trace));
    fs.renameSync(`${file}.tmp`, file);
    log.info('access trace recorded', { image: trace.image, chunks: trace.entries.length });
  }

  /** The trace recorded here for `image`, or null; one that does not fit the image is ignored with a warning. */
  local(image: string, blobs: readonly BlobCache[]): { trace: AccessTrace; mtimeMs: number } | null {
    const file = this.file(image);
    let text: string;
    let mtimeMs: number;
    try {
      text = fs.readFileSync(file, 'utf8');
      mtimeMs = fs.statSync(file).mtimeMs;
    } catch {
      return null;
    }
    try {
      return { trace: checkTrace(JSON.parse(text), image, blobs), mtimeMs };
    } catch (err) {
      log.warn('local access trace ignored', { image, file, error: (err as Error).message });
      return null;
    }
  }
}
