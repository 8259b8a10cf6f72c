// Source trees for tests, made with the real filesystem and real tools (mknod, touch).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/native';

export const MiB = 1 << 20;

export function setTime(p: string | Buffer, spec: string): void {
  execFileSync('touch', ['-h', '-d', spec, p.toString()]);
}

export function mknod(p: string, type: 'c' | 'b', major: number, minor: number): void {
  execFileSync('mknod', [p, type, String(major), String(minor)]);
}

export function mkfifo(p: string): void {
  execFileSync('mkfifo', [p]);
}

/** A unix socket file: the child exits without closing the server, so the file stays. */
export function mksocket(p: string): void {
  execFileSync(process.execPath, [
    '-e',
    `require('net').createServer().listen(${JSON.stringify(p)}, () => process.exit(0))`,
  ]);
}

export function setXattr(p: string | Buffer, name: string, value: string | Buffer): void {
  native.setXattr(p, name, Buffer.isBuffer(value) ? value : Buffer.from(value));
}

/** security.capability v2 granting cap_net_bind_service, as setcap writes it. */
export const CAP_NET_BIND_SERVICE = Buffer.from('0100000200040000000000000000000000000000', 'hex');

/** One tree with every kind of entry and attribute the format must carry. */
export function makeKitchenSink(root: string): void {
  const p = (...parts: string[]) => path.join(root, ...parts);
  fs.mkdirSync(p('dir', 'sub'), { recursive: true });
  fs.writeFileSync(p('empty'), '');
  fs.writeFileSync(p('small.txt'), 'hello, erofs\n');
  fs.writeFileSync(p('one-chunk'), randomBytes(MiB));
  // The last byte is never 0: a zero byte would make the tail chunk a hole, which erofs-utils 1.5
  // extracts one chunk short (1 run in 256). A file ending in a hole has a test of its own.
  const plusOne = randomBytes(MiB + 1);
  plusOne[MiB] |= 1;
  fs.writeFileSync(p('one-chunk-plus-one'), plusOne);
  fs.writeFileSync(p('odd-size'), randomBytes(3 * MiB + 12345));
  const shared = randomBytes(2 * MiB + 777);
  fs.writeFileSync(p('dup-a'), shared);
  fs.writeFileSync(p('dir', 'dup-b'), shared);
  fs.writeFileSync(p('dir', 'sub', 'dup-c'), Buffer.concat([shared.subarray(0, MiB), randomBytes(100)]));
  fs.writeFileSync(p('zeros'), Buffer.alloc(2 * MiB));
  fs.symlinkSync('small.txt', p('link-rel'));
  fs.symlinkSync('/etc/passwd', p('link-abs'));
  fs.symlinkSync('x'.repeat(4000), p('link-long'));
  fs.symlinkSync('missing/target', p('dir', 'dangling'));
  fs.linkSync(p('small.txt'), p('dir', 'hardlink-to-small'));
  fs.linkSync(p('odd-size'), p('dir', 'sub', 'hardlink-to-odd'));
  mknod(p('chr'), 'c', 1, 3);
  mknod(p('chr-big-minor'), 'c', 300, 70000);
  mknod(p('blk'), 'b', 7, 0);
  mkfifo(p('fifo'));
  mksocket(p('sock'));
  fs.writeFileSync(p('setuid'), '#!/bin/sh\n');
  fs.chmodSync(p('setuid'), 0o4755);
  fs.mkdirSync(p('sticky'));
  fs.chmodSync(p('sticky'), 0o1777);
  fs.writeFileSync(p('capable'), 'binary');
  setXattr(p('capable'), 'security.capability', CAP_NET_BIND_SERVICE);
  setXattr(p('small.txt'), 'user.comment', 'a user attribute');
  setXattr(p('small.txt'), 'trusted.overlay.opaque', 'y');
  setXattr(p('dir'), 'trusted.overlay.opaque', 'y');
  setXattr(p('link-rel'), 'trusted.on-a-symlink', randomBytes(33));
  setXattr(p('dir', 'sub'), 'user.big', randomBytes(3000));
  setXattr(p('empty'), 'user.empty-value', '');
  fs.lchownSync(p('small.txt'), 1000, 1000);
  fs.lchownSync(p('link-abs'), 123456, 654321);
  fs.lchownSync(p('dir', 'sub'), 70000, 5);
  setTime(p('small.txt'), '@1700000000.123456789');
  setTime(p('link-rel'), '@1600000000.000000001');
  setTime(p('dir', 'sub'), '@946684800.5');
  setTime(p('empty'), '@0');
  setTime(p('capable'), '1969-07-20 20:17:40.25 UTC');
}

export function makeWideDir(root: string, count: number): void {
  const dir = path.join(root, 'wide');
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < count; i++) {
    // Names of varying length so that directory blocks split at different places.
    fs.writeFileSync(path.join(dir, `entry-${i.toString(36)}-${'n'.repeat(i % 40)}`), '');
  }
}

export function makeOddNames(root: string): void {
  fs.mkdirSync(root, { recursive: true });
  const bytes = (b: number[]) => Buffer.concat([Buffer.from(root + '/'), Buffer.from(b)]);
  fs.writeFileSync(path.join(root, 'a'.repeat(255)), 'longest ascii name');
  fs.writeFileSync(path.join(root, 'é'.repeat(127) + 'x'), 'longest utf-8 name'); // 255 bytes
  fs.writeFileSync(bytes([0x66, 0xff, 0xfe, 0x80, 0x2e, 0x74]), 'not utf-8');
  fs.mkdirSync(bytes([0xc3, 0x28, 0x01, 0x7f]));
  fs.writeFileSync(path.join(root, ' leading space'), '');
  fs.writeFileSync(path.join(root, 'new\nline'), '');
  fs.writeFileSync(path.join(root, '.hidden'), '');
  fs.writeFileSync(path.join(root, '..dots'), '');
}

export function makeDeep(root: string, depth: number): string {
  let dir = root;
  for (let i = 0; i < depth; i++) dir = path.join(dir, `d${i % 10}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'bottom'), 'deepest file');
  return dir;
}

export function makeManyLinks(root: string, links: number): void {
  fs.mkdirSync(path.join(root, 'links', 'a'), { recursive: true });
  fs.mkdirSync(path.join(root, 'links', 'b'), { recursive: true });
  const target = path.join(root, 'links', 'target');
  fs.writeFileSync(target, randomBytes(5000));
  for (let i = 0; i < links; i++) fs.linkSync(target, path.join(root, 'links', i % 2 ? 'a' : 'b', `l${i}`));
}

/** A sparse file just over 4 GiB, with data at the start, across 2 GiB and across the 4 GiB mark. */
export function makeHugeSparse(p: string): { size: number; pieces: Array<[number, Buffer]> } {
  const size = 4 * 1024 * MiB + 5 * MiB + 3;
  const pieces: Array<[number, Buffer]> = [
    [0, randomBytes(100_000)],
    [2 * 1024 * MiB - 4096, randomBytes(3 * MiB)],
    [4 * 1024 * MiB - 1000, randomBytes(2 * MiB)],
    [size - 10, randomBytes(10)],
  ];
  const fd = fs.openSync(p, 'w');
  try {
    fs.ftruncateSync(fd, size);
    for (const [off, data] of pieces) fs.writeSync(fd, data, 0, data.length, off);
  } finally {
    fs.closeSync(fd);
  }
  return { size, pieces };
}
