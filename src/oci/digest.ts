// Content digests: every blob read from anywhere is checked against the digest that named it.
import { createHash } from 'node:crypto';
import { InputError, type ErrorContext } from '../errors';

export function sha256Digest(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function digestHex(digest: string): string {
  if (!/^sha256:[0-9a-f]{64}$/.test(digest)) throw new InputError(`unsupported digest ${JSON.stringify(digest)}`);
  return digest.slice('sha256:'.length);
}

/**
 * Passes bytes through and fails at the end, or as soon as the size is exceeded, when they do not
 * match `digest` (and `size`, when known).
 */
export async function* verifyDigest(
  source: AsyncIterable<Buffer>,
  digest: string,
  size: number | undefined,
  ctx: ErrorContext,
): AsyncGenerator<Buffer> {
  const hash = createHash('sha256');
  let seen = 0;
  for await (const chunk of source) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
    seen += b.length;
    if (size !== undefined && seen > size)
      throw new InputError(`blob ${digest} is larger than its descriptor's ${size} bytes`, ctx);
    hash.update(b);
    yield b;
  }
  if (size !== undefined && seen !== size)
    throw new InputError(`blob ${digest} has ${seen} bytes, its descriptor says ${size} (truncated?)`, ctx);
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== digest) throw new InputError(`digest mismatch: expected ${digest}, got ${got}`, ctx);
}
