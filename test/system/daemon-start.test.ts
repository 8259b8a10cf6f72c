// How the daemon starts, and how it refuses to: one daemon per cache directory (a second one leaves
// the first's socket and FUSE mount alone), and a start that fails exits at once with the reason,
// leaving nothing mounted and no socket.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { MNT_DETACH, native } from '../../src/native';
import { HOLDER_SOCKET } from '../../src/daemon/fd-holder';
import { holderPids, runCli, runCliAsync, spawnDaemon, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

/** Mounts (mount id and mount point) at or under `dir`. */
function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' '))
    .filter((f) => f[4] === dir || f[4].startsWith(`${dir}/`))
    .map((f) => `${f[0]} ${f[4]}`);
}

const FLAGS = ['--transport', 'fuse', '--metrics-address', ''];

/** Runs `daemon` expecting it to refuse to start: its exit status and stderr, or null if it did not exit. */
function failedStart(cacheDir: string, socket: string, ...flags: string[]) {
  return runCli(['daemon', '--cache-dir', cacheDir, '--socket', socket, ...FLAGS, ...flags], { timeout: 30_000 });
}

describe('daemon start', () => {
  const work = tempDir('daemon-start');
  const daemons: Daemon[] = [];
  after(async () => {
    for (const d of daemons) await d.stop();
    // Only when a test failed: what it left mounted goes before the directory is removed, and a
    // holder still keeping the fds of a daemon that died while starting goes with it.
    for (const m of mountsUnder(work).reverse()) native.umount(m.split(' ')[1], MNT_DETACH);
    for (const d of fs.readdirSync(work))
      for (const pid of holderPids(path.join(work, d, HOLDER_SOCKET))) process.kill(pid, 'SIGKILL');
    cleanup(work);
  });

  it('refuses a second daemon on the same cache directory, naming it and the first one, and leaves the first as it was', async () => {
    const cacheDir = path.join(work, 'shared-cache');
    const first = await startDaemon({ cacheDir, socket: path.join(work, 'first.sock'), flags: FLAGS });
    daemons.push(first);
    const before = mountsUnder(cacheDir);
    assert.equal(before.length, 1, 'the first daemon has its FUSE mount');

    const secondSocket = path.join(work, 'second.sock');
    const r = failedStart(cacheDir, secondSocket);
    assert.equal(r.status, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`cache directory ${cacheDir} is in use by another daemon \\(pid ${first.process.pid}\\)`),
    );
    assert.equal(fs.existsSync(secondSocket), false, 'the second daemon made no socket');
    assert.deepEqual(mountsUnder(cacheDir), before, "the first daemon's FUSE mount is untouched");
    const status = await runCliAsync(['status', '--json', '--socket', first.socket]);
    assert.equal(status.status, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { pid: number }).pid, first.process.pid);

    // The kernel drops the lock with the process, however it ends: no stale lock after kill -9.
    await first.stop('SIGKILL');
    const next = await startDaemon({ cacheDir, socket: path.join(work, 'first.sock'), flags: FLAGS });
    daemons.push(next);
    await next.stop();
    assert.deepEqual(mountsUnder(cacheDir), []);
  });

  it('stopped by SIGTERM while it starts, it finishes starting, then stops cleanly: nothing mounted, no socket', async () => {
    const cacheDir = path.join(work, 'cache-early-term');
    const socket = path.join(work, 'early-term.sock');
    const d = spawnDaemon({ cacheDir, socket, flags: FLAGS });
    daemons.push(d);
    // Its FUSE mount is made early in the start, before the control socket: the signal lands mid-start.
    const deadline = Date.now() + 10_000;
    while (mountsUnder(cacheDir).length === 0 && d.running && Date.now() < deadline)
      await new Promise((r) => setImmediate(r));
    assert.equal(mountsUnder(cacheDir).length, 1, `no FUSE mount appeared:\n${d.log}`);
    await d.stop('SIGTERM');
    assert.equal(d.process.signalCode, null, `killed by the signal, not stopped:\n${d.log}`);
    assert.equal(d.process.exitCode, 0, d.log);
    assert.deepEqual(mountsUnder(cacheDir), []);
    assert.equal(fs.existsSync(socket), false);
  });

  it('refuses a socket another daemon serves, and leaves that daemon serving', async () => {
    const socket = path.join(work, 'served.sock');
    const first = await startDaemon({ cacheDir: path.join(work, 'cache-a'), socket, flags: FLAGS });
    daemons.push(first);
    const cacheDir = path.join(work, 'cache-b');
    const r = failedStart(cacheDir, socket);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`control socket ${socket} is served by another daemon`));
    assert.deepEqual(mountsUnder(cacheDir), [], 'nothing left mounted');
    const status = await runCliAsync(['status', '--json', '--socket', socket]);
    assert.equal(status.status, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { pid: number }).pid, first.process.pid);
    await first.stop();
  });

  it('exits 1 at once on a busy metrics address, leaving nothing mounted and no socket', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
    const address = `127.0.0.1:${(busy.address() as net.AddressInfo).port}`;
    try {
      const cacheDir = path.join(work, 'cache-metrics');
      const socket = path.join(work, 'metrics.sock');
      const r = failedStart(cacheDir, socket, '--metrics-address', address);
      assert.equal(r.status, 1, `exit ${r.status} (${r.signal ?? 'no signal'}): ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`metrics address ${address}: listen EADDRINUSE`));
      assert.deepEqual(mountsUnder(cacheDir), []);
      assert.equal(fs.existsSync(socket), false);
    } finally {
      busy.close();
    }
  });

  it('exits 1 at once on a metrics port out of range', () => {
    const cacheDir = path.join(work, 'cache-port');
    const r = failedStart(cacheDir, path.join(work, 'port.sock'), '--metrics-address', '127.0.0.1:70000');
    assert.equal(r.status, 1, `exit ${r.status} (${r.signal ?? 'no signal'}): ${r.stderr}`);
    assert.match(r.stderr, /metrics address 127\.0\.0\.1:70000: .*port/);
    assert.deepEqual(mountsUnder(cacheDir), []);
  });

  it('exits 1 at once on a socket path under a regular file, leaving nothing mounted', () => {
    const file = path.join(work, 'a-file');
    fs.writeFileSync(file, '');
    const cacheDir = path.join(work, 'cache-socket');
    const socket = path.join(file, 'daemon.sock');
    const r = failedStart(cacheDir, socket);
    assert.equal(r.status, 1, `exit ${r.status} (${r.signal ?? 'no signal'}): ${r.stderr}`);
    assert.match(r.stderr, new RegExp(`control socket ${socket}: `));
    assert.deepEqual(mountsUnder(cacheDir), []);
  });

  it('refuses --concurrency 0 before it starts, leaving nothing mounted', () => {
    const cacheDir = path.join(work, 'cache-flags');
    const r = failedStart(cacheDir, path.join(work, 'flags.sock'), '--concurrency', '0');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /--concurrency "0": must be >= 1/);
    assert.deepEqual(mountsUnder(cacheDir), []);
  });
});
