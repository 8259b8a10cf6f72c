import assert from 'node:assert/strict';
import fs from 'node:fs';
import { InputError } from '../../src/errors';

/** Asserts that `fn` rejects with an InputError whose message matches every pattern. */
export async function rejectsWith(fn: () => Promise<unknown>, ...patterns: RegExp[]): Promise<InputError> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof InputError, `expected an InputError, got ${String(caught)}`);
  for (const p of patterns) assert.match(caught.message, p);
  return caught;
}

/** Waits until `cond` holds, checking every 10 ms; fails naming `what` after `timeoutMs`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs: number): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !(await cond()); await new Promise((r) => setTimeout(r, 10)))
    if (Date.now() >= deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Bytes this process has read so far (`rchar` of /proc/self/io): how much a piece of code read. */
export function bytesRead(): number {
  return Number(/rchar: (\d+)/.exec(fs.readFileSync('/proc/self/io', 'utf8'))![1]);
}

/** The /proc/self/mountinfo line of the mount on `target` (its mount id first): equal lines, the same mount. */
export function mountInfoLine(target: string): string | undefined {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .find((l) => l.split(' ')[4] === target);
}

/** Reads `length` bytes at `start` through `handle`, short only at the end of the file. */
export async function readRange(handle: fs.promises.FileHandle, start: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  for (let done = 0; done < length;) {
    const { bytesRead } = await handle.read(buf, done, length - done, start + done);
    if (bytesRead === 0) return buf.subarray(0, done);
    done += bytesRead;
  }
  return buf;
}
