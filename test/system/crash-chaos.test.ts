// The daemon SIGKILLed and brought back many times while readers read, per transport, with the
// registry behind a fault proxy (5xx, connection resets, stalls): no read may return a wrong byte,
// and every fd opened before the first crash reads right once the last daemon is up. Reads during
// a gap may block or fail; the summary line says which.
//
// Both fd keepers: the daemon under kernel-tests/fdstore.py (systemd's fd store and its restart), and
// the daemon started again by hand with the holder process keeping the fds (a node without systemd).
// CHAOS_RESTART=fdstore or =restart runs one of them only.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { daemonRunner, Reader, summaryLine, tally, writeRandomTree, type Gap, type RestartKind } from '../lib/chaos';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { MiB } from '../lib/fixtures';
import { execCli, publishLazy } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { mounts } from '../../src/mount/mountinfo';
import { unmount } from '../../src/mount/file-backed';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';

const CRASHES = 30;
const READERS = 4;
/** How long reads through old fds may take to come right after the last restart. */
const RECOVERY_MS = 20_000;
const KEEPERS: readonly RestartKind[] =
  process.env.CHAOS_RESTART === 'restart' || process.env.CHAOS_RESTART === 'fdstore'
    ? [process.env.CHAOS_RESTART]
    : ['fdstore', 'restart'];
// Large enough that misses go on through every crash under fanotify too, whose chunks of a mounted
// image are never evicted (the cache bound below only keeps FUSE's small).
const SIZES = [48 * MiB, 40 * MiB + 12345, 36 * MiB, 32 * MiB + 7];

describe('daemon crashes under random reads', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let tree: string;
  let names: string[];

  before(async () => {
    work = tempDir('chaos');
    tree = path.join(work, 'tree');
    names = writeRandomTree(tree, SIZES);
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    const image = new UmociImage(path.join(work, 'layout'), 'chaos').create().rawLayer(tree);
    publishLazy(image.ref, registry.host, 'chaos');
  });
  after(async () => {
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  const transports = (['fanotify', 'fuse'] as const).filter(
    (t) => !process.env.CHAOS_TRANSPORT || process.env.CHAOS_TRANSPORT === t,
  );
  for (const transport of transports)
    for (const RESTART of KEEPERS) {
      it(`${transport} (${RESTART === 'fdstore' ? "systemd's fd store" : 'the holder process'}): ${CRASHES} SIGKILLs, no wrong byte, old fds read right after the last restart`, async () => {
        const dir = path.join(work, `${transport}-${RESTART}`);
        fs.mkdirSync(dir);
        const socket = path.join(dir, 'control.sock');
        const mnt = path.join(dir, 'mnt');
        fs.mkdirSync(mnt);
        const runner = daemonRunner(RESTART, {
          cacheDir: path.join(dir, 'cache'),
          socket,
          work: dir,
          // A cache smaller than the image, no read-ahead: misses go on happening through every crash.
          flags: [
            '--transport',
            transport,
            '--metrics-address',
            '',
            '--cache-max-bytes',
            '6M',
            '--read-ahead',
            '0',
            '--read-timeout',
            '15',
          ],
        });
        const readers: Reader[] = [];
        const gaps: Gap[] = [];
        try {
          await runner.start();
          await execCli('mount', '--socket', socket, `${proxy.host}/lazy/chaos:1`, mnt);
          const files = names.map((name) => ({ name, mounted: path.join(mnt, name), source: path.join(tree, name) }));
          for (let i = 0; i < READERS; i++) readers.push(new Reader(files));
          for (const r of readers) await r.whenOpened(30_000);
          const blobs = /\/v2\/lazy\/chaos\/blobs\//;
          proxy.add({
            method: 'GET',
            path: blobs,
            times: Infinity,
            probability: 0.05,
            fault: { kind: 'status', status: 503 },
          });
          proxy.add({ method: 'GET', path: blobs, times: Infinity, probability: 0.05, fault: { kind: 'reset' } });
          proxy.add({
            method: 'GET',
            path: blobs,
            times: Infinity,
            probability: 0.05,
            fault: { kind: 'stall', ms: 2000 },
          });
          for (let i = 0; i < CRASHES; i++) {
            await new Promise((r) => setTimeout(r, 200 + Math.random() * 1300));
            gaps.push(await runner.crash());
          }
          await new Promise((r) => setTimeout(r, 2000));
          proxy.reset();
          await Promise.all(readers.map((r) => r.verify(RECOVERY_MS)));
        } finally {
          await Promise.all(readers.map((r) => r.kill()));
          proxy.reset();
          await execCli('umount', '--socket', socket, mnt).catch(() => undefined);
          await runner.stop();
          // What a failed run leaves: detached, so that the next test and the cleanup go on.
          for (const m of mounts()
            .filter((e) => e.target.startsWith(dir))
            .reverse())
            try {
              unmount(m.target, { lazy: true });
            } catch {
              // gone meanwhile
            }
        }
        const summary = tally(transport, RESTART, readers, gaps);
        console.log(summaryLine(summary));
        // CHAOS_LOG_DIR=DIR keeps each case's daemon logs there.
        if (process.env.CHAOS_LOG_DIR)
          fs.writeFileSync(path.join(process.env.CHAOS_LOG_DIR, `${transport}-${RESTART}.log`), runner.log());
        assert.equal(summary.crashes, CRASHES);
        assert.ok(summary.reads > 0, 'the readers read');
        assert.equal(
          summary.wrong,
          0,
          `no read returns wrong bytes; some: ${JSON.stringify(summary.wrongSamples)}\n${summaryLine(summary)}`,
        );
        assert.deepEqual(summary.oldFds.failures, [], 'every fd opened before the first crash reads right at the end');
        assert.equal(summary.oldFds.files, READERS * names.length);
      });
    }
});
