// `inspect --tree` prints file names from an image, which whoever pushed it chose: control
// characters in them are escaped, so a name cannot move the cursor, recolour the terminal or forge
// lines of the listing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { writeBootstrap } from '../../src/erofs/writer';
import { nameKey, type Directory, type Inode, type Metadata } from '../../src/tree/node';
import { runCli } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

const meta: Metadata = { perm: 0o644, uid: 0, gid: 0, mtimeSec: 0n, mtimeNsec: 0, xattrs: [] };
const empty = (): Inode => ({ type: 'file', meta, size: 0, chunks: [] });

function root(names: readonly Buffer[]): Directory {
  const d: Directory = { type: 'dir', meta: { ...meta, perm: 0o755 }, entries: new Map() };
  for (const n of names) d.entries.set(nameKey(n), empty());
  return d;
}

const made: string[] = [];
after(() => cleanup(...made));

describe('inspect --tree', () => {
  it('escapes control characters in file names', () => {
    const names = [
      Buffer.from('evil\n0644            0 forged'),
      Buffer.from('\x1b[2J\x1b]0;title\x07clear'),
      Buffer.from('c1-\u009b31m'),
      Buffer.from('tab\there\rcr\x7f'),
      Buffer.from('plain-é.txt'),
    ];
    const dir = tempDir('inspect-tree');
    made.push(dir);
    const file = path.join(dir, 'bootstrap.img');
    fs.writeFileSync(file, writeBootstrap(root(names), { chunkBits: 20, devices: [] }).image);

    const r = runCli(['inspect', '--tree', file]);
    assert.equal(r.status, 0, r.stderr);
    const listing = r.stdout.slice(0, r.stdout.indexOf('\n  '));
    // eslint-disable-next-line no-control-regex
    assert.doesNotMatch(r.stdout, /[\x00-\x09\x0b-\x1f\x7f\u0080-\u009f]/, 'no raw control characters');
    const lines = listing.split('\n').filter((l) => /^\d{4} /.test(l));
    assert.equal(lines.length, 1 + names.length, `one line per entry:\n${listing}`);
    assert.ok(!lines.some((l) => l.startsWith('0644            0 forged')), 'a name cannot forge a line');
    assert.ok(
      lines.some((l) => l.endsWith(' /evil\\x0a0644            0 forged')),
      listing,
    );
    assert.ok(
      lines.some((l) => l.endsWith(' /\\x1b[2J\\x1b]0;title\\x07clear')),
      listing,
    );
    assert.ok(
      lines.some((l) => l.endsWith(' /c1-\\xc2\\x9b31m')),
      listing,
    );
    assert.ok(
      lines.some((l) => l.endsWith(' /tab\\x09here\\x0dcr\\x7f')),
      listing,
    );
    assert.ok(
      lines.some((l) => l.endsWith(' /plain-é.txt')),
      'printable UTF-8 stays as it is',
    );
  });
});
