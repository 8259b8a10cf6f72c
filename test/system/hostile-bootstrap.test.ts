// A lazy image whose bootstrap was altered after conversion (every digest correct, the superblock
// checksum made right again) is refused by `mount` before the kernel sees it, and by `inspect`,
// which ends instead of looping. The daemon stays up and mounts the intact image afterwards. Seeded
// mutants go the same way: refused with the fault the validator names, or, when it accepts them,
// passed by fsck.erofs, mounted, and read back as the validator read them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, it } from 'node:test';
import { BLOCK_SIZE, DIRENT_SIZE } from '../../src/erofs/format';
import { BootstrapReader, type BootstrapError } from '../../src/erofs/reader';
import { sealSuperblock } from '../../src/erofs/superblock';
import { validateBootstrap } from '../../src/erofs/validate';
import { expectedDevice } from '../../src/daemon/image-store';
import { sha256Digest } from '../../src/oci/digest';
import { readAll } from '../../src/oci/image-io';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, type ImageManifest } from '../../src/oci/types';
import { execCli, execCliSync, runCli, runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { pushSmallImage, smallImage } from '../lib/small-image';
import { mutateBootstrap } from '../lib/bootstrap-mutations';

let registry: RegistryServer;
let client: RegistryClient;
let daemon: Daemon | undefined;
let work: string;
let socket: string;

/** Pushes `lazy/small:TAG`: the converted image with its bootstrap replaced by `alter`'s result. */
async function pushAltered(tag: string, alter: (image: Buffer) => Buffer | void, seal = true): Promise<string> {
  const got = await client.resolveManifest('lazy/small', '1', hostPlatform());
  const manifest = JSON.parse(got.raw.toString('utf8')) as ImageManifest;
  const boot = manifest.layers[0];
  const intact = await readAll(await client.getBlob('lazy/small', boot.digest, boot.size));
  const image = alter(intact) ?? intact;
  if (seal) sealSuperblock(image);
  const digest = sha256Digest(image);
  await client.pushBlob('lazy/small', digest, image.length, () => Readable.from([image]));
  manifest.layers[0] = { ...boot, digest, size: image.length };
  await client.putManifest('lazy/small', tag, Buffer.from(JSON.stringify(manifest)), got.mediaType);
  return `${registry.host}/lazy/small:${tag}`;
}

/** Points the root's entry `name` at `nid` (the root directory is one inline block in this image). */
function repoint(image: Buffer, name: string, nid: bigint): void {
  const r = new BootstrapReader(image);
  const root = r.inode(r.sb.rootNid);
  const base = r.extents(root).tailLen > 0 ? r.extents(root).tailAt : r.extents(root).blocksAt;
  const count = image.readUInt16LE(base + 8) / DIRENT_SIZE;
  for (let k = 0; k < count; k++) {
    const at = base + k * DIRENT_SIZE;
    const off = image.readUInt16LE(at + 8);
    if (image.subarray(base + off, base + off + name.length).toString() === name) {
      image.writeBigUInt64LE(nid, at);
      return;
    }
  }
  throw new Error(`no entry ${name} in the root`);
}

function mountedUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4]?.startsWith(dir));
}

before(async () => {
  work = tempDir('hostile-bootstrap');
  socket = path.join(work, 'control.sock');
  registry = await startRegistry();
  client = new RegistryClient(registry.host, { plainHttp: true });
  await pushSmallImage(client, 'library/small', '1', smallImage());
  execCliSync(['convert', '-q', `${registry.host}/library/small:1`, `${registry.host}/lazy/small:1`]);
  daemon = await startDaemon({ cacheDir: path.join(work, 'cache'), socket });
});

after(async () => {
  await daemon?.stop();
  await client?.close();
  await registry?.stop();
  cleanup(work);
});

it('refuses to mount a bootstrap whose entry loops back to the root, or points past its end', async () => {
  const looped = await pushAltered('looped', (image) => {
    repoint(image, 'app', BigInt(new BootstrapReader(image).sb.rootNid));
  });
  const beyond = await pushAltered('beyond', (image) => repoint(image, 'app', BigInt(image.length) * 64n));
  for (const [ref, fault] of [
    [looped, /path "\/app": directory reached a second time \(first at \/\)/],
    [beyond, /path "\/app": inode at byte \d+ .* lies beyond the image/],
  ] as const) {
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    const r = await runCliAsync(['mount', '--socket', socket, ref, mnt]);
    assert.notEqual(r.status, 0, `mount of ${ref} succeeded`);
    assert.match(r.stderr, fault);
    assert.match(r.stderr, new RegExp(`image "${ref}", bootstrap "sha256:[0-9a-f]{64}", nid \\d+`));
    assert.deepEqual(mountedUnder(mnt), [], 'nothing mounted');
    assert.equal(fs.readdirSync(mnt).length, 0);

    // inspect walks the same way: it ends with the fault, --check prints it, both exit 1.
    const check = runCli(['inspect', '--check', ref], { timeout: 30_000 });
    assert.equal(check.status, 1, check.stderr);
    assert.match(check.stderr, fault);
    const inspect = runCli(['inspect', '--tree', ref], { timeout: 30_000 });
    assert.equal(inspect.status, 1, inspect.stderr);
    assert.match(inspect.stderr, fault);
  }
  assert.ok(daemon!.running, 'the daemon is still up');
  const status = JSON.parse((await execCli('status', '--json', '--socket', socket)).stdout);
  assert.deepEqual(status.mounts, []);

  // The intact image passes, mounts and reads.
  const good = `${registry.host}/lazy/small:1`;
  assert.match(runCli(['inspect', '--check', good]).stdout, /^OK: \d+ inodes, \d+ entries/);
  const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
  await execCli('mount', '--socket', socket, good, mnt);
  try {
    assert.equal(fs.readFileSync(path.join(mnt, 'app', 'hello.txt'), 'utf8'), 'hello through a mirror\n');
  } finally {
    await execCli('umount', '--socket', socket, mnt);
  }
  // The cached bootstrap files are the ones validated: each of them as the daemon keeps it passes or not.
  const cached = fs.readdirSync(path.join(work, 'cache', 'bootstraps'));
  const passing = cached.filter((f) => {
    try {
      validateBootstrap(fs.readFileSync(path.join(work, 'cache', 'bootstraps', f)));
      return true;
    } catch {
      return false;
    }
  });
  assert.equal(passing.length, 1, `${cached.length} bootstraps cached, only the intact one passes`);
});

/** What a walk finds: each path with its type, permissions and size (a directory's size left out). */
function listMount(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: Buffer, shown: string) => {
    const st = fs.lstatSync(dir);
    out.push(`${shown} ${(st.mode & 0o177777).toString(8)} ${st.isDirectory() ? '-' : st.size}`);
    if (st.isDirectory())
      for (const name of fs.readdirSync(dir, { encoding: 'buffer' }).sort(Buffer.compare))
        walk(Buffer.concat([dir, Buffer.from('/'), name]), `${shown === '/' ? '' : shown}/${name.toString('latin1')}`);
    else if (st.isFile()) {
      const data = fs.readFileSync(dir);
      if (data.length !== st.size) out.push(`${shown}: read ${data.length} bytes of ${st.size}`);
    }
  };
  walk(Buffer.from(root), '/');
  return out;
}

/** fsck.erofs's complaints about `image` ('' when it passes), its devices sparse files of their sizes. */
function fsckErofs(image: Buffer): string {
  const file = path.join(work, 'fsck.erofs');
  fs.writeFileSync(file, image);
  const devices = new BootstrapReader(image).sb.devices.map((d, i) => {
    const dev = path.join(work, `fsck-device-${i}`);
    fs.writeFileSync(dev, '');
    fs.truncateSync(dev, d.blocks * BLOCK_SIZE);
    return `--device=${dev}`;
  });
  const r = spawnSync('fsck.erofs', [...devices, file], { encoding: 'utf8' });
  return r.status === 0 ? '' : `fsck.erofs exit ${r.status}: ${r.stdout}${r.stderr}`;
}

/** The same list from the validator's own reading of the bootstrap. */
function listBootstrap(image: Buffer): string[] {
  const out: string[] = [];
  validateBootstrap(image, {}, ({ path: p, inode }) => {
    const dir = (inode.mode & 0o170000) === 0o040000;
    out.push(`${p().toString('latin1')} ${inode.mode.toString(8)} ${dir ? '-' : inode.size}`);
  });
  return out.sort();
}

it('mutated bootstraps pushed as lazy images: each refused with the fault, or mounted and read as validated', async (t) => {
  const got = await client.resolveManifest('lazy/small', '1', hostPlatform());
  const [boot, ...blobs] = (JSON.parse(got.raw.toString('utf8')) as ImageManifest).layers;
  const intact = await readAll(await client.getBlob('lazy/small', boot.digest, boot.size));
  // As the daemon checks it: against the blobs the manifest gives, with their sizes.
  const devices = blobs.map(expectedDevice);
  let refused = 0;
  let mounted = 0;
  const runs = Number(process.env.FUZZ_MOUNTS ?? 60);
  // Seeds past the default count that once failed: 189 sets the device's block count past its blob.
  const seeds = [...Array(runs).keys(), ...[189].filter((s) => s >= runs)];
  for (const seed of seeds) {
    const { image, what } = mutateBootstrap(intact, seed);
    let predicted: string | null = null;
    try {
      validateBootstrap(image, { devices });
    } catch (err) {
      predicted = (err as BootstrapError).detail;
    }
    const ref = await pushAltered(`fuzz-${seed}`, () => image, false);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    const r = await runCliAsync(['mount', '--socket', socket, ref, mnt]);
    const context = `seed ${seed} (${what}): ${r.stderr}`;
    if (predicted !== null) {
      assert.notEqual(r.status, 0, context);
      assert.ok(r.stderr.includes(predicted), `${context}\nexpected the fault: ${predicted}`);
      assert.deepEqual(mountedUnder(mnt), [], context);
      refused++;
    } else {
      assert.equal(r.status, 0, context);
      assert.equal(fsckErofs(image), '', context);
      try {
        assert.deepEqual(listMount(mnt).sort(), listBootstrap(image), context);
      } finally {
        await execCli('umount', '--socket', socket, mnt);
      }
      mounted++;
    }
    fs.rmdirSync(mnt);
    assert.ok(daemon!.running, `the daemon ended at ${context}`);
  }
  t.diagnostic(`${refused} refused, ${mounted} mounted and read`);
  assert.ok(refused >= seeds.length / 2 && mounted > 0, `${refused} refused, ${mounted} mounted`);
  assert.deepEqual(mountedUnder(path.join(work, 'mnt-')), [], 'no mount left');
});
