// The FUSE transport survives a daemon crash: the daemon runs under kernel-tests/fdstore.py (systemd's
// fd store with Restart=on-failure), is SIGKILLed with a reader holding a file open and another one's
// READ taken but not answered (its range GET stalled at a fault proxy), and the next daemon takes the
// /dev/fuse fd over: the same mounts, the held fd reads on, the READ in flight is sent again and
// answered, every byte is right.
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { type Daemon, execCli, publishLazy, superviseDaemon } from '../lib/harness';
import { MiB } from '../lib/fixtures';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';
import { compareTreesInChild } from '../lib/tree-compare';

const run = promisify(execFile);
/** Larger than the daemon's read-ahead: reading the first file never fetches the second. */
const FILE_BYTES = 24 * MiB;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Settles with `p`, or rejects after `ms` naming `what` (a read that never returns fails the test). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms))),
  ]).finally(() => clearTimeout(timer));
}

/** mountinfo lines (mount id first) of what is mounted on `target`. */
function mountLines(target: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.split(' ')[4] === target);
}

/**
 * A process that opens `file`, reads its first page, says so, and on a line on stdin reads the whole
 * file through that same fd and prints its SHA-256 (or the error).
 */
function holdOpen(file: string): { child: ChildProcess; lines: string[]; next(): Promise<string> } {
  const script = [
    'import hashlib, os, sys',
    'fd = os.open(sys.argv[1], os.O_RDONLY)',
    'print("opened " + hashlib.sha256(os.pread(fd, 4096, 0)).hexdigest(), flush=True)',
    'sys.stdin.readline()',
    'h, at = hashlib.sha256(), 0',
    'try:',
    '    while True:',
    '        b = os.pread(fd, 1 << 20, at)',
    '        if not b: break',
    '        h.update(b); at += len(b)',
    '    print("read " + h.hexdigest(), flush=True)',
    'except OSError as e:',
    '    print(f"error at {at}: {e}", flush=True)',
  ].join('\n');
  const child = spawn('python3', ['-c', script, file], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines: string[] = [];
  let waiting: (() => void) | undefined;
  let buf = '';
  child.stdout!.on('data', (b) => {
    buf += b;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
    waiting?.();
  });
  let taken = 0;
  const next = async (): Promise<string> => {
    while (lines.length <= taken) {
      if (child.exitCode !== null) throw new Error(`reader of ${file} exited (${child.exitCode})`);
      await new Promise<void>((r) => {
        waiting = r;
        setTimeout(r, 200);
      });
    }
    return lines[taken++];
  };
  return { child, lines, next };
}

interface Status {
  pid: number;
  inherited?: boolean;
  fuseResent?: number;
}

/** The daemon under fdstore.py (systemd's fd store, restarting it when it dies of a signal). */
async function startSupervised(cacheDir: string, work: string) {
  const socket = path.join(work, `control-${path.basename(cacheDir)}.sock`);
  const daemon = superviseDaemon({
    cacheDir,
    socket,
    notifySocket: path.join(work, `notify-${path.basename(cacheDir)}.sock`),
    flags: ['--transport', 'fuse', '--prefetch', '0', '--metrics-address', ''],
  });
  const waitFor = async (what: RegExp, ms = 60_000) => {
    for (const end = Date.now() + ms; !what.test(daemon.log) && Date.now() < end;) await sleep(100);
    assert.match(daemon.log, what);
  };
  const status = async () => JSON.parse((await execCli('status', '--json', '--socket', socket)).stdout) as Status;
  for (let i = 0; i < 600 && !fs.existsSync(socket); i++) await sleep(100);
  assert.ok(fs.existsSync(socket), `daemon up:\n${daemon.log}`);
  /** SIGKILLs the daemon; resolves once the next one has restored its mounts. */
  const kill = async (restarts: number) => {
    process.kill((await status()).pid, 'SIGKILL');
    await waitFor(new RegExp(`(restarting[^]*){${restarts}}`));
    await waitFor(new RegExp(`("message":"(resumed|restored) a mount after restart"[^]*){${restarts}}`));
  };
  return { daemon, socket, waitFor, status, kill };
}

describe('FUSE transport across a daemon crash (fd kept by the fd store)', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let reference: string;
  let lazy: string;
  const daemons: Daemon[] = [];
  const children: ChildProcess[] = [];
  const stalled: http.ServerResponse[] = [];

  const expected = (name: string) => sha256(fs.readFileSync(path.join(reference, 'data', name)));

  /** Starts `sha256sum` of `file` once its fetch is stalled at the proxy: a READ taken and not answered. */
  async function readStalled(file: string): Promise<{ reading: Promise<{ stdout: string }> }> {
    const before = stalled.length;
    proxy.add({
      method: 'GET',
      path: /\/v2\/lazy\/rand\/blobs\//,
      times: 1,
      fault: { kind: 'respond', respond: (_req, res) => stalled.push(res) },
    });
    const reading = run('sha256sum', [file]);
    reading.catch(() => undefined); // awaited by the caller
    for (let i = 0; i < 300 && stalled.length === before; i++) await sleep(100);
    assert.equal(stalled.length, before + 1, `the READ of ${file} is taken: its fetch is under way`);
    return { reading };
  }

  before(async () => {
    work = tempDir('fuse-takeover');
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    // Random data: every page differs from zeros and from every other page.
    const tree = path.join(work, 'tree');
    fs.mkdirSync(path.join(tree, 'data'), { recursive: true });
    for (const name of ['held', 'in-flight', 'rest'])
      fs.writeFileSync(path.join(tree, 'data', name), crypto.randomBytes(FILE_BYTES + 4321));
    const image = new UmociImage(path.join(work, 'layout'), 'rand').create().rawLayer(tree);
    reference = image.unpack(path.join(work, 'reference'));
    publishLazy(image.ref, registry.host, 'rand');
    lazy = `${proxy.host}/lazy/rand:1`;
  });

  after(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    for (const res of stalled) if (!res.writableEnded) res.destroy();
    for (const d of daemons) await d.stop('SIGTERM');
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it('the next daemon takes the session over: no remount, the held fd reads on, the READ in flight is resent', async () => {
    const cacheDir = path.join(work, 'cache');
    const fuseDir = path.join(cacheDir, 'fuse');
    const { daemon, socket, status, kill } = await startSupervised(cacheDir, work);
    daemons.push(daemon);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, lazy, mnt);
    const file = (name: string) => path.join(mnt, 'data', name);

    // A reader holding a file open, its first page read.
    const held = holdOpen(file('held'));
    children.push(held.child);
    const firstPage = fs.readFileSync(path.join(reference, 'data', 'held')).subarray(0, 4096);
    assert.equal(await within(held.next(), 30_000, 'first page'), `opened ${sha256(firstPage)}`);
    const fuseBefore = mountLines(fuseDir);
    const erofsBefore = mountLines(mnt);
    assert.equal(fuseBefore.length, 1, 'one FUSE mount');
    assert.equal(erofsBefore.length, 1, 'one EROFS mount');

    // A READ the daemon takes and cannot answer yet: its range GET never gets a response.
    const { reading: inFlight } = await readStalled(file('in-flight'));
    const { pid } = await status();
    await kill(1);
    for (const res of stalled) res.destroy();

    // The READ the dead daemon had taken comes again and is answered with the right bytes.
    const { stdout } = await within(inFlight, 60_000, 'READ in flight at the kill');
    assert.equal(stdout.split(' ')[0], expected('in-flight'));
    // The fd opened before the kill reads the whole file right.
    held.child.stdin!.write('go\n');
    assert.equal(await within(held.next(), 60_000, 'held fd'), `read ${expected('held')}`);

    // The same mounts, not new ones.
    assert.match(daemon.log, /"message":"resumed a mount after restart"/);
    assert.deepEqual(mountLines(fuseDir), fuseBefore, 'the FUSE mount is the same one');
    assert.deepEqual(mountLines(mnt), erofsBefore, 'the EROFS mount is the same one');
    const s = await status();
    assert.notEqual(s.pid, pid);
    assert.equal(s.inherited, true, 'the session was inherited');
    assert.ok((s.fuseResent ?? 0) >= 1, `the kernel sent the READ in flight again (${s.fuseResent} resent)`);
    assert.doesNotMatch(daemon.log, /FUSE_NOTIFY_RESEND refused/);

    // A daemon that took the session over is taken over in turn.
    const { reading: again } = await readStalled(file('rest'));
    await kill(2);
    for (const res of stalled) res.destroy();
    assert.equal(
      (await within(again, 60_000, 'READ in flight at the second kill')).stdout.split(' ')[0],
      expected('rest'),
    );
    assert.deepEqual(mountLines(fuseDir), fuseBefore, 'still the same FUSE mount');
    assert.deepEqual(mountLines(mnt), erofsBefore, 'still the same EROFS mount');
    // Every byte of the image, through the third daemon.
    assert.deepEqual(await compareTreesInChild(reference, mnt), []);

    // A planned stop unmounts and drops the kept fd: nothing is left for a next daemon.
    await execCli('umount', '--socket', socket, mnt);
    await daemon.stop('SIGTERM');
    assert.match(daemon.log, /fdstore: removed fuse/);
    assert.deepEqual(mountLines(fuseDir), [], 'FUSE mount gone');
  });

  it('a session whose state file is unusable is not taken over: its mounts are made again and read right', async () => {
    const cacheDir = path.join(work, 'cache-bad-state');
    const fuseDir = path.join(cacheDir, 'fuse');
    const { daemon, socket, waitFor, kill } = await startSupervised(cacheDir, work);
    daemons.push(daemon);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, lazy, mnt);
    const fuseBefore = mountLines(fuseDir);
    fs.writeFileSync(path.join(cacheDir, 'fuse-session.json'), '{"dev": "0:0", "generation": 0, "nodes": {}}');
    await kill(1);
    await waitFor(/inherited FUSE session not taken over/);
    assert.match(
      daemon.log,
      /fdstore: removed fuse[^]*fdstore: stored fuse/,
      'the new session replaces the old in the store',
    );
    assert.match(daemon.log, /"message":"restored a mount after restart"/);
    assert.notDeepEqual(mountLines(fuseDir), fuseBefore, 'a new FUSE mount');
    assert.deepEqual(await compareTreesInChild(reference, mnt), []);
    await execCli('umount', '--socket', socket, mnt);
    await daemon.stop('SIGTERM');
  });
});
