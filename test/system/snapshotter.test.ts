// The daemon as containerd's proxy snapshotter: Debian's containerd started with its own root and
// the `erofs-ondemand` proxy plugin, images from a real registry, containers run by runc, and CRI
// pulls as the kubelet makes them.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  startContainerd,
  startDaemonWithSnapshotter,
  stopDaemonWithSnapshotter,
  SNAPSHOTTER,
  snapshotterReconnected,
  type Containerd,
} from '../lib/containerd';
import { publishLazy, type Daemon } from '../lib/harness';
import type { Mount__Output } from '../../src/snapshotter/generated/containerd/types/Mount';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { criPullImage } from '../lib/cri';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { compareTreesInChild } from '../lib/tree-compare';
import { pullLazyLayers, snapshotsClient } from '../lib/snapshots-client';
import { minbaseImage, UmociImage } from '../lib/test-images';

const run = promisify(execFile);

describe('containerd with the erofs-ondemand snapshotter', () => {
  let registry: RegistryServer;
  let work: string;
  let daemon: Daemon;
  let containerd: Containerd;
  let reference: string;
  let plain: string;
  const sock = () => path.join(work, 'snapshotter.sock');
  const start = () => startDaemonWithSnapshotter(work);
  const sn = (...args: string[]) => containerd.ctr('snapshots', '--snapshotter', SNAPSHOTTER, ...args);

  /** Mounts snapshot `key` of `snapshotter` as containerd says to, on a new directory `name` in the work directory. */
  async function mountSnapshot(snapshotter: string, key: string, name: string): Promise<string> {
    const target = path.join(work, name);
    fs.mkdirSync(target);
    const mount = (await containerd.ctr('snapshots', '--snapshotter', snapshotter, 'mounts', target, key)).trim();
    assert.match(mount, /^mount -t overlay overlay .*lowerdir=/);
    execFileSync('sh', ['-c', mount]);
    return target;
  }

  let image: ReturnType<typeof minbaseImage>;

  before(async () => {
    image = minbaseImage();
    work = tempDir('snapshotter');
    reference = image.unpack(path.join(work, 'reference'));
    registry = await startRegistry();
    plain = `${registry.host}/library/plain:1`;
    execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${image.ref}`, `docker://${plain}`]);
    daemon = await start();
    assert.equal(fs.statSync(sock()).mode & 0o777, 0o600, 'the snapshotter socket is root-only');
    containerd = await startContainerd(path.join(work, 'containerd'), sock());
  });
  after(async () => {
    await containerd?.ctr('containers', 'rm', 'cmp').catch(() => undefined);
    await containerd?.stop();
    if (work) await stopDaemonWithSnapshotter(work, daemon);
    await registry?.stop();
    if (work) cleanup(work);
  });

  it('runs an image without a lazy form as an overlayfs snapshotter would', async () => {
    const started = BigInt(Date.now() - 1000) * 1_000_000n;
    await containerd.ctr('images', 'pull', '--plain-http', '--snapshotter', SNAPSHOTTER, plain);
    const out = await containerd.ctr('run', '--rm', '--snapshotter', SNAPSHOTTER, plain, 'hello');
    assert.equal(out.trim(), 'lazy hello');
    // The container's root filesystem as containerd mounts it: every file as containerd's own overlayfs
    // snapshotter gives it (umoci's unpack differs from containerd's in directory times).
    await containerd.ctr('images', 'pull', '--plain-http', '--snapshotter', 'overlayfs', plain);
    await containerd.ctr('containers', 'create', '--snapshotter', SNAPSHOTTER, plain, 'cmp');
    await containerd.ctr('containers', 'create', '--snapshotter', 'overlayfs', plain, 'cmp-overlayfs');
    const ours = await mountSnapshot(SNAPSHOTTER, 'cmp', 'rootfs');
    const theirs = await mountSnapshot('overlayfs', 'cmp-overlayfs', 'rootfs-overlayfs');
    try {
      // Times containerd's unpack gave directories as it went (after `started`) differ between two unpacks.
      const unpackTime = (diff: string) =>
        [...diff.matchAll(/mtimeNs (\d+) != (\d+)$/g)].some((m) => BigInt(m[1]) >= started && BigInt(m[2]) >= started);
      assert.deepEqual(
        (await compareTreesInChild(theirs, ours)).filter((d) => !unpackTime(d)),
        [],
      );
    } finally {
      for (const m of [ours, theirs]) execFileSync('umount', [m]);
      await containerd.ctr('containers', 'rm', 'cmp-overlayfs');
    }
  });

  it('answers List, Stat and Mounts after a daemon restart as before', async () => {
    const list = await sn('ls');
    const info = await sn('info', 'cmp');
    const mounts = await sn('mounts', '/x', 'cmp');
    assert.match(list, /cmp\s/);
    await daemon.stop();
    daemon = await start();
    await snapshotterReconnected(() => sn('ls'));
    assert.equal(await sn('ls'), list);
    assert.equal(await sn('info', 'cmp'), info);
    assert.equal(await sn('mounts', '/x', 'cmp'), mounts);
  });

  it('removes snapshots with their directories when containerd lets go of them', async () => {
    await containerd.ctr('containers', 'rm', 'cmp');
    await containerd.ctr('images', 'rm', '--sync', plain);
    assert.equal((await sn('ls')).trim().split('\n').length, 1, 'only the header line is left');
    const dirs = fs.readdirSync(path.join(work, 'cache', 'snapshots')).filter((e) => /^\d+$/.test(e));
    assert.deepEqual(dirs, []);
  });

  it('commits the layers of an image with a lazy form at once, and mounts it under a view', async () => {
    const { source } = publishLazy(image.ref, registry.host, 'minbase');
    const client = snapshotsClient(sock());
    const { list, unary } = client;
    try {
      // As containerd's unpacker does for a CRI pull: each layer prepared with the CRI labels.
      const placeholders = await pullLazyLayers(client, source);
      const parent = placeholders[placeholders.length - 1];
      const { mounts } = await unary<{ mounts: Mount__Output[] }>('View', { key: 'default/view', parent });
      assert.equal(mounts.length, 1);
      assert.equal(mounts[0].type, 'bind');
      assert.deepEqual(mounts[0].options, ['ro', 'rbind']);
      const lazyMount = mounts[0].source;
      assert.ok(
        fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${lazyMount} `),
        'the lazy image is mounted',
      );
      assert.deepEqual(await compareTreesInChild(reference, lazyMount), []);
      await unary('Remove', { key: 'default/view' });
      assert.ok(
        !fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(` ${lazyMount} `),
        'unmounted with its last user',
      );
      for (const name of placeholders.reverse()) await unary('Remove', { key: name });
      assert.deepEqual(await list(''), []);
    } finally {
      client.close();
    }
  });
});

describe('a Kubernetes-style pull through CRI', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let daemon: Daemon;
  let containerd: Containerd;
  let reference: string;

  before(async () => {
    const image = minbaseImage();
    work = tempDir('snapshotter-cri');
    reference = image.unpack(path.join(work, 'reference'));
    registry = await startRegistry();
    publishLazy(image.ref, registry.host, 'minbase');
    proxy = await startFaultProxy(registry.host);
    daemon = await startDaemonWithSnapshotter(work);
    containerd = await startContainerd(path.join(work, 'containerd'), path.join(work, 'snapshotter.sock'), {
      cri: { plainHttp: [proxy.host] },
    });
  });
  after(async () => {
    await containerd?.ctr('-n', 'k8s.io', 'containers', 'rm', 'cmp').catch(() => undefined);
    await containerd?.stop();
    if (work) await stopDaemonWithSnapshotter(work, daemon);
    await proxy?.stop();
    await registry?.stop();
    if (work) cleanup(work);
  });

  it('pulls the original reference without a layer download and runs it from the lazy image', async () => {
    // The original reference, as a pod spec names it; its layers go through the proxy if anything fetches them.
    const original = `${proxy.host}/library/minbase:1`;
    // Not execFileSync: the proxy serving skopeo runs in this process.
    const { stdout: raw } = await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${original}`]);
    const layers = (JSON.parse(raw) as { layers: Array<{ digest: string }> }).layers.map((l) => l.digest);
    proxy.reset();
    const logFrom = daemon.log.length;
    await criPullImage(containerd.address, original);
    const fetched = proxy.requests.filter((r) => layers.some((l) => r.path.endsWith(`/blobs/${l}`)));
    assert.ok(
      proxy.requests.some((r) => r.path.includes('/manifests/')),
      'containerd pulled through the proxy',
    );
    assert.deepEqual(fetched, [], 'no layer blob was fetched');
    // The pull had the daemon prepare the lazy image's mount (bootstrap, check, tables) meanwhile.
    const prepared = () => daemon.log.slice(logFrom).includes('"message":"image prepared ahead of its mount"');
    for (const deadline = Date.now() + 10_000; !prepared() && Date.now() < deadline;)
      await new Promise((r) => setTimeout(r, 50));
    assert.ok(prepared(), 'the lazy image was prepared during the pull');

    const k8s = (...args: string[]) => containerd.ctr('-n', 'k8s.io', ...args);
    const out = await k8s('run', '--rm', '--snapshotter', SNAPSHOTTER, original, 'hello');
    assert.equal(out.trim(), 'lazy hello');
    // The container's root as runc gets it: every file as umoci unpacks the image, but the root
    // directory itself, which is the container's fresh writable upper directory.
    await k8s('containers', 'create', '--snapshotter', SNAPSHOTTER, original, 'cmp');
    const target = path.join(work, 'rootfs');
    fs.mkdirSync(target);
    execFileSync('sh', ['-c', (await k8s('snapshots', '--snapshotter', SNAPSHOTTER, 'mounts', target, 'cmp')).trim()]);
    try {
      const diffs = await compareTreesInChild(reference, target);
      assert.deepEqual(
        diffs.filter((d) => !d.startsWith('"/": ')),
        [],
      );
    } finally {
      execFileSync('umount', [target]);
    }
  });

  it('gives an image without a lazy form that shares base layers with a lazy one its own rootfs', async () => {
    const started = BigInt(Date.now() - 1000) * 1_000_000n;
    // The lazy image's first two layers alone (the second deletes files of the first): containerd
    // finds both as the lazy image's placeholders by chain id and downloads nothing.
    const shared = sharedBaseImage(path.join(work, 'shared-layout'));
    const sharedRootfs = shared.unpack(path.join(work, 'shared-reference'));
    const ref = `${proxy.host}/library/shared:1`;
    await run('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${shared.ref}`, `docker://${ref}`]);
    await criPullImage(containerd.address, ref);
    const k8s = (...args: string[]) => containerd.ctr('-n', 'k8s.io', ...args);
    await k8s('containers', 'create', '--snapshotter', SNAPSHOTTER, ref, 'shared');
    const target = path.join(work, 'shared-rootfs');
    fs.mkdirSync(target);
    execFileSync('sh', [
      '-c',
      (await k8s('snapshots', '--snapshotter', SNAPSHOTTER, 'mounts', target, 'shared')).trim(),
    ]);
    try {
      const diffs = await compareTreesInChild(sharedRootfs, target);
      // The root directory is the container's fresh upper directory. A directory a layer changes
      // under without listing it (/usr over a deletion below it) is created at extraction, as
      // containerd's own applier creates it: its time is then the extraction's.
      const extracted = (d: string) => /mtimeNs \d+ != (\d+)$/.test(d) && BigInt(/(\d+)$/.exec(d)![1]) >= started;
      assert.deepEqual(
        diffs.filter((d) => !d.startsWith('"/": ') && !extracted(d)),
        [],
      );
    } finally {
      execFileSync('umount', [target]);
      await k8s('containers', 'rm', 'shared');
    }
    // The lazy image's containers still see the whole lazy image.
    assert.equal(
      (await k8s('run', '--rm', '--snapshotter', SNAPSHOTTER, `${proxy.host}/library/minbase:1`, 'again')).trim(),
      'lazy hello',
    );
  });

  it('leaves no mount and no snapshot once images and containers are removed', async () => {
    const k8s = (...args: string[]) => containerd.ctr('-n', 'k8s.io', ...args);
    await k8s('containers', 'rm', 'cmp');
    // CRI names each image three ways (tag, digest, id): all go.
    const images = (await k8s('images', 'ls', '-q')).split('\n').filter(Boolean);
    assert.ok(images.length >= 2);
    await k8s('images', 'rm', '--sync', ...images);
    // containerd's garbage collector removes the snapshotter's snapshots after the images, on its own time.
    const metadata = path.join(work, 'cache', 'snapshots', 'metadata.json');
    const left = () => (JSON.parse(fs.readFileSync(metadata, 'utf8')) as { snapshots: unknown[] }).snapshots;
    for (const deadline = Date.now() + 30_000; left().length > 0 && Date.now() < deadline;)
      await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(left(), [], 'containerd removed every snapshot, placeholders too');
    const lazyMounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
    assert.deepEqual(
      lazyMounts.filter((l) => l.includes(` ${path.join(work, 'snapshots')}/`)),
      [],
      'the lazy image is unmounted',
    );
  });
});

/** The minbase image's first `layers` layers, as tag `shared` of a copy of its layout in `dir`. */
function sharedBaseImage(dir: string, layers = 2): UmociImage {
  const from = minbaseImage();
  execFileSync('cp', ['-al', from.layout, dir]); // hard links: the cached layout itself is never written
  const blob = (d: string) => path.join(dir, 'blobs', 'sha256', d.slice('sha256:'.length));
  const put = (doc: unknown) => {
    const bytes = Buffer.from(JSON.stringify(doc));
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    fs.writeFileSync(blob(digest), bytes);
    return { digest, size: bytes.length };
  };
  const indexFile = path.join(dir, 'index.json');
  const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as {
    manifests: Array<{ mediaType: string; digest: string; size: number; annotations?: Record<string, string> }>;
  };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === from.tag);
  assert.ok(desc, `tag ${from.tag} in ${from.layout}`);
  const manifest = JSON.parse(fs.readFileSync(blob(desc.digest), 'utf8'));
  const config = JSON.parse(fs.readFileSync(blob(manifest.config.digest), 'utf8'));
  config.rootfs.diff_ids = config.rootfs.diff_ids.slice(0, layers);
  config.history = (config.history ?? []).filter((h: { empty_layer?: boolean }) => !h.empty_layer).slice(0, layers);
  manifest.config = { ...manifest.config, ...put(config) };
  manifest.layers = manifest.layers.slice(0, layers);
  const m = put(manifest);
  index.manifests.push({
    mediaType: desc.mediaType,
    ...m,
    annotations: { 'org.opencontainers.image.ref.name': 'shared' },
  });
  fs.rmSync(indexFile); // a link to the cached layout's
  fs.writeFileSync(indexFile, JSON.stringify(index));
  return new UmociImage(dir, 'shared');
}
