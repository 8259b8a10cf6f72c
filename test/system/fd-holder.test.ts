// The fd holder (native/holder/holder.cc, src/daemon/fd-holder.ts), with real processes: what it keeps
// survives its client's SIGKILL and goes only to the next process holding the cache lock; a daemon
// starts one, starts another when it dies and keeps its fds there again; it exits holding nothing.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { lockCacheDir, LOCK_FILE } from '../../src/daemon/cache-lock';
import { HOLDER_LOG, HOLDER_SOCKET, HolderProcess } from '../../src/daemon/fd-holder';
import { native, type Packet } from '../../src/native';
import { until } from '../lib/assertions';
import { holderPids, runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

const DAEMON_FLAGS = ['--transport', 'fuse', '--metrics-address', ''];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * A client in its own process: takes the cache lock, keeps its fd 3 (a pipe whose other end is
 * `pipe` here) in the holder as "test-pipe" and as "spare", and stays. Resolves once kept, with the holder's pid.
 */
async function startClient(cacheDir: string): Promise<{ child: ChildProcess; pipe: Readable; holderPid: number }> {
  const src = path.resolve(__dirname, '..', '..', 'src');
  const script = `
    const { lockCacheDir } = require(${JSON.stringify(path.join(src, 'daemon', 'cache-lock.js'))});
    const { HolderProcess } = require(${JSON.stringify(path.join(src, 'daemon', 'fd-holder.js'))});
    const holder = HolderProcess.open(process.argv[1], lockCacheDir(process.argv[1]));
    if (!holder.keep('test-pipe', 3) || !holder.keep('spare', 3)) process.exit(1);
    process.stdout.write(holder.pid + '\\n');
    setInterval(() => {}, 1 << 30);`;
  const child = spawn(process.execPath, ['-e', script, cacheDir], { stdio: ['ignore', 'pipe', 'inherit', 'pipe'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b) => {
      out += b;
      if (out.includes('\n')) resolve(out.trim());
    });
    child.once('exit', (code) => reject(new Error(`client exited (${code}) before keeping its fd`)));
  });
  return { child, pipe: child.stdio[3] as Readable, holderPid: Number(line) };
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

/** Writes through `fd` and reads it back from the other end of its pipe: the same pipe. */
async function samePipe(fd: number, pipe: Readable): Promise<void> {
  const got = new Promise<string>((resolve) => pipe.once('data', (b: Buffer) => resolve(b.toString())));
  fs.writeSync(fd, 'through the holder');
  assert.equal(await got, 'through the holder');
}

/** HELLO with a fd of the lock file opened here (not the one holding the lock): the holder's reply. */
function helloWithOtherOpen(cacheDir: string): { reply: string; after: string } {
  const other = fs.openSync(path.join(cacheDir, LOCK_FILE), 'r');
  const sock = native.seqpacketConnect(path.join(cacheDir, HOLDER_SOCKET));
  try {
    native.sendPacket(sock, 'HELLO', [other]);
    const reply = native.recvPacket(sock, 5000);
    const next = native.recvPacket(sock, 5000);
    return {
      reply: typeof reply === 'string' ? reply : reply.text,
      after: typeof next === 'string' ? next : next.text,
    };
  } finally {
    fs.closeSync(sock);
    fs.closeSync(other);
  }
}

describe('fd holder', () => {
  const work = tempDir('fd-holder');
  const children: ChildProcess[] = [];
  const daemons: Daemon[] = [];
  after(async () => {
    for (const c of children) await kill(c);
    for (const d of daemons) await d.stop();
    // Only when a test failed: holders of this test's cache directories.
    for (const dir of fs.readdirSync(work))
      for (const pid of holderPids(path.join(work, dir, HOLDER_SOCKET))) process.kill(pid, 'SIGKILL');
    cleanup(work);
  });

  it('keeps a fd through its client’s SIGKILL, for the next process holding the lock only', async () => {
    const cacheDir = path.join(work, 'survive');
    const socket = path.join(cacheDir, HOLDER_SOCKET);
    const client = await startClient(cacheDir);
    children.push(client.child);
    assert.deepEqual(holderPids(socket), [client.holderPid]);
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600);

    // Refused while the client holds the lock: a HELLO with another open of the lock file.
    const refused = helloWithOtherOpen(cacheDir);
    assert.match(refused.reply, /^ERR the lock on .*daemon\.lock is held by another open of it$/);
    assert.equal(refused.after, 'closed', 'the refused connection is closed');

    await kill(client.child);
    const lock = lockCacheDir(cacheDir);
    const holder = HolderProcess.open(cacheDir, lock);
    try {
      assert.equal(holder.pid, client.holderPid, 'the same holder, still running');
      const fd = holder.inherited('test-pipe');
      assert.ok(fd !== undefined, 'the fd kept by the killed client is handed over');
      await samePipe(fd, client.pipe);
      fs.closeSync(fd);
      assert.deepEqual(holder.releaseUnclaimed(), ['spare'], 'what no one asked for goes');

      // A request before HELLO is refused, and the connection closed.
      const sock = native.seqpacketConnect(socket);
      native.sendPacket(sock, 'LIST');
      const reply = native.recvPacket(sock, 5000);
      assert.equal(typeof reply === 'string' ? reply : reply.text, 'ERR the first request must be HELLO');
      assert.equal(native.recvPacket(sock, 5000), 'closed');
      fs.closeSync(sock);

      holder.drop('test-pipe');
    } finally {
      holder.close();
      lock.release();
    }
    // Holding nothing and with no client, it exits and removes its socket.
    await until(() => !alive(client.holderPid), 'the holder to exit', 5000);
    assert.equal(fs.existsSync(socket), false);
    assert.match(fs.readFileSync(path.join(cacheDir, HOLDER_LOG), 'utf8'), /exiting: no fd kept and no client/);
  });

  it('a client whose holder dies starts another and keeps its fds there again; EXIT ends a holder', async () => {
    const cacheDir = path.join(work, 'respawn');
    const socket = path.join(cacheDir, HOLDER_SOCKET);
    const client = await startClient(cacheDir);
    children.push(client.child);
    process.kill(client.holderPid, 'SIGKILL');
    const holderLog = path.join(cacheDir, HOLDER_LOG);
    await until(
      () => (fs.readFileSync(holderLog, 'utf8').match(/keeping spare/g) ?? []).length === 2,
      'the client to keep its fds again in a new holder',
      5000,
    );
    await kill(client.child);
    const lock = lockCacheDir(cacheDir);
    const holder = HolderProcess.open(cacheDir, lock);
    try {
      assert.notEqual(holder.pid, client.holderPid);
      const fd = holder.inherited('test-pipe');
      assert.ok(fd !== undefined, 'the new holder got the fd again');
      await samePipe(fd, client.pipe);
      fs.closeSync(fd);
      assert.deepEqual(holder.releaseUnclaimed(), ['spare']);
      holder.close();
      // EXIT ends it though it still keeps the fd.
      const sock = native.seqpacketConnect(socket);
      native.sendPacket(sock, 'HELLO', [lock.fd]);
      assert.match((native.recvPacket(sock, 5000) as Packet).text, /^OK pid \d+$/);
      native.sendPacket(sock, 'EXIT');
      assert.equal((native.recvPacket(sock, 5000) as Packet).text, 'OK');
      fs.closeSync(sock);
    } finally {
      holder.close();
      lock.release();
    }
    await until(() => holderPids(socket).length === 0, 'the holder to exit', 5000);
    assert.equal(fs.existsSync(socket), false);
    assert.match(fs.readFileSync(path.join(cacheDir, HOLDER_LOG), 'utf8'), /exiting: asked to exit \(1 fds closed\)/);
  });

  it('a daemon starts a holder, refuses others the fds, starts another when it dies; a stop ends it', async () => {
    const cacheDir = path.join(work, 'daemon');
    const socket = path.join(cacheDir, HOLDER_SOCKET);
    const daemon = await startDaemon({ cacheDir, socket: path.join(work, 'daemon.sock'), flags: DAEMON_FLAGS });
    daemons.push(daemon);
    const status = await runCliAsync(['status', '--json', '--socket', daemon.socket]);
    assert.equal(status.status, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { fdKeeper: string }).fdKeeper, 'holder');
    const [first] = holderPids(socket);
    assert.ok(first, 'the daemon started a holder');

    assert.match(helloWithOtherOpen(cacheDir).reply, /^ERR the lock on .* is held by another open of it$/);

    process.kill(first, 'SIGKILL');
    await until(() => holderPids(socket).some((p) => p !== first), 'the daemon to start another holder', 5000);
    await until(() => daemon.log.includes('fd holder gone: a new one keeps the fds again'), 'the daemon log', 5000);
    const [second] = holderPids(socket);

    await daemon.stop();
    await until(() => !alive(second), 'the holder to exit with the daemon', 5000);
    assert.equal(fs.existsSync(socket), false);
  });

  it('of two daemons started at once on one cache directory, the loser leaves the holder alone', async () => {
    const cacheDir = path.join(work, 'race');
    const socket = path.join(cacheDir, HOLDER_SOCKET);
    const started = await Promise.allSettled(
      ['a', 'b'].map((n) => startDaemon({ cacheDir, socket: path.join(work, `race-${n}.sock`), flags: DAEMON_FLAGS })),
    );
    const won = started.filter((r) => r.status === 'fulfilled').map((r) => r.value);
    daemons.push(...won);
    assert.equal(won.length, 1, 'one daemon runs');
    const lost = started.find((r) => r.status === 'rejected');
    assert.match(String(lost?.reason), /is in use by another daemon/);
    assert.equal(holderPids(socket).length, 1, 'one holder');
    const log = fs.readFileSync(path.join(cacheDir, HOLDER_LOG), 'utf8');
    assert.equal(log.match(/holds the lock: serving it/g)?.length, 1, log);
    assert.doesNotMatch(log, /refused|replaced|gone/, log);
    const status = await runCliAsync(['status', '--json', '--socket', won[0].socket]);
    assert.equal((JSON.parse(status.stdout) as { pid: number }).pid, won[0].process.pid);
  });
});
