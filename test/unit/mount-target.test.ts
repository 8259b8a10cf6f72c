// Mount target checks on plain directories (no mount, no root): spelling, symlinks, the cache directory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { InputError } from '../../src/errors';
import { checkMountTarget, requireCanonical } from '../../src/mount/target';

describe('mount targets', () => {
  const root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'eo-target-')));
  const cache = path.join(root, 'cache');
  for (const d of ['cache/blobs', 'cache2', 'real/sub']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.symlinkSync(path.join(root, 'real'), path.join(root, 'link'));
  fs.writeFileSync(path.join(root, 'file'), '');
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  const refused = (target: unknown, why: RegExp) =>
    assert.throws(
      () => checkMountTarget(target, cache),
      (err: Error) => err instanceof InputError && why.test(err.message) && err.message.includes('mount target'),
    );

  it('accepts a directory reached without a symlink, beside the cache (a sibling sharing its prefix too)', () => {
    checkMountTarget(path.join(root, 'real', 'sub'), cache);
    checkMountTarget(path.join(root, 'cache2'), cache);
  });

  it('refuses relative, unnormalised and non-string targets, naming them', () => {
    for (const t of ['real', './real', '', 42, null]) refused(t, /not an absolute path/);
    for (const t of [`${root}/real/`, `${root}/real/../real`, `${root}//real`, `${root}/./real`])
      refused(t, /not normalised/);
    assert.throws(() => requireCanonical('rel'), /mount target "rel": not an absolute path/);
  });

  it('refuses a symlink in any component, and what is not a directory', () => {
    refused(path.join(root, 'link'), /reached through a symbolic link/);
    refused(path.join(root, 'link', 'sub'), /reached through a symbolic link/);
    refused(path.join(root, 'file'), /not a directory/);
    refused(path.join(root, 'missing'), /ENOENT/);
    refused(`${root}/a\0b`, /NUL/);
  });

  it('refuses the cache directory, what is inside it and what holds it', () => {
    refused(cache, /inside the daemon's cache directory/);
    refused(path.join(cache, 'blobs'), /inside the daemon's cache directory/);
    refused(root, /holds the daemon's cache directory/);
    refused('/', /holds the daemon's cache directory/);
  });
});
