// Real OCI images for tests, made by real tools: debootstrap for content, umoci for layers
// (umoci writes whiteouts for deletions; `umoci raw add-layer` carries a hand-made opaque directory).
// Built images are cached under CACHE_DIR, since debootstrap takes about a minute.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const CACHE_DIR = process.env.EROFS_ONDEMAND_TEST_CACHE ?? '/var/cache/erofs-ondemand-test';
const SUITE = 'bookworm';
const MIRROR = process.env.DEBIAN_MIRROR ?? 'http://deb.debian.org/debian';

function run(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 28, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

/** Builds into a temporary sibling and renames, so an interrupted build never looks finished. */
function cached(name: string, make: (dir: string) => void): string {
  const dir = path.join(CACHE_DIR, name);
  if (fs.existsSync(dir)) return dir;
  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const tmp = `${dir}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    make(tmp);
    fs.renameSync(tmp, dir);
  } catch (err) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  return dir;
}

export function debootstrapRootfs(): string {
  return cached(`rootfs-minbase-${SUITE}`, (dir) => {
    run('debootstrap', ['--variant=minbase', SUITE, dir, MIRROR]);
    // Keep the image reproducible and small: no apt lists, no logs of this run.
    fs.rmSync(path.join(dir, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
    fs.rmSync(path.join(dir, 'debootstrap'), { recursive: true, force: true });
  });
}

/**
 * minbase plus python3: the shape of an ML base image, a distribution base with an interpreter and its
 * standard library (thousands of small files) on top. Its size is in the README's bench notes.
 */
export function debootstrapPythonRootfs(): string {
  return cached(`rootfs-python3-${SUITE}`, (dir) => {
    run('debootstrap', ['--variant=minbase', '--include=python3', SUITE, dir, MIRROR]);
    fs.rmSync(path.join(dir, 'var', 'cache', 'apt', 'archives'), { recursive: true, force: true });
    fs.rmSync(path.join(dir, 'debootstrap'), { recursive: true, force: true });
  });
}

export class UmociImage {
  constructor(
    readonly layout: string,
    readonly tag: string,
  ) {}

  get ref(): string {
    return `${this.layout}:${this.tag}`;
  }

  create(): this {
    if (!fs.existsSync(path.join(this.layout, 'index.json'))) run('umoci', ['init', '--layout', this.layout]);
    run('umoci', ['new', '--image', this.ref]);
    return this;
  }

  /** A layer of whatever `change` does to the unpacked root filesystem. */
  layer(change: (rootfs: string) => void): this {
    const bundle = fs.mkdtempSync(path.join(path.dirname(this.layout), 'bundle-'));
    fs.rmdirSync(bundle);
    try {
      run('umoci', ['unpack', '--image', this.ref, bundle]);
      change(path.join(bundle, 'rootfs'));
      run('umoci', ['repack', '--image', this.ref, bundle]);
    } finally {
      fs.rmSync(bundle, { recursive: true, force: true });
    }
    return this;
  }

  /** A layer from a directory taken as is, whiteout files included. */
  rawLayer(dir: string): this {
    const tar = path.join(path.dirname(this.layout), `raw-${process.pid}.tar`);
    run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-C', dir, '-cf', tar, '.']);
    try {
      run('umoci', ['raw', 'add-layer', '--image', this.ref, tar]);
    } finally {
      fs.rmSync(tar, { force: true });
    }
    return this;
  }

  config(args: string[]): this {
    run('umoci', ['config', '--image', this.ref, ...args]);
    return this;
  }

  /** The reference result: the image as umoci unpacks it (whiteouts and opaque directories applied). */
  unpack(dest: string): string {
    run('umoci', ['unpack', '--image', this.ref, dest]);
    return path.join(dest, 'rootfs');
  }
}

function copyTree(from: string, to: string): void {
  run('cp', ['-a', `${from}/.`, to]);
}

/**
 * A three-layer image from Debian packages: minbase, then a layer that deletes and adds files, then a
 * hand-made layer with an opaque directory. Shared by the convert and daemon tests.
 */
export function minbaseImage(): UmociImage {
  const layoutDir = cached('oci-minbase', (dir) => {
    fs.mkdirSync(dir);
    const layout = path.join(dir, 'layout');
    const rootfs = debootstrapRootfs();
    const img = new UmociImage(layout, 'latest').create();
    img.layer((r) => copyTree(rootfs, r));
    img.layer((r) => {
      fs.rmSync(path.join(r, 'usr', 'share', 'doc'), { recursive: true, force: true });
      fs.rmSync(path.join(r, 'etc', 'motd'), { force: true });
      fs.mkdirSync(path.join(r, 'opt', 'app'), { recursive: true });
      fs.writeFileSync(path.join(r, 'opt', 'app', 'run.sh'), '#!/bin/sh\necho lazy hello\n', { mode: 0o755 });
      fs.copyFileSync(path.join(r, 'usr', 'bin', 'bash'), path.join(r, 'opt', 'app', 'bash-copy'));
    });
    const raw = path.join(dir, 'raw');
    fs.mkdirSync(path.join(raw, 'etc', 'apt', 'apt.conf.d'), { recursive: true });
    fs.writeFileSync(path.join(raw, 'etc', 'apt', 'apt.conf.d', '.wh..wh..opq'), '');
    fs.writeFileSync(path.join(raw, 'etc', 'apt', 'apt.conf.d', '99-only-this'), 'APT::Install-Recommends "0";\n');
    img.rawLayer(raw);
    fs.rmSync(raw, { recursive: true });
    img.config(['--config.entrypoint', '/opt/app/run.sh', '--config.env', 'LAZY=1']);
  });
  return new UmociImage(path.join(layoutDir, 'layout'), 'latest');
}

/** Two layers: minbase, then python3 with its dependencies on top. For benchmarks. */
export function pythonImage(): UmociImage {
  const layoutDir = cached('oci-python3', (dir) => {
    fs.mkdirSync(dir);
    const img = new UmociImage(path.join(dir, 'layout'), 'latest').create();
    img.layer((r) => copyTree(debootstrapRootfs(), r));
    img.layer((r) => copyTree(debootstrapPythonRootfs(), r));
    img.config(['--config.cmd', 'python3', '--config.cmd', '-c', '--config.cmd', 'print(42)']);
  });
  return new UmociImage(path.join(layoutDir, 'layout'), 'latest');
}

/** The packages of each layer of mlImage() above minbase, in order: what an ML image is made of. */
export const ML_LAYERS: readonly (readonly string[])[] = [
  ['python3'],
  ['python3-numpy'],
  ['python3-torch'],
  ['python3-scipy', 'python3-pandas', 'python3-sklearn', 'python3-opencv', 'python3-torchvision', 'gcc'],
];

/**
 * Installs `packages` with apt-get inside a chroot of `rootfs`, leaving no apt lists or archives behind.
 * Downloaded packages land in a shared archive under CACHE_DIR (bind-mounted), so a build that fails
 * half-way does not download them again.
 */
function aptInstall(rootfs: string, packages: readonly string[]): void {
  const archives = path.join(CACHE_DIR, 'apt-archives');
  fs.mkdirSync(path.join(archives, 'partial'), { recursive: true });
  const mounts = [
    { target: path.join(rootfs, 'proc'), args: ['-t', 'proc', 'proc'] },
    { target: path.join(rootfs, 'var', 'cache', 'apt', 'archives'), args: ['--bind', archives] },
  ];
  fs.copyFileSync('/etc/resolv.conf', path.join(rootfs, 'etc', 'resolv.conf'));
  const done: string[] = [];
  try {
    for (const m of mounts) {
      fs.mkdirSync(m.target, { recursive: true });
      run('mount', [...m.args, m.target]);
      done.push(m.target);
    }
    const env = { DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };
    const chroot = (...args: string[]) =>
      execFileSync('chroot', [rootfs, ...args], { env, stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 28 });
    chroot('apt-get', 'update', '-qq');
    chroot('apt-get', 'install', '-y', '-qq', '--no-install-recommends', ...packages);
  } finally {
    for (const target of done.reverse()) run('umount', [target]);
  }
  fs.rmSync(path.join(rootfs, 'var', 'lib', 'apt', 'lists'), { recursive: true, force: true });
  fs.mkdirSync(path.join(rootfs, 'var', 'lib', 'apt', 'lists', 'partial'), { recursive: true });
  for (const f of ['pkgcache.bin', 'srcpkgcache.bin'])
    fs.rmSync(path.join(rootfs, 'var', 'cache', 'apt', f), { force: true });
  fs.rmSync(path.join(rootfs, 'var', 'log', 'apt'), { recursive: true, force: true });
  fs.rmSync(path.join(rootfs, 'var', 'log', 'dpkg.log'), { force: true });
}

/**
 * Five layers from Debian packages, the shape of an ML image: minbase, then one layer per entry of
 * ML_LAYERS, each installed by apt-get in a chroot of the image so far. For the cold-start benchmark.
 */
export function mlImage(): UmociImage {
  const layoutDir = cached('oci-ml', (dir) => {
    fs.mkdirSync(dir);
    const img = new UmociImage(path.join(dir, 'layout'), 'latest').create();
    img.layer((r) => copyTree(debootstrapRootfs(), r));
    for (const packages of ML_LAYERS) img.layer((r) => aptInstall(r, packages));
    img.config(['--config.cmd', 'python3']);
  });
  return new UmociImage(path.join(layoutDir, 'layout'), 'latest');
}

/** One layer holding `big`: 200 MiB of random bytes (throughput benchmarks). */
export function bigFileImage(): UmociImage {
  const layoutDir = cached('oci-bigfile-200m', (dir) => {
    fs.mkdirSync(dir);
    const img = new UmociImage(path.join(dir, 'layout'), 'latest').create();
    img.layer((r) => {
      const fd = fs.openSync(path.join(r, 'big'), 'w');
      try {
        for (let i = 0; i < 200; i++) fs.writeSync(fd, randomBytes(1 << 20));
      } finally {
        fs.closeSync(fd);
      }
    });
  });
  return new UmociImage(path.join(layoutDir, 'layout'), 'latest');
}
