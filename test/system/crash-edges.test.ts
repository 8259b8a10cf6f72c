// The crash cases around the fd holder, per transport: the holder killed under a running daemon
// (the daemon keeps its fds in a new one, so a later crash is still taken over in place), an image
// unmounted while no daemon ran (the next daemon comes up and restores it), and the daemon and the
// holder both killed (FUSE: EIO, never zeros; the next daemon mounts again).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountInfoLine, until } from '../lib/assertions';
import { writeRandomTree } from '../lib/chaos';
import { execCli, holderPids, publishLazy, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';
import { mounts } from '../../src/mount/mountinfo';
import { unmount } from '../../src/mount/file-backed';
import { HOLDER_SOCKET } from '../../src/daemon/fd-holder';

const MiB = 1 << 20;
const SIZE = 8 * MiB;

/** sha256 of a file read by a child process (a read that waits never blocks the test), or its error. */
function sha256In(file: string, timeoutSec = 30): { hash?: string; error?: string } {
  const r = spawnSync('timeout', ['-s', 'KILL', String(timeoutSec), 'sha256sum', file], { encoding: 'utf8' });
  if (r.status === 0) return { hash: r.stdout.split(' ')[0] };
  return { error: r.stderr.trim() || `exit ${r.status ?? r.signal}` };
}

describe('crash edges with the fd holder', () => {
  let registry: RegistryServer;
  let work: string;
  let ref: string;
  let names: string[];
  const want = new Map<string, string>();
  const daemons: Daemon[] = [];

  before(async () => {
    work = tempDir('crash-edges');
    const tree = path.join(work, 'tree');
    names = writeRandomTree(tree, [SIZE, SIZE, SIZE]);
    for (const n of names)
      want.set(
        n,
        crypto
          .createHash('sha256')
          .update(fs.readFileSync(path.join(tree, n)))
          .digest('hex'),
      );
    registry = await startRegistry();
    const image = new UmociImage(path.join(work, 'layout'), 'edges').create().rawLayer(tree);
    ref = publishLazy(image.ref, registry.host, 'edges').lazy;
  });
  after(async () => {
    for (const d of daemons) await d.stop('SIGTERM');
    for (const m of mounts()
      .filter((e) => e.target.startsWith(work))
      .reverse())
      try {
        unmount(m.target, { lazy: true });
      } catch {
        // gone meanwhile
      }
    await registry?.stop();
    cleanup(work);
  });

  for (const transport of ['fanotify', 'fuse'] as const) {
    describe(transport, () => {
      const dir = () => path.join(work, transport);
      const cacheDir = () => path.join(dir(), 'cache');
      const socket = () => path.join(dir(), 'control.sock');
      const holders = () => holderPids(path.join(cacheDir(), HOLDER_SOCKET));
      const cli = (...args: string[]) => execCli(...args, '--socket', socket());
      const start = async () => {
        const d = await startDaemon({
          cacheDir: cacheDir(),
          socket: socket(),
          flags: ['--transport', transport, '--metrics-address', ''],
        });
        daemons.push(d);
        return d;
      };
      const status = async () => JSON.parse((await cli('status', '--json')).stdout);
      let daemon: Daemon;
      let mnt: string;

      before(async () => {
        fs.mkdirSync(dir(), { recursive: true });
        mnt = path.join(dir(), 'mnt');
        fs.mkdirSync(mnt);
        daemon = await start();
        await cli('mount', ref, mnt);
      });
      after(async () => {
        await daemon?.stop('SIGTERM');
        for (const pid of holders()) process.kill(pid, 'SIGKILL');
      });

      it('the holder killed under a running daemon: a new one keeps the fds, and a later crash is taken over in place', async () => {
        assert.equal((await status()).fdKeeper, 'holder');
        const [first] = holders();
        assert.ok(first, 'the daemon started a holder');
        process.kill(first, 'SIGKILL');
        await until(
          () => holders().length === 1 && holders()[0] !== first && daemon.log.includes('keeps the fds again'),
          'a new holder keeping the fds',
          15_000,
        );
        assert.equal(sha256In(path.join(mnt, names[0])).hash, want.get(names[0]), 'served while the holder changed');
        const line = mountInfoLine(mnt);
        await daemon.stop('SIGKILL');
        daemon = await start();
        assert.equal(mountInfoLine(mnt), line, 'taken over in place: the fds were kept by the new holder');
        assert.equal(sha256In(path.join(mnt, names[1])).hash, want.get(names[1]));
      });

      it('an image unmounted while no daemon ran: the next daemon comes up and restores it', async () => {
        await daemon.stop('SIGKILL');
        unmount(mnt, { lazy: true });
        daemon = await start();
        await until(() => mountInfoLine(mnt) !== undefined, 'the mount restored', 30_000);
        const s = await status();
        assert.deepEqual(
          s.mounts.map((m: { target: string }) => m.target),
          [mnt],
        );
        for (const n of names) assert.equal(sha256In(path.join(mnt, n)).hash, want.get(n), n);
      });

      if (transport === 'fuse')
        it('the daemon and the holder both killed: EIO for data not cached, never zeros; the next daemon mounts again', async () => {
          // Nothing cached, so that the read below needs the daemon.
          await cli('umount', mnt);
          await cli('gc', '--max-size', '0');
          await cli('mount', ref, mnt);
          const holderPid = holders()[0];
          await daemon.stop('SIGKILL');
          process.kill(holderPid, 'SIGKILL');
          await until(() => holders().length === 0, 'the holder gone', 10_000);
          spawnSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
          const dead = sha256In(path.join(mnt, names[2]), 20);
          assert.equal(dead.hash, undefined, 'no bytes without a daemon');
          assert.match(dead.error ?? '', /Input\/output error|not connected/);
          daemon = await start();
          await until(() => mountInfoLine(mnt) !== undefined, 'mounted again', 30_000);
          assert.equal(sha256In(path.join(mnt, names[2])).hash, want.get(names[2]));
        });
    });
  }
});
