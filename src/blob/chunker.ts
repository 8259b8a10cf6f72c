// Cuts a file's contents into fixed-size chunks and hands the non-zero ones to a blob writer.
import fs from 'node:fs';
import { InputError } from '../errors';
import { native } from '../native';
import { displayPath, type ChunkLocation } from '../tree/node';
import type { BlobWriter } from './blob-writer';

export interface ChunkingStats {
  /** Chunks that hold data (referenced from a file). */
  dataChunks: number;
  /** Chunks that were new and written to the blob. */
  storedChunks: number;
  /** Chunks that are holes or all zeros: they read as zeros and take no blob space. */
  holeChunks: number;
  /** Bytes of file content in data chunks. */
  dataBytes: number;
  storedBytes: number;
}

export function emptyChunkingStats(): ChunkingStats {
  return { dataChunks: 0, storedChunks: 0, holeChunks: 0, dataBytes: 0, storedBytes: 0 };
}

export class FileChunker {
  private readonly buf: Buffer;
  private readonly zeros: Buffer;

  constructor(
    private readonly chunkSize: number,
    private readonly blob: BlobWriter,
    readonly stats: ChunkingStats = emptyChunkingStats(),
  ) {
    this.buf = Buffer.allocUnsafe(chunkSize);
    this.zeros = Buffer.alloc(chunkSize);
  }

  /** Chunks `source`, which must hold `size` bytes. `sparse` asks to skip holes with SEEK_DATA. */
  chunkFile(source: Buffer, size: number, sparse: boolean): Array<ChunkLocation | null> {
    const out: Array<ChunkLocation | null> = [];
    if (size === 0) return out;
    let fd: number;
    try {
      fd = fs.openSync(source, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch (err) {
      throw new InputError(`cannot open: ${(err as Error).message}`, { path: displayPath(source) }, { cause: err });
    }
    try {
      for (let offset = 0; offset < size; offset += this.chunkSize) {
        const len = Math.min(this.chunkSize, size - offset);
        if (sparse) {
          const data = native.seekData(fd, offset);
          if (data === -1 || data >= offset + len) {
            out.push(null);
            this.stats.holeChunks++;
            continue;
          }
        }
        this.readExactly(fd, source, offset, len);
        const chunk = this.buf.subarray(0, len);
        if (chunk.equals(this.zeros.subarray(0, len))) {
          out.push(null);
          this.stats.holeChunks++;
          continue;
        }
        const { location, stored } = this.blob.add(chunk);
        out.push(location);
        this.stats.dataChunks++;
        this.stats.dataBytes += len;
        if (stored) {
          this.stats.storedChunks++;
          this.stats.storedBytes += len;
        }
      }
      // A file that grew while we read it would be silently truncated: refuse instead.
      if (fs.readSync(fd, this.buf, 0, 1, size) !== 0) {
        throw new InputError(`file grew beyond ${size} bytes while being read`, { path: displayPath(source) });
      }
    } finally {
      fs.closeSync(fd);
    }
    return out;
  }

  private readExactly(fd: number, source: Buffer, offset: number, len: number): void {
    let got = 0;
    while (got < len) {
      const n = fs.readSync(fd, this.buf, got, len - got, offset + got);
      if (n === 0)
        throw new InputError(`file shrank below ${offset + got + (len - got)} bytes while being read`, {
          path: displayPath(source),
        });
      got += n;
    }
  }
}
