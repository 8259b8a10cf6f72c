// Which blob each chain of source layers converted to, remembered on this machine. A blob that is
// expected to exist in the target already is not streamed while its layer converts: that upload
// would only be thrown away. Only a hint: a wrong or missing entry costs time, never correctness.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { log } from '../log';

const VERSION = 1;
const MAX_ENTRIES = 4096;

/** `$XDG_CACHE_HOME/erofs-ondemand/converted-layers.json`, or under `~/.cache`. */
export function defaultMemoPath(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CACHE_HOME || path.join(env.HOME || os.homedir(), '.cache');
  return path.join(base, 'erofs-ondemand', 'converted-layers.json');
}

export class ConvertedLayerMemo {
  private readonly entries: Map<string, string | null>;

  constructor(private readonly file: string) {
    this.entries = new Map();
    try {
      const doc = JSON.parse(fs.readFileSync(file, 'utf8')) as {
        version?: number;
        blobs?: Record<string, string | null>;
      };
      if (doc.version === VERSION && doc.blobs && typeof doc.blobs === 'object') {
        for (const [k, v] of Object.entries(doc.blobs)) if (v === null || typeof v === 'string') this.entries.set(k, v);
      }
    } catch {
      // No memo yet, or an unreadable one: start empty.
    }
  }

  /**
   * The key of layer `index` of an image: its blob depends on that layer and on every layer below
   * (chunks stored lower are not stored again), on the chunk size, on the compressor and on the
   * chunk-dict images (chunks they store are not stored again either).
   */
  static key(
    layers: readonly string[],
    index: number,
    chunkBits: number,
    compressor: string,
    chunkDicts: readonly string[] = [],
  ): string {
    const chain = [VERSION, compressor, chunkBits, layers.slice(0, index + 1)];
    return createHash('sha256')
      .update(JSON.stringify(chunkDicts.length > 0 ? [...chain, chunkDicts] : chain))
      .digest('hex');
  }

  /** The blob digest this chain gave, null when it gave no blob, undefined when unknown. */
  get(key: string): string | null | undefined {
    return this.entries.get(key);
  }

  set(key: string, blob: string | null): void {
    this.entries.delete(key);
    this.entries.set(key, blob);
  }

  save(): void {
    const blobs = Object.fromEntries([...this.entries].slice(-MAX_ENTRIES));
    const tmp = `${this.file}.tmp-${process.pid}`;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true });
      fs.writeFileSync(tmp, JSON.stringify({ version: VERSION, blobs }));
      fs.renameSync(tmp, this.file);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      log.debug('could not save the converted-layer memo', { file: this.file, error: (err as Error).message });
    }
  }
}
