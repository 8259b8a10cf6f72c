// A daemon killed with SIGKILL while its registry is down is taken over by the next one all the same:
// the lazy manifest, bootstrap and chunk tables kept in the cache when the image was mounted are all
// a mount needs to be resumed (kernel-tests/fdstore.py plays systemd: its fd store keeps the fanotify
// group, Restart=on-failure starts the daemon again). The image is the one mounted, though its tag
// moved to another image meanwhile. Cached data reads right through fds opened before the kill; data
// not cached fails with EIO (or waits) while the registry is down, never reads as zeros, and reads
// right once it is back.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountInfoLine, readRange, until } from '../lib/assertions';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { type Daemon, execCli, execCliSync, publishLazy, superviseDaemon } from '../lib/harness';
import { MiB } from '../lib/fixtures';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';

const FILES = ['a.bin', 'b.bin'] as const;
type Files = Record<(typeof FILES)[number], Buffer>;

/** An image of FILES, random bytes each, published as `<host>/library/<name>:1` and converted. */
function publish(work: string, registry: string, name: string): { files: Files; source: string; lazy: string } {
  const tree = path.join(work, `tree-${name}`);
  fs.mkdirSync(tree);
  const files = {} as Files;
  for (const f of FILES) {
    files[f] = crypto.randomBytes(6 * MiB + 4321);
    fs.writeFileSync(path.join(tree, f), files[f]);
  }
  const image = new UmociImage(path.join(work, `layout-${name}`), 'v1').create().rawLayer(tree);
  return { files, ...publishLazy(image.ref, registry, name) };
}

describe('a daemon killed while the registry is down resumes its mounts from the cache', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let mnt = '';
  let supervisor: Daemon | undefined;
  let first: ReturnType<typeof publish>;
  let second: ReturnType<typeof publish>;

  before(async () => {
    work = tempDir('offline-takeover');
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    first = publish(work, registry.host, 'offline');
    second = publish(work, registry.host, 'moved');
  });

  after(async () => {
    if (process.env.OFFLINE_TAKEOVER_LOG) fs.writeFileSync(process.env.OFFLINE_TAKEOVER_LOG, supervisor?.log ?? '');
    await supervisor?.stop('SIGTERM');
    if (mnt && mountInfoLine(mnt)) {
      spawn('umount', ['-l', mnt], { stdio: 'ignore' });
    }
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it(
    'resumes the same mount of the same image, cached data read, the rest once the registry is back',
    {
      timeout: 240_000,
    },
    async (t) => {
      const socket = path.join(work, 'control.sock');
      const cli = (...args: string[]) => execCli(...args, '--socket', socket);
      const daemon = superviseDaemon({
        cacheDir: path.join(work, 'cache'),
        socket,
        notifySocket: path.join(work, 'notify.sock'),
        flags: ['--transport', 'fanotify', '--metrics-address', '', '--read-ahead', '0'],
      });
      supervisor = daemon;
      const waitForLog = (what: RegExp) =>
        until(() => what.test(daemon.log), `${what} in the log:\n${daemon.log}`, 120_000);
      await until(() => fs.existsSync(socket), `the daemon's socket:\n${daemon.log}`, 60_000);
      const status = async () =>
        JSON.parse((await cli('status', '--json')).stdout) as { pid: number; mounts: Array<{ digest: string }> };

      // Mounted through the proxy, which stands for the registry from here on.
      const lazyRef = first.lazy.replace(registry.host, proxy.host);
      mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', lazyRef, mnt);
      const mountLine = () => mountInfoLine(mnt);
      const mountedLine = mountLine();
      assert.ok(mountedLine, 'mounted');
      const killed = await status();
      assert.equal(killed.mounts.length, 1);

      const a = await fs.promises.open(path.join(mnt, 'a.bin'));
      const b = await fs.promises.open(path.join(mnt, 'b.bin'));
      try {
        assert.ok((await readRange(a, 0, MiB)).equals(first.files['a.bin'].subarray(0, MiB)), 'a.bin, first MiB');

        // The tag moves to another image, then the registry goes down and the daemon is killed.
        execCliSync(['convert', '-q', second.source, first.lazy]);
        proxy.add({ path: /./, times: Number.MAX_SAFE_INTEGER, fault: { kind: 'status', status: 503 } });
        proxy.requests.length = 0;
        daemon.log = '';
        process.kill(killed.pid, 'SIGKILL');
        await waitForLog(/daemon ready/);
        assert.match(daemon.log, /resumed a mount after restart/);
        assert.doesNotMatch(daemon.log, /could not resume|restored a mount/);
        assert.equal(mountLine(), mountedLine, 'the same mount, not a new one');
        assert.deepEqual(
          proxy.requests.map((r) => `${r.method} ${r.path}`),
          [],
          'the restarted daemon asked nothing of the registry',
        );
        const resumed = await status();
        assert.notEqual(resumed.pid, killed.pid);
        assert.equal(
          resumed.mounts[0].digest,
          killed.mounts[0].digest,
          'the image mounted, not what the tag names now',
        );

        // Cached: read through the fd opened before the kill. Not cached: EIO, or a wait; never zeros.
        assert.ok((await readRange(a, 0, MiB)).equals(first.files['a.bin'].subarray(0, MiB)), 'a.bin, cached MiB');
        const notCached = first.files['a.bin'].subarray(3 * MiB, 4 * MiB);
        let registryDown = true;
        let failed = false;
        const down = readRange(a, 3 * MiB, MiB).then(
          (got) => {
            assert.ok(!registryDown, `read ${got.length} bytes not cached while the registry was down`);
            assert.ok(got.equals(notCached), 'a.bin, a read that waited for the registry');
          },
          (err: NodeJS.ErrnoException) => {
            assert.equal(err.code, 'EIO', String(err));
            failed = true;
          },
        );
        await until(() => proxy.requests.length > 0, 'the daemon asking the registry for the miss', 30_000);
        await Promise.race([down, new Promise((r) => setTimeout(r, 20_000))]);

        registryDown = false;
        proxy.reset();
        await down;
        t.diagnostic(`the read not cached, while the registry was down: ${failed ? 'EIO' : 'waited'}`);
        assert.ok(
          (await readRange(a, 3 * MiB, MiB)).equals(notCached),
          'a.bin, the MiB not cached, once the registry is back',
        );
        assert.ok((await readRange(b, 0, 7 * MiB)).equals(first.files['b.bin']), 'b.bin through the fd opened before');
        // Never a synchronous read of the mount here: the proxy answering the daemon runs on this thread.
        for (const f of FILES)
          assert.ok((await fs.promises.readFile(path.join(mnt, f))).equals(first.files[f]), `${f} afresh`);
      } finally {
        await a.close();
        await b.close();
      }
      await cli('umount', mnt);
      await supervisor.stop('SIGTERM');
    },
  );
});
