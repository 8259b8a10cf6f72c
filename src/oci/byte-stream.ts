// Response bodies as plain async iterables of the chunks the socket delivered. A Readable's own
// async iterator joins whatever it has buffered into one fresh Buffer on each read (a copy, and fresh
// memory), and each Readable or generator a layer passes through costs a few microtasks per chunk.
import type { Readable } from 'node:stream';
import { native } from '../native';

/** Bytes read once, front to back; `destroy` ends the download under them (not read to the end). */
export interface ByteStream extends AsyncIterable<Buffer> {
  destroy(): void;
}

/** Told the bytes of a body received so far, as they come (from its first byte). */
export type BytesSoFar = (received: Buffer) => void;

// Bytes a stream may deliver before the reader asks for them: then the socket is paused (TCP backpressure).
const QUEUE_BYTES = 1 << 20;

/** Each chunk `stream` emits, as it emits it (flowing mode, paused while the reader is behind). */
export function bodyChunks(stream: Readable): ByteStream {
  const queue: Buffer[] = [];
  let queued = 0;
  let ended = false;
  let failure: unknown;
  let wake: (() => void) | undefined;
  const notify = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const onData = (b: Buffer) => {
    queue.push(b);
    queued += b.length;
    if (queued >= QUEUE_BYTES) stream.pause();
    notify();
  };
  const onEnd = () => {
    ended = true;
    notify();
  };
  const onError = (err: unknown) => {
    failure ??= err;
    notify();
  };
  const onClose = () => {
    if (!ended) failure ??= new Error('the response ended early (connection closed)');
    notify();
  };
  let started = false;
  const detach = () => {
    stream.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
  };
  const destroy = () => {
    detach();
    stream.destroy();
  };
  return {
    destroy,
    [Symbol.asyncIterator](): AsyncIterator<Buffer> {
      if (started) throw new Error('a byte stream can be read only once');
      started = true;
      stream.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
      return {
        async next(): Promise<IteratorResult<Buffer>> {
          for (;;) {
            if (queue.length > 0) {
              const value = queue.shift()!;
              queued -= value.length;
              if (queued < QUEUE_BYTES && stream.isPaused() && !ended) stream.resume();
              return { value, done: false };
            }
            if (failure !== undefined) {
              detach();
              throw failure;
            }
            if (ended) {
              detach();
              return { value: undefined, done: true };
            }
            await new Promise<void>((resolve) => (wake = resolve));
          }
        },
        async return(): Promise<IteratorResult<Buffer>> {
          destroy();
          return { value: undefined, done: true };
        },
      };
    },
  };
}

/**
 * `bytes`, which are read from `under`, as a byte stream. Ending it before its end (a layer opened
 * ahead and not read) ends `under` too, or a response's connection stays taken and closing the client
 * waits for it.
 */
export function streamOver(bytes: AsyncIterable<Buffer>, under: { destroy(): unknown }): ByteStream {
  let iterator: AsyncIterator<Buffer> | undefined;
  const destroy = () => {
    under.destroy();
    void iterator?.return?.();
  };
  return {
    destroy,
    [Symbol.asyncIterator](): AsyncIterator<Buffer> {
      if (iterator) throw new Error('a byte stream can be read only once');
      const it = (iterator = bytes[Symbol.asyncIterator]());
      return {
        async next() {
          try {
            const r = await it.next();
            if (r.done) under.destroy();
            return r;
          } catch (err) {
            under.destroy();
            throw err;
          }
        },
        async return() {
          under.destroy();
          await it.return?.();
          return { value: undefined, done: true };
        },
      };
    },
  };
}

/**
 * The bytes of `source`, or null as soon as they run past `limit`: the rest is not read, and leaving
 * the loop early ends a response body under it. The one body collector of the registry layer. With
 * `sizeHint` (the length the answer should have) the bytes are copied into one buffer of that size as
 * they come, so a large body is never held twice (its pieces, then their concatenation); `onBytes` is
 * then called after each piece with the bytes received so far (a view of that buffer, whose bytes
 * never change once there).
 */
export async function readAtMost(
  source: AsyncIterable<Buffer>,
  limit: number,
  sizeHint = 0,
  onBytes?: BytesSoFar,
): Promise<Buffer | null> {
  let into = sizeHint > 0 && sizeHint <= limit ? newBody(sizeHint) : null;
  const parts: Buffer[] = [];
  let total = 0;
  for await (const chunk of source) {
    if (total + chunk.length > limit) return null;
    if (into && total + chunk.length <= into.length) {
      chunk.copy(into, total);
      onBytes?.(into.subarray(0, total + chunk.length));
    } else {
      if (into) parts.push(into.subarray(0, total));
      into = null;
      parts.push(chunk);
    }
    total += chunk.length;
  }
  if (!into) return Buffer.concat(parts, total);
  const body = into.subarray(0, total);
  if (into.byteLength === into.buffer.byteLength) ownBodies.add(body);
  return body;
}

/** From this size on a body has memory advised for huge pages (the addon's allocBody): a huge page's worth. */
const HUGE_BODY_BYTES = 2 << 20;

function newBody(size: number): Buffer {
  return size >= HUGE_BODY_BYTES ? Buffer.from(native.allocBody(size)) : Buffer.allocUnsafe(size);
}

/** Bodies readAtMost collected into memory of their own (no other buffer shares a page of it). */
const ownBodies = new WeakSet<Buffer>();

/**
 * Gives the memory of a body from readAtMost back at once, when its reader is done with it, rather
 * than whenever the garbage collector frees it: what keeps a daemon that streams chunks small. The
 * body reads as zeros from then on. Any other buffer is left alone.
 */
export function releaseBody(body: Buffer): void {
  if (!ownBodies.delete(body)) return;
  native.releasePages(body);
}
