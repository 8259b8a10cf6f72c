// The N-API addon is built by `npm ci` and answers with real syscalls.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { S_IFCHR } from '../../src/erofs/format';
import { native } from '../../src/native';
import { cleanup, tempDir } from '../lib/image';

const dir = tempDir('native');
after(() => cleanup(dir));

it('round-trips xattrs of every namespace, with binary names and values', () => {
  const p = path.join(dir, 'x');
  fs.writeFileSync(p, '');
  native.setXattr(p, 'user.a', Buffer.from([0, 1, 2, 255]));
  native.setXattr(p, 'trusted.b', Buffer.alloc(0));
  native.setXattr(p, 'security.capability', Buffer.from('0100000200040000000000000000000000000000', 'hex'));
  const names = native
    .listXattrs(p)
    .map((n) => n.toString())
    .sort();
  assert.deepEqual(names, ['security.capability', 'trusted.b', 'user.a']);
  assert.deepEqual([...native.getXattr(p, 'user.a')], [0, 1, 2, 255]);
  assert.equal(native.getXattr(p, 'trusted.b').length, 0);
});

it('reports errno codes like Node does', () => {
  assert.throws(() => native.listXattrs(path.join(dir, 'missing')), { code: 'ENOENT', syscall: 'llistxattr' });
  assert.throws(() => native.getXattr(dir, 'user.nope'), { code: 'ENODATA' });
  assert.throws(() => native.mount('/nonexistent-source', dir, 'erofs', 1, ''), { code: 'ENOENT', syscall: 'mount' });
  assert.throws(() => native.umount(dir), { code: 'EINVAL', syscall: 'umount2' });
  assert.throws(() => native.setXattr(Buffer.from('a\0b'), 'user.x', Buffer.alloc(0)), /NUL/);
});

it('mounts EROFS only on a target reached without a symbolic link, naming the step that failed', async () => {
  const target = path.join(dir, 'target');
  fs.mkdirSync(target);
  fs.symlinkSync(target, path.join(dir, 'target-link'));
  const notErofs = path.join(dir, 'not-erofs');
  fs.writeFileSync(notErofs, Buffer.alloc(8192));
  for (const t of [path.join(dir, 'target-link'), path.join(dir, 'target-link', '.')])
    assert.throws(() => native.mountErofs(notErofs, [], t), { code: 'ELOOP', syscall: 'openat2(RESOLVE_NO_SYMLINKS)' });
  assert.throws(() => native.mountErofs(notErofs, [notErofs], path.join(dir, 'not-erofs')), { code: 'ENOTDIR' });
  assert.throws(() => native.mountErofs(notErofs, [], target), { syscall: 'fsconfig(create)' });
  await assert.rejects(native.mountErofsAsync(notErofs, [], path.join(dir, 'target-link')), { code: 'ELOOP' });
  // Options go to fsconfig one by one, each named in the error (fscache mode passes fsid and domain_id).
  await assert.rejects(native.mountErofsAsync('none', [], target, { 'no-such-option': 'x' }), {
    code: 'EINVAL',
    syscall: 'fsconfig(no-such-option=x)',
  });
  assert.throws(() => native.mountErofs('none', [], target, { fsid: Buffer.from('a\0b') as never }), /NUL/);
  assert.throws(() => native.openDirNoSymlinks(path.join(dir, 'target-link')), { code: 'ELOOP' });
  fs.closeSync(native.openDirNoSymlinks(target));
});

it('finds data and holes in a sparse file', () => {
  const p = path.join(dir, 'sparse');
  const fd = fs.openSync(p, 'w+');
  try {
    fs.ftruncateSync(fd, 64 << 20);
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 32 << 20);
    assert.equal(native.seekData(fd, 0), 32 << 20);
    assert.equal(native.seekHole(fd, 32 << 20), (32 << 20) + 4096);
    assert.equal(native.seekData(fd, (32 << 20) + 4096), -1);
  } finally {
    fs.closeSync(fd);
  }
});

it('makes device nodes and sets nanosecond times without following symlinks', () => {
  const dev = path.join(dir, 'dev');
  native.mknod(dev, S_IFCHR | 0o600, 300, 70000);
  const st = fs.lstatSync(dev, { bigint: true });
  assert.ok(st.isCharacterDevice());
  assert.equal(st.rdev, ((300n & 0xfffn) << 8n) | (70000n & 0xffn) | ((70000n & ~0xffn) << 12n));
  const link = path.join(dir, 'link');
  fs.symlinkSync('dev', link);
  native.setTimes(link, -86400n, 123456789);
  assert.equal(fs.lstatSync(link, { bigint: true }).mtimeNs, -86400n * 1_000_000_000n + 123456789n);
  assert.notEqual(fs.lstatSync(dev, { bigint: true }).mtimeNs, -86400n * 1_000_000_000n + 123456789n);
});
