// What a transport asks of storage: serve a byte range of a file the kernel reads (a blob's
// uncompressed address space, or a local bootstrap) into a sink. Every cache miss, from any
// transport, goes through `RangeSource.serve`.
import fs from 'node:fs';
import { readAt } from '../read-at';
import type { Priority } from './limiter';

/** Where the bytes of a served range go. */
export type RangeSink =
  /** Only make the range present in the cache file (prefetch; fanotify, whose reader then reads it). */
  | { kind: 'cache' }
  /** Copy the range's bytes into `buf` at `offset` (a FUSE reply, a cachefiles object). */
  | { kind: 'buffer'; buf: Buffer; offset: number };

export interface RangeSource {
  /** Bytes the kernel sees: reads past it are clipped by the transports. */
  readonly size: number;
  /** Names the source in errors and logs (image, blob or path). */
  readonly what: string;
  /**
   * Serves [start, end) into `sink`: missing chunks are fetched, verified and written first. Resolves
   * to the number of chunks fetched; rejects rather than deliver any byte it could not verify.
   */
  serve(start: number, end: number, sink: RangeSink, priority?: Priority): Promise<number>;
}

/** A local file served as it is (a bootstrap): only `buffer` sinks, nothing is ever missing. */
export class LocalFileSource implements RangeSource {
  readonly size: number;
  private readonly fd: number;
  private closed = false;

  constructor(readonly what: string) {
    this.fd = fs.openSync(what, 'r');
    this.size = fs.fstatSync(this.fd).size;
  }

  async serve(start: number, end: number, sink: RangeSink): Promise<number> {
    if (sink.kind === 'buffer')
      await readAt(this.fd, sink.buf, sink.offset, end - start, start, this.what, () => !this.closed);
    return 0;
  }

  close(): void {
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
