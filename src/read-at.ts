// Reading an exact range of a local file by position, on libuv's thread pool: never blocking the
// event loop, since under fanotify a read of a marked file raises an event this process must answer.
import fs from 'node:fs';

/**
 * Fills `buf[bufOffset, bufOffset + length)` from `position` of `fd`, continuing after short reads;
 * throws when the file ends first. `isOpen` is asked before every read: once its owner has closed
 * the fd, the number may already belong to another file.
 */
export async function readAt(
  fd: number,
  buf: Buffer,
  bufOffset: number,
  length: number,
  position: number,
  what: string,
  isOpen: () => boolean = () => true,
): Promise<void> {
  for (let done = 0; done < length;) {
    if (!isOpen()) throw new Error(`${what} is closed`);
    const n = await new Promise<number>((resolve, reject) =>
      fs.read(fd, buf, bufOffset + done, length - done, position + done, (err, bytes) =>
        err ? reject(err) : resolve(bytes),
      ),
    );
    if (n === 0) throw new Error(`${what} ends at ${position + done}, before ${position + length}`);
    done += n;
  }
}

/**
 * The first `size` bytes of `fd`, by position, in reads of `readBytes`: the file may have been renamed
 * since it was opened. `skip(n)` leaves out the next `n` bytes without reading them (a tar index skips
 * the members' bodies); resuming past the end fails as truncated.
 */
export function readByPosition(
  fd: number,
  size: number,
  what: string,
  readBytes: number,
): AsyncIterable<Buffer> & { skip(n: number): void } {
  let position = 0;
  return {
    skip(n: number): void {
      position += n;
    },
    async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
      while (position < size) {
        const buf = Buffer.allocUnsafe(Math.min(readBytes, size - position));
        await readAt(fd, buf, 0, buf.length, position, what);
        position += buf.length;
        yield buf;
      }
      if (position > size)
        throw new Error(`${what} ends ${position - size} bytes before the end of a skipped range (truncated)`);
    },
  };
}
