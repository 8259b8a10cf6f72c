// Local layers for convert tests: real tar archives (GNU tar) of real directories.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { gzipSync } from 'node:zlib';
import type { LayerInput } from '../../src/convert/convert-layers';

export const TAR_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const TAR = 'application/vnd.oci.image.layer.v1.tar';

/** A tar of `dir` as container image builders write it: PAX format, xattrs, numeric owners. */
export function tarDirectory(dir: string): Buffer {
  return execFileSync(
    'tar',
    ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name', '-C', dir, '-cf', '-', '.'],
    {
      maxBuffer: 1 << 30,
    },
  );
}

/** A layer over bytes in memory whose stream checks the digest at its end, like a registry download. */
export function memoryLayer(
  data: Buffer,
  mediaType: string,
  digest = `sha256:${createHash('sha256').update(data).digest('hex')}`,
): LayerInput {
  return {
    digest,
    mediaType,
    size: data.length,
    open: async () =>
      (async function* () {
        const hash = createHash('sha256');
        for (let off = 0; off < data.length; off += 65536) {
          const piece = data.subarray(off, off + 65536);
          hash.update(piece);
          yield piece;
        }
        const got = `sha256:${hash.digest('hex')}`;
        if (got !== digest) throw new Error(`digest mismatch: expected ${digest}, got ${got}`);
      })(),
  };
}

export function gzipLayer(tar: Buffer): LayerInput {
  return memoryLayer(gzipSync(tar), TAR_GZIP);
}

export function writeTemp(file: string, data: Buffer): string {
  fs.writeFileSync(file, data);
  return file;
}
