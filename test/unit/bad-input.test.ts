// Bad input: a clear error naming the path, a non-zero exit, and no partial output.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { writeBootstrap } from '../../src/erofs/writer';
import { InputError } from '../../src/errors';
import { native } from '../../src/native';
import { nameKey, type Directory, type Inode, type Metadata } from '../../src/tree/node';
import { cleanup, tempDir } from '../lib/image';
import { runCli } from '../lib/harness';

const made: string[] = [];
after(() => cleanup(...made));

const meta = (over: Partial<Metadata> = {}): Metadata => ({
  perm: 0o644,
  uid: 0,
  gid: 0,
  mtimeSec: 0n,
  mtimeNsec: 0,
  xattrs: [],
  ...over,
});

function rootWith(name: Buffer | string, child: Inode): Directory {
  const root: Directory = { type: 'dir', meta: meta({ perm: 0o755 }), entries: new Map() };
  root.entries.set(nameKey(Buffer.from(name)), child);
  return root;
}

function expectInputError(root: Directory, pattern: RegExp, devices = 0): void {
  const devs = Array.from({ length: devices }, (_, i) => ({ id: String(i).repeat(64).slice(0, 64), size: 4096 }));
  assert.throws(
    () => writeBootstrap(root, { chunkBits: 20, devices: devs }),
    (err: unknown) => {
      assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
      assert.match(err.message, pattern);
      return true;
    },
  );
}

const file = (over: Partial<Metadata> = {}): Inode => ({ type: 'file', meta: meta(over), size: 0, chunks: [] });

describe('the writer refuses trees it cannot represent, naming the path', () => {
  it('empty name', () => expectInputError(rootWith('', file()), /path "\/": empty file name/));
  it('name with a slash', () => expectInputError(rootWith('a/b', file()), /path "\/a\/b": file name contains '\/'/));
  it('name with NUL', () =>
    expectInputError(
      rootWith(Buffer.from([0x61, 0, 0x62]), file()),
      /path "\/a\\\\x00b": file name contains a NUL byte/,
    ));
  it('name over 255 bytes', () =>
    expectInputError(rootWith('x'.repeat(256), file()), /file name of 256 bytes exceeds 255/));
  it('dot names', () => expectInputError(rootWith('..', file()), /reserved/));
  it('unsupported file type', () =>
    expectInputError(
      rootWith('door', { type: 'door', meta: meta() } as unknown as Inode),
      /path "\/door": unsupported file type door/,
    ));
  it('uid beyond 32 bits', () =>
    expectInputError(rootWith('f', file({ uid: 2 ** 32 })), /path "\/f": uid 4294967296 does not fit in 32 bits/));
  it('device major beyond 12 bits', () =>
    expectInputError(
      rootWith('dev', { type: 'chardev', meta: meta(), major: 4096, minor: 0 }),
      /path "\/dev": device major 4096 does not fit in 12 bits/,
    ));
  it('xattr value over 65535 bytes', () =>
    expectInputError(
      rootWith('f', file({ xattrs: [{ name: Buffer.from('user.big'), value: Buffer.alloc(65536) }] })),
      /path "\/f": xattr "user.big": value of 65536 bytes exceeds 65535/,
    ));
  it('xattr in a namespace EROFS cannot name', () =>
    expectInputError(
      rootWith('f', file({ xattrs: [{ name: Buffer.from('system.nfs4_acl'), value: Buffer.alloc(1) }] })),
      /path "\/f": xattr "system.nfs4_acl": namespace not supported/,
    ));
  it('symlink target over 4095 bytes', () =>
    expectInputError(
      rootWith('l', { type: 'symlink', meta: meta(), target: Buffer.alloc(4096, 0x61) }),
      /path "\/l": symlink target of 4096 bytes exceeds 4095/,
    ));
  it('file size that does not match its chunk map', () =>
    expectInputError(
      rootWith('f', { type: 'file', meta: meta(), size: 3 << 20, chunks: [null] }),
      /path "\/f": file of 3145728 bytes has 1 chunks, expected 3/,
    ));
  it('chunk on a device the image does not have', () =>
    expectInputError(
      rootWith('f', { type: 'file', meta: meta(), size: 10, chunks: [{ device: 2, blkaddr: 0 }] }),
      /chunk 0 names device 2, image has 1/,
      1,
    ));
  it('a directory linked twice', () => {
    const sub: Directory = { type: 'dir', meta: meta(), entries: new Map() };
    const root = rootWith('a', sub);
    root.entries.set(nameKey(Buffer.from('b')), sub);
    expectInputError(root, /path "\/b": directory is also linked at \/a/);
  });
});

describe('the build command on bad input', () => {
  function run(...args: string[]) {
    return runCli(args);
  }

  it('fails with exit 1, names the source, and leaves no output for a missing directory', () => {
    const out = path.join(tempDir('bad'), 'out');
    made.push(path.dirname(out));
    const r = run('build', '/nonexistent/source-dir', out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /error: path "\/nonexistent\/source-dir": cannot read source directory: ENOENT/);
    assert.equal(fs.existsSync(out), false, 'no output directory is left behind');
  });

  it('refuses an xattr value that does not fit, naming the file, and leaves the output directory as it was', () => {
    // tmpfs takes xattr values of 65536 bytes; EROFS stores at most 65535.
    const src = fs.mkdtempSync('/dev/shm/eo-xattr-');
    const out = tempDir('out-existing');
    made.push(src, out);
    fs.writeFileSync(path.join(src, 'ok'), 'fine');
    fs.writeFileSync(path.join(src, 'too-big-xattr'), 'x');
    native.setXattr(path.join(src, 'too-big-xattr'), 'user.big', Buffer.alloc(65536, 1));
    fs.writeFileSync(path.join(out, 'keep-me'), 'previous content');
    const r = run('build', src, out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /path ".*\/too-big-xattr": xattr "user.big": value of 65536 bytes exceeds 65535/);
    assert.deepEqual(fs.readdirSync(out), ['keep-me']);
  });

  it('refuses a chunk size that is not a power of two', () => {
    const src = tempDir('src-chunk');
    made.push(src);
    const r = run('build', src, path.join(src, 'out'), '--chunk-size', '3K');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /chunk size 3K must be a power of two from 4 KiB to 64 MiB/);
    assert.equal(fs.existsSync(path.join(src, 'out')), false);
  });

  it('rejects an output path that is a file', () => {
    const src = tempDir('src');
    made.push(src);
    const outFile = path.join(src, 'not-a-dir');
    fs.writeFileSync(outFile, '');
    const r = run('build', src, outFile);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /not-a-dir/);
  });

  it('exits 2 on a usage error', () => {
    const r = run('build');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /missing required argument/);
  });
});
