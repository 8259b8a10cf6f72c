import assert from 'node:assert/strict';
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
