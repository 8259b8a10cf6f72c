// The daemon restarted under containers running from a lazy image through containerd's proxy
// snapshotter: killed (an OOM kill, a crash) with its fds kept by the holder, and stopped on purpose.
// The containers keep reading their files right, containerd carries on, and nothing is left at the end.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { until, mountInfoLine } from '../lib/assertions';
import {
  startContainerd,
  startDaemonWithSnapshotter,
  stopDaemonWithSnapshotter,
  SNAPSHOTTER,
  snapshotterReconnected,
  type Containerd,
} from '../lib/containerd';
import { criPullImage } from '../lib/cri';
import { execCli, publishLazy, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { minbaseImage } from '../lib/test-images';

/**
 * A container's process: waits for /tmp/go (sleeping between looks, so it reads little of the image
 * meanwhile), then hashes every file of its root filesystem outside /tmp into /tmp/sums.
 */
const WAIT_THEN_HASH =
  'export PATH=/usr/bin:/bin; while [ ! -e /tmp/go ]; do sleep 0.1; done; ' +
  'find / -xdev -type f ! -path "/tmp/*" -exec sha256sum {} + > /tmp/sums.part && mv /tmp/sums.part /tmp/sums';

/** sha256 of every regular file under `root` outside /tmp, by its path in the image. */
function hashTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string): void => {
    for (const e of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const p = `${rel}/${e.name}`;
      if (p === '/tmp') continue;
      if (e.isDirectory()) walk(p);
      else if (e.isFile())
        out.set(
          p,
          createHash('sha256')
            .update(fs.readFileSync(path.join(root, p)))
            .digest('hex'),
        );
    }
  };
  walk('');
  return out;
}

/** `sha256sum` output as a map by path. */
function parseSums(text: string): Map<string, string> {
  return new Map(
    text
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const m = /^([0-9a-f]{64}) {2}(.*)$/.exec(l);
        assert.ok(m, `a sha256sum line: ${JSON.stringify(l)}`);
        return [m[2], m[1]] as [string, string];
      }),
  );
}

const HOW = { SIGKILL: 'killed (its fds kept by the holder)', SIGTERM: 'stopped on purpose' } as const;

for (const transport of ['fanotify', 'fuse'] as const)
  for (const signal of ['SIGKILL', 'SIGTERM'] as const)
    describe(`the daemon ${HOW[signal]} and started again under a running lazy container (${transport})`, () => {
      let registry: RegistryServer;
      let work: string;
      let daemon: Daemon;
      let containerd: Containerd;
      let want: Map<string, string>;
      let original: string;
      // runc's state directory is containerd's, not per instance: an id no other run uses.
      const waiting = `waiting-${transport}-${signal}-${process.pid}`;
      const start = () => startDaemonWithSnapshotter(work, ['--transport', transport]);
      const k8s = (...args: string[]) => containerd.ctr('-n', 'k8s.io', ...args);
      const sn = (...args: string[]) => k8s('snapshots', '--snapshotter', SNAPSHOTTER, ...args);
      const rootfs = (id: string) =>
        path.join(work, 'containerd', 'state', 'io.containerd.runtime.v2.task', 'k8s.io', id, 'rootfs');
      const status = async () =>
        JSON.parse((await execCli('status', '--json', '--socket', path.join(work, 'control.sock'))).stdout) as {
          mounts: Array<{ target: string; blobs: Array<{ chunks: number; cached: number }> }>;
        };
      /** Where the lazy image under container `id` is mounted: the lowest lower directory of its overlay. */
      const lazyMountOf = async (id: string) => {
        const lowerdir = /lowerdir=(\S+)/.exec(await sn('mounts', '/x', id))?.[1];
        assert.ok(lowerdir, `container ${id} has an overlay`);
        return lowerdir.split(':').at(-1) as string;
      };
      /** Starts container `id` running WAIT_THEN_HASH; resolves once its process runs. */
      const runWaiting = async (id: string) => {
        await k8s('run', '-d', '--snapshotter', SNAPSHOTTER, original, id, '/bin/sh', '-c', WAIT_THEN_HASH);
        await until(() => fs.existsSync(path.join(rootfs(id), 'tmp')), `container ${id} running`, 30_000);
      };
      /** Lets container `id` go on, and checks every file it read against umoci's unpack of the image. */
      const hashedRight = async (id: string) => {
        const sums = path.join(rootfs(id), 'tmp', 'sums');
        await until(() => fs.existsSync(sums), `container ${id} hashing its files`, 180_000);
        const got = parseSums(fs.readFileSync(sums, 'utf8'));
        assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), 'the same files');
        const wrong = [...want].filter(([p, h]) => got.get(p) !== h).map(([p]) => p);
        assert.deepEqual(wrong, [], 'every file read right');
      };
      const removeContainer = async (id: string) => {
        await k8s('tasks', 'kill', '-s', 'SIGKILL', id).catch(() => undefined);
        for (const deadline = Date.now() + 10_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 100)))
          if (
            await k8s('tasks', 'rm', id).then(
              () => true,
              (e: Error) => /not found/.test(e.message),
            )
          )
            break;
        await k8s('containers', 'rm', id);
      };
      const reconnected = () => snapshotterReconnected(() => sn('ls'));

      before(async () => {
        const image = minbaseImage();
        work = tempDir(`snapshotter-restart-${transport}-${signal}`);
        want = hashTree(image.unpack(path.join(work, 'reference')));
        registry = await startRegistry();
        publishLazy(image.ref, registry.host, 'minbase');
        original = `${registry.host}/library/minbase:1`;
        daemon = await start();
        containerd = await startContainerd(path.join(work, 'containerd'), path.join(work, 'snapshotter.sock'), {
          cri: { plainHttp: [registry.host] },
        });
        await criPullImage(containerd.address, original);
      });
      after(async () => {
        await removeContainer(waiting).catch(() => undefined);
        await containerd?.stop();
        if (work) await stopDaemonWithSnapshotter(work, daemon);
        await registry?.stop();
        if (work) cleanup(work);
      });

      it('the running container reads the rest of its files, containerd carries on', async () => {
        await runWaiting(waiting);
        const lazyMount = await lazyMountOf(waiting);
        const line = mountInfoLine(lazyMount);
        assert.ok(line, 'the lazy image is mounted');
        const before = {
          list: await sn('ls'),
          info: await sn('info', waiting),
          mounts: await sn('mounts', '/x', waiting),
        };
        const cached = async () => {
          const [m] = (await status()).mounts.filter((m) => m.target === lazyMount);
          assert.ok(m, `the daemon serves ${lazyMount}`);
          return {
            cached: m.blobs.reduce((n, b) => n + b.cached, 0),
            chunks: m.blobs.reduce((n, b) => n + b.chunks, 0),
          };
        };
        const first = await cached();
        assert.ok(first.cached < first.chunks / 2, 'most of the image is still to be read');

        await daemon.stop(signal);
        // Reads while no daemon runs wait for the next one (killed), or find the image filled (stopped).
        fs.writeFileSync(path.join(rootfs(waiting), 'tmp', 'go'), '');
        await new Promise((r) => setTimeout(r, 500));
        daemon = await start();
        if (signal === 'SIGKILL') {
          assert.equal(mountInfoLine(lazyMount), line, 'taken over in place: the same mount');
          await hashedRight(waiting);
          assert.ok((await cached()).cached > first.cached, 'the restarted daemon served the rest');
        } else await hashedRight(waiting);

        await reconnected();
        assert.equal(await sn('ls'), before.list);
        assert.equal(await sn('info', waiting), before.info);
        assert.equal(await sn('mounts', '/x', waiting), before.mounts);
        // A new container from the same image.
        assert.equal(
          (await k8s('run', '--rm', '--snapshotter', SNAPSHOTTER, original, `${waiting}-new`)).trim(),
          'lazy hello',
        );
        assert.ok(mountInfoLine(lazyMount), 'the lazy image is mounted');
      });

      it('leaves no mount and no snapshot once containers and image are removed', async () => {
        await removeContainer(waiting);
        const images = (await k8s('images', 'ls', '-q')).split('\n').filter(Boolean);
        await k8s('images', 'rm', '--sync', ...images);
        const metadata = path.join(work, 'cache', 'snapshots', 'metadata.json');
        const left = () => (JSON.parse(fs.readFileSync(metadata, 'utf8')) as { snapshots: unknown[] }).snapshots;
        await until(() => left().length === 0, 'containerd removing every snapshot', 30_000);
        const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n');
        assert.deepEqual(
          mounts.filter((l) => l.includes(` ${path.join(work, 'snapshots')}/`)),
          [],
          'the lazy image is unmounted',
        );
        assert.deepEqual((await status()).mounts, [], 'the daemon serves no mount');
      });
    });
