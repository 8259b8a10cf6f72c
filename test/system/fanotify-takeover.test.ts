// The fanotify transport survives a daemon killed with SIGKILL: kernel-tests/fdstore.py plays systemd
// (its fd store keeps the group's fd; Restart=on-failure starts the daemon again with it). While no
// daemon runs, readers of data not fetched yet wait (they never read zeros); the next daemon adopts the
// group, takes the mount over as it is and serves them; the event the dead daemon had taken is
// answered (EIO) instead of being let through onto a hole. Every byte read is compared with the source.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountInfoLine, readRange, until } from '../lib/assertions';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { type Daemon, execCli, publishLazy, superviseDaemon } from '../lib/harness';
import { MiB } from '../lib/fixtures';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';

const FILES = ['a.bin', 'b.bin', 'c.bin'] as const;
type FileName = (typeof FILES)[number];

/** A `cat` of one file, its bytes kept. */
interface Reader {
  child: ChildProcess;
  finished: boolean;
  done: Promise<{ code: number | null; out: Buffer; err: string }>;
}

function startReader(file: string): Reader {
  const child = spawn('cat', [file], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  let err = '';
  child.stdout!.on('data', (b: Buffer) => out.push(b));
  child.stderr!.on('data', (b: Buffer) => (err += b));
  const reader: Reader = {
    child,
    finished: false,
    done: new Promise((resolve) =>
      child.on('close', (code) => {
        reader.finished = true;
        resolve({ code, out: Buffer.concat(out), err });
      }),
    ),
  };
  return reader;
}

/** Where `got` first differs from `want`, and how many of the differing bytes are zeros. */
function difference(got: Buffer, want: Buffer): string {
  if (got.equals(want)) return 'the same bytes';
  let first = 0;
  while (first < got.length && first < want.length && got[first] === want[first]) first++;
  let zeros = 0;
  for (let i = 0; i < Math.min(got.length, want.length); i++) if (got[i] !== want[i] && got[i] === 0) zeros++;
  return `${got.length} bytes of ${want.length}; first difference at ${first}; ${zeros} wrong bytes are zeros`;
}

function assertSameBytes(got: Buffer, want: Buffer, what: string): void {
  assert.ok(got.equals(want), `${what}: ${difference(got, want)}`);
}

/** State letter and wait channel of a process (D and fanotify_* while a pre-content event waits). */
function procState(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const wchan = fs.readFileSync(`/proc/${pid}/wchan`, 'utf8');
  return `${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]} ${wchan}`;
}

/** `p`, or a failure naming `what` once `ms` have passed. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} still waits after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

describe('fanotify transport: a daemon killed with SIGKILL is taken over by the next one', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let work: string;
  let mnt = '';
  let supervisor: Daemon | undefined;
  const readers: Reader[] = [];
  const source = {} as Record<FileName, Buffer>;
  let lazyRef = '';

  before(async () => {
    work = tempDir('fanotify-takeover');
    const tree = path.join(work, 'tree');
    fs.mkdirSync(tree);
    for (const f of FILES) {
      source[f] = crypto.randomBytes(6 * MiB + 4321);
      fs.writeFileSync(path.join(tree, f), source[f]);
    }
    const image = new UmociImage(path.join(work, 'layout'), 'v1').create().rawLayer(tree);
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    publishLazy(image.ref, registry.host, 'takeover');
    lazyRef = `${proxy.host}/lazy/takeover:1`;
  });

  after(async () => {
    fs.rmSync(path.join(work, 'gate'), { force: true });
    for (const r of readers) if (!r.finished) r.child.kill('SIGKILL');
    await supervisor?.stop('SIGTERM');
    if (mnt && mountInfoLine(mnt)) {
      spawn('umount', ['-l', mnt], { stdio: 'ignore' });
    }
    await proxy?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it(
    'readers wait while no daemon runs, then get the right bytes from the same mount',
    { timeout: 240_000 },
    async () => {
      const socket = path.join(work, 'control.sock');
      const gate = path.join(work, 'gate');
      const cli = (...args: string[]) => execCli(...args, '--socket', socket);
      const daemon = superviseDaemon({
        cacheDir: path.join(work, 'cache'),
        socket,
        notifySocket: path.join(work, 'notify.sock'),
        flags: ['--transport', 'fanotify', '--metrics-address', '', '--read-ahead', '0'],
        gate,
      });
      supervisor = daemon;
      const waitForLog = (what: RegExp) =>
        until(() => what.test(daemon.log), `${what} in the log:\n${daemon.log}`, 120_000);
      await until(() => fs.existsSync(socket), `the daemon's socket:\n${daemon.log}`, 60_000);

      mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', lazyRef, mnt);
      const mountLine = () => mountInfoLine(mnt);
      const before = mountLine();
      assert.ok(before, 'mounted');

      // An fd opened before the kill, with its first MiB read (fetched) through it.
      const early = await fs.promises.open(path.join(mnt, 'a.bin'));
      try {
        assertSameBytes(await readRange(early, 0, MiB), source['a.bin'].subarray(0, MiB), 'a.bin, first MiB');

        // The next Range GET stalls: a reader of b.bin has its event taken by the daemon, not answered.
        const stalled: http.ServerResponse[] = [];
        proxy.add({
          method: 'GET',
          path: /\/v2\/lazy\/takeover\/blobs\//,
          times: 1000,
          fault: { kind: 'respond', respond: (_req, res) => void stalled.push(res) },
        });
        const taken = startReader(path.join(mnt, 'b.bin'));
        readers.push(taken);
        await until(() => stalled.length > 0, 'the daemon fetching for the reader of b.bin', 30_000);

        fs.writeFileSync(gate, '');
        const { pid } = JSON.parse((await cli('status', '--json')).stdout) as { pid: number };
        daemon.log = '';
        process.kill(pid, 'SIGKILL');
        await waitForLog(/restarting/);
        proxy.reset();
        for (const res of stalled) res.destroy();

        // No daemon now. A new reader, and a read through the fd opened before, of data not fetched.
        const late = startReader(path.join(mnt, 'c.bin'));
        readers.push(late);
        let earlySettled = false;
        const earlyRest = readRange(early, MiB, source['a.bin'].length - MiB).finally(() => (earlySettled = true));
        await new Promise((r) => setTimeout(r, 2000));
        for (const [r, name] of [
          [late, 'c.bin'],
          [taken, 'b.bin'],
        ] as const) {
          if (r.finished) {
            const { out, err } = await r.done;
            assert.fail(`a reader of ${name} returned while no daemon ran: ${difference(out, source[name])} ${err}`);
          }
        }
        assert.equal(earlySettled, false, 'a read through an fd opened before the kill returned while no daemon ran');
        assert.match(procState(late.child.pid!), /^D /, 'the reader waits in the kernel');

        // The next daemon takes over.
        fs.rmSync(gate);
        await waitForLog(/resumed a mount after restart/);
        await waitForLog(/daemon ready/);
        assert.match(daemon.log, /fanotify group inherited from the previous daemon/);

        const c = await within(late.done, 60_000, 'the reader of c.bin');
        assert.equal(c.code, 0, c.err);
        assertSameBytes(c.out, source['c.bin'], 'c.bin, read while no daemon ran');
        assertSameBytes(
          await within(earlyRest, 60_000, 'the read through the early fd'),
          source['a.bin'].subarray(MiB),
          'a.bin through the fd opened before the kill',
        );
        // The event the dead daemon had taken: EIO (swept), or the right bytes; never zeros.
        const b = await within(taken.done, 60_000, 'the reader whose event the dead daemon had taken');
        assertSameBytes(b.out, source['b.bin'].subarray(0, b.out.length), 'b.bin, the read whose event was taken');
        if (b.code !== 0) assert.match(b.err, /Input\/output error/);
        else assert.equal(b.out.length, source['b.bin'].length);

        const swept = /"events":(\d+)[^\n]*events left unanswered by the previous daemon denied/.exec(daemon.log);
        assert.ok(swept && Number(swept[1]) >= 1, `the event the dead daemon had taken was swept:\n${daemon.log}`);
        // Every file, read afresh, and the same mount (same mount id): taken over, not mounted again.
        for (const f of FILES) assertSameBytes(fs.readFileSync(path.join(mnt, f)), source[f], f);
        assert.equal(mountLine(), before, 'the same mount, not a new one');
        const status = JSON.parse((await cli('status', '--json')).stdout) as { transportRequests: number };
        assert.ok(status.transportRequests > 0, 'the new daemon served the reads');
      } finally {
        await early.close();
      }

      await cli('umount', mnt);
      await supervisor.stop('SIGTERM');
      assert.match(daemon.log, /fdstore: removed fanotify/, 'a planned stop drops the group from the fd store');
    },
  );
});
