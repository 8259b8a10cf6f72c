// A registry that stops answering: the reader gets EIO once --read-timeout passes (not after every
// retry of every stalled request), the daemon's connection to the stuck registry ends with it, other
// reads go on being served, and the same read succeeds once the registry answers again.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { nonZeroPages } from '../lib/chaos';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { MiB } from '../lib/fixtures';
import { execCli, publishLazy, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';

const run = promisify(execFile);
const DEADLINE_S = 3;

describe('a per-read deadline against a stuck registry', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let data: Buffer;

  before(async () => {
    work = tempDir('read-deadline');
    const tree = path.join(work, 'tree');
    fs.mkdirSync(tree);
    data = nonZeroPages(16 * MiB);
    fs.writeFileSync(path.join(tree, 'data'), data);
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    const image = new UmociImage(path.join(work, 'layout'), 'deadline').create().rawLayer(tree);
    publishLazy(image.ref, registry.host, 'deadline');
  });
  after(async () => {
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  for (const transport of ['fanotify', 'fuse'] as const) {
    it(`${transport}: EIO within the deadline, other reads served, the same read right once the registry answers`, async () => {
      const dir = path.join(work, transport);
      fs.mkdirSync(dir);
      const socket = path.join(dir, 'control.sock');
      const mnt = path.join(dir, 'mnt');
      fs.mkdirSync(mnt);
      const daemon: Daemon = await startDaemon({
        cacheDir: path.join(dir, 'cache'),
        socket,
        flags: [
          ...['--transport', transport, '--metrics-address', ''],
          ...['--read-timeout', String(DEADLINE_S), '--read-ahead', '0'],
        ],
      });
      try {
        await execCli('mount', '--socket', socket, `${proxy.host}/lazy/deadline:1`, mnt);
        const file = path.join(mnt, 'data');
        const readAt = (offset: number, length: number) =>
          run('dd', [`if=${file}`, 'bs=4096', `skip=${offset / 4096}`, `count=${length / 4096}`, 'status=none'], {
            encoding: 'buffer',
            maxBuffer: 1 << 24,
          });
        // The start is fetched while the registry answers (the kernel's read-ahead stays far below FAR).
        const FAR = 12 * MiB;
        const SOME = 64 * 1024;
        assert.ok((await readAt(0, SOME)).stdout.equals(data.subarray(0, SOME)));
        proxy.add({ method: 'GET', path: /\/v2\/lazy\/deadline\/blobs\//, times: Infinity, fault: { kind: 'stall' } });
        const t0 = Date.now();
        const stuck = readAt(FAR, SOME).then(
          () => 'read',
          (err: { stderr: Buffer }) => err.stderr.toString(),
        );
        // Meanwhile a cached range reads at once.
        await new Promise((r) => setTimeout(r, 500));
        const t1 = Date.now();
        assert.ok((await readAt(0, SOME)).stdout.equals(data.subarray(0, SOME)));
        assert.ok(Date.now() - t1 < 1000, 'a cached read does not wait for the stuck one');
        assert.match(await stuck, /Input\/output error/);
        const waited = Date.now() - t0;
        assert.ok(
          waited >= DEADLINE_S * 1000 - 100 && waited < DEADLINE_S * 1000 + 3000,
          `EIO after ${waited} ms, the deadline being ${DEADLINE_S} s`,
        );
        assert.match(daemon.log, /not served in time/);
        assert.ok(
          proxy.requests.some((r) => r.path.includes('/blobs/') && r.status === 0),
          'the registry was asked',
        );
        // The daemon itself ends the stalled requests' connections, soon after the deadline.
        for (let i = 0; i < 100 && proxy.held() > 0; i++) await new Promise((r) => setTimeout(r, 50));
        assert.equal(proxy.held(), 0, 'no request left waiting on the stuck registry');
        // The registry answers again: the same range is fetched anew, not joined to the stuck fetch.
        proxy.reset();
        const t2 = Date.now();
        assert.ok((await readAt(FAR, SOME)).stdout.equals(data.subarray(FAR, FAR + SOME)));
        assert.ok(Date.now() - t2 < DEADLINE_S * 1000, `served in ${Date.now() - t2} ms once the registry answers`);
        await execCli('umount', '--socket', socket, mnt);
      } finally {
        proxy.reset();
        await daemon.stop();
      }
    });
  }
});
