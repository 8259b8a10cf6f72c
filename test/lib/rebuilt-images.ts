// The A/B pair: image A, one layer of FILES random files; image B, a rebuild of it with the
// same files and one small new file, so a new layer digest around the same chunks.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { UmociImage } from './test-images';

export const FILES = 12;
/** Not a whole number of chunks: each file's last chunk is a short one. */
export const FILE_BYTES = 3_000_000;
export const CHUNKS_PER_FILE = Math.ceil(FILE_BYTES / (1 << 20));
export const NEW_FILE_BYTES = 100_000;

/** Builds A and B as images `a` and `b` of an OCI layout under `work`. */
export function rebuiltPair(work: string): { a: UmociImage; b: UmociImage } {
  const files = path.join(work, 'files');
  fs.mkdirSync(files);
  for (let i = 0; i < FILES; i++) fs.writeFileSync(path.join(files, `data-${i}`), randomBytes(FILE_BYTES));
  const layout = path.join(work, 'layout');
  const put = (rootfs: string) => fs.cpSync(files, path.join(rootfs, 'data'), { recursive: true });
  const a = new UmociImage(layout, 'a').create().layer(put);
  const b = new UmociImage(layout, 'b').create().layer((rootfs) => {
    put(rootfs);
    fs.writeFileSync(path.join(rootfs, 'data', 'new'), randomBytes(NEW_FILE_BYTES));
  });
  return { a, b };
}
