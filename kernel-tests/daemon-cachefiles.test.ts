// The cachefiles on-demand transport end to end, inside the project's test VM (kernel-tests/run-vm):
// a registry on the guest's 127.0.0.1, images converted by the CLI, `erofs-ondemand daemon
// --transport cachefiles`, EROFS mounted in fscache mode, every file compared with `umoci unpack`.
//
//   kernel-tests/run-vm -- node --test dist/kernel-tests/daemon-cachefiles.test.js
//
// Needs a kernel with CONFIG_CACHEFILES_ONDEMAND and an ext4 file system at /cache (run-vm's disk).
import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { mountInfoLine } from '../test/lib/assertions';
import { startFaultProxy, type FaultProxy } from '../test/lib/fault-proxy';
import { adoptDaemon, CLI, execCli, startDaemon as launchDaemon, type Daemon } from '../test/lib/harness';
import { MiB } from '../test/lib/fixtures';
import { pullLazyLayers, snapshotsClient } from '../test/lib/snapshots-client';
import { startRegistry, type RegistryServer } from '../test/lib/registry-server';
import { UmociImage } from '../test/lib/test-images';
import { compareTreesInChild } from '../test/lib/tree-compare';

const run = promisify(execFile);
const CACHE_ROOT = process.env.CACHEFILES_TEST_CACHE ?? '/cache';
const cli = execCli;

/** Files of the kernel's cache (cachefiles keeps one per object) whose names carry `key`. */
function cacheFilesNamed(root: string, key: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.includes(key)) out.push(p);
    }
  };
  walk(root);
  return out;
}

/** Bytes of data the daemon's own blob files hold: none under cachefiles, whose objects keep the blobs. */
function blobFileBytes(cacheDir: string): number {
  const dir = path.join(cacheDir, 'blobs');
  if (!fs.existsSync(dir)) return 0;
  return fs.readdirSync(dir).reduce((n, f) => n + fs.statSync(path.join(dir, f)).blocks * 512, 0);
}

/** The pids of `parent`'s children (the daemon that fdstore.py runs now). */
function childrenOf(parent: number): number[] {
  return fs
    .readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .flatMap((d) => {
      try {
        const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
        return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === parent ? [Number(d)] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}

/** `size` random bytes in which no 4 KiB page is all zeros (a page read as zeros is then always wrong). */
function randomPages(size: number): Buffer {
  const b = crypto.randomBytes(size);
  for (let at = 0; at < size; at += 4096) b[at] |= 1;
  return b;
}

describe(
  'cachefiles on-demand transport (VM)',
  { skip: !fs.existsSync('/dev/cachefiles') && 'no /dev/cachefiles on this kernel' },
  () => {
    let registry: RegistryServer;
    let proxy: FaultProxy;
    let work: string;
    let daemon: Daemon | undefined;
    let socket: string;
    const refs: Record<'a' | 'b', string> = { a: '', b: '' };
    const trees: Record<'a' | 'b', string> = { a: '', b: '' };
    let baseBlob = '';

    async function startDaemon(cacheDir: string, ...extra: string[]): Promise<void> {
      daemon = await launchDaemon({
        cacheDir,
        socket,
        flags: ['--transport', 'cachefiles', '--metrics-address', '', ...extra],
        startTimeoutMs: 120_000,
      });
    }

    async function stopDaemon(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
      await daemon?.stop(signal);
      fs.rmSync(socket, { force: true });
    }

    async function status(): Promise<{
      pid: number;
      transport: string;
      transportRequests: number;
      fetch: { bytesFetched: number; verifyFailures: number };
    }> {
      return JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
    }

    /** The daemon under fdstore.py, which plays systemd (FileDescriptorStoreMax=, Restart=on-failure). */
    async function superviseDaemon(cacheDir: string, ...extra: string[]): Promise<{ pid: number; daemon: Daemon }> {
      const supervisor = spawn(
        'python3',
        [
          path.join(__dirname, '..', '..', 'kernel-tests', 'fdstore.py'),
          path.join(work, 'notify.sock'),
          process.execPath,
          CLI,
          'daemon',
          '--transport',
          'cachefiles',
          '--cache-dir',
          cacheDir,
          '--socket',
          socket,
          '--metrics-address',
          '',
          ...extra,
        ],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      const supervised = adoptDaemon(supervisor, socket);
      daemon = supervised;
      await waitForLog(supervised, /fdstore: stored cachefiles/);
      for (let i = 0; i < 600 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
      return { pid: supervisor.pid!, daemon: supervised };
    }

    async function waitForLog(d: Daemon, what: RegExp, count = 1): Promise<void> {
      const seen = () => d.log.match(new RegExp(what.source, 'g'))?.length ?? 0;
      for (let i = 0; i < 1800 && seen() < count; i++) await new Promise((r) => setTimeout(r, 100));
      assert.ok(seen() >= count, `${count} x ${what} in the daemon's log:\n${d.log.slice(-4000)}`);
    }

    before(async () => {
      work = fs.mkdtempSync(path.join(CACHE_ROOT, 'work-'));
      socket = path.join(work, 'control.sock');
      registry = await startRegistry();
      proxy = await startFaultProxy(registry.host);
      // A base layer shared by two images, each with a layer of its own.
      const baseDir = path.join(work, 'base');
      fs.mkdirSync(baseDir);
      // The test kernel's ext4 has no security.* xattrs, so not the kitchen-sink fixture: a plainer tree.
      fs.mkdirSync(path.join(baseDir, 'etc', 'deep', 'er'), { recursive: true });
      fs.writeFileSync(path.join(baseDir, 'etc', 'deep', 'er', 'small'), 'small file\n');
      fs.writeFileSync(path.join(baseDir, 'etc', 'page-plus-one'), crypto.randomBytes(4097));
      fs.writeFileSync(path.join(baseDir, 'zeros'), Buffer.alloc(2 * MiB));
      fs.symlinkSync('etc/deep/er/small', path.join(baseDir, 'link'));
      fs.linkSync(path.join(baseDir, 'etc', 'page-plus-one'), path.join(baseDir, 'hardlink'));
      fs.chmodSync(path.join(baseDir, 'etc', 'deep', 'er', 'small'), 0o4755);
      fs.writeFileSync(path.join(baseDir, 'random-3m'), crypto.randomBytes(3 * MiB + 12345));
      fs.writeFileSync(path.join(baseDir, 'text'), 'the shared base\n'.repeat(50_000));
      const base = new UmociImage(path.join(work, 'layout-base'), 'base').create().rawLayer(baseDir);
      for (const name of ['a', 'b'] as const) {
        const img = new UmociImage(path.join(work, `layout-${name}`), name);
        execFileSync('skopeo', ['copy', '-q', `oci:${base.ref}`, `oci:${img.ref}`]);
        img.layer((r) => fs.writeFileSync(path.join(r, `only-${name}`), crypto.randomBytes(2 * MiB)));
        trees[name] = img.unpack(path.join(work, `ref-${name}`));
        execFileSync('skopeo', [
          'copy',
          '-q',
          '--dest-tls-verify=false',
          `oci:${img.ref}`,
          `docker://${registry.host}/src/${name}:1`,
        ]);
        await cli('convert', '-q', `${registry.host}/src/${name}:1`, `${registry.host}/lazy/${name}:1`);
        refs[name] = `${registry.host}/src/${name}:1`;
      }
      const manifest = JSON.parse(
        execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/lazy/a:1`], {
          encoding: 'utf8',
        }),
      );
      baseBlob = manifest.layers[1].digest.slice('sha256:'.length);
    });

    after(async () => {
      await stopDaemon();
      await proxy?.stop();
      await registry?.stop();
    });

    it('is chosen, mounts by the original reference and reads every file correctly', async () => {
      await startDaemon(path.join(work, 'cache'));
      assert.match(daemon!.log, /"transport":"cachefiles"/);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.a, mnt);
      assert.match(fs.readFileSync('/proc/self/mountinfo', 'utf8'), new RegExp(`${mnt} .* erofs .*fsid=`));
      assert.deepEqual(await compareTreesInChild(trees.a, mnt), []);
      const s = await status();
      assert.equal(s.transport, 'cachefiles');
      assert.ok(s.transportRequests > 0 && s.fetch.bytesFetched > 0 && s.fetch.verifyFailures === 0);
      assert.equal(blobFileBytes(path.join(work, 'cache')), 0, 'chunks went into the kernel objects only');
      await cli('umount', '--socket', socket, mnt);
    });

    it('prefetch writes into the kernel objects: reads afterwards fetch nothing', async () => {
      const cacheDir = path.join(work, 'cache-prefetch');
      await stopDaemon();
      await startDaemon(cacheDir);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.b, mnt);
      try {
        await cli('prefetch', '--socket', socket, mnt);
        const before = await status();
        assert.ok(before.fetch.bytesFetched > 2 * MiB);
        assert.deepEqual(await compareTreesInChild(trees.b, mnt), []);
        assert.equal((await status()).fetch.bytesFetched, before.fetch.bytesFetched, 'every chunk was in the objects');
        assert.equal(blobFileBytes(cacheDir), 0);
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('after a restart, a warm cache sends no READ for data already present', async () => {
      await stopDaemon();
      await startDaemon(path.join(work, 'cache'));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.a, mnt);
      assert.deepEqual(await compareTreesInChild(trees.a, mnt), []);
      const s = await status();
      assert.equal(s.transportRequests, 0, 'every read was a hit in the kernel');
      assert.equal(s.fetch.bytesFetched, 0);
      await cli('umount', '--socket', socket, mnt);
    });

    it('two images sharing a base share its cache file', async () => {
      const a = fs.mkdtempSync(path.join(work, 'mnt-'));
      const b = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.a, a);
      await cli('mount', '--socket', socket, refs.b, b);
      try {
        const before = await status();
        assert.deepEqual(await compareTreesInChild(trees.b, b), []);
        const after = await status();
        // Only b's own layer (and its bootstrap) were missing: the base came from the shared cache file.
        assert.ok(
          after.fetch.bytesFetched - before.fetch.bytesFetched < 3 * MiB,
          `fetched ${after.fetch.bytesFetched - before.fetch.bytesFetched} bytes`,
        );
        assert.equal(
          cacheFilesNamed(path.join(work, 'cache', 'fscache'), baseBlob).length,
          1,
          'one cache file for the shared blob',
        );
      } finally {
        await cli('umount', '--socket', socket, a);
        await cli('umount', '--socket', socket, b);
      }
    });

    it('replays an access trace into the kernel objects when a pull through the snapshotter warms the image', async () => {
      // A copy of image a with a trace of its own: the other tests' mounts of a replay nothing.
      const traced = `${registry.host}/src/traced:1`;
      const layout = `oci:${path.join(work, 'layout-a')}:a`;
      execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', layout, `docker://${traced}`]);
      await cli('convert', '-q', traced, `${registry.host}/lazy/traced:1`);
      // Recorded on one node, where the workload reads two files. Under cachefiles the daemon sees only
      // the kernel's READs: a chunk fetched by read-ahead and then read in the kernel is not in a trace.
      // That node reads without read-ahead, so that the trace holds exactly the two files.
      const files = ['random-3m', 'only-a'];
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-trace-record'), '--read-ahead', '0');
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, traced, mnt);
      for (const f of files) fs.readFileSync(path.join(mnt, f));
      await cli('trace', 'push', '--socket', socket, mnt);
      await cli('umount', '--socket', socket, mnt);
      // Pulled on another: containerd's calls for a CRI pull (the image is warmed from the first layer
      // on, before any mount opens its objects), then a view of the image.
      await stopDaemon();
      const cacheDir = path.join(work, 'cache-trace-replay');
      const snapshotter = path.join(work, 'snapshotter.sock');
      await startDaemon(cacheDir, '--snapshotter-socket', snapshotter);
      const client = snapshotsClient(snapshotter);
      try {
        const placeholders = await pullLazyLayers(client, traced);
        const { mounts } = await client.unary<{ mounts: Array<{ source: string }> }>('View', {
          key: 'default/view',
          parent: placeholders[placeholders.length - 1],
        });
        await waitForLog(daemon!, /"message":"access trace replayed"/);
        const replayed = (await status()).fetch.bytesFetched;
        assert.ok(replayed > 4 * MiB, `the replay fetched ${replayed} bytes`);
        for (const f of files)
          assert.ok(fs.readFileSync(path.join(mounts[0].source, f)).equals(fs.readFileSync(path.join(trees.a, f))), f);
        assert.equal((await status()).fetch.bytesFetched, replayed, 'the traced files were in the kernel objects');
        assert.equal(blobFileBytes(cacheDir), 0);
        await client.unary('Remove', { key: 'default/view' });
        for (const name of placeholders.reverse()) await client.unary('Remove', { key: name });
      } finally {
        client.close();
      }
    });

    it('gives EIO for chunks whose bytes the registry altered, and caches nothing wrong', async () => {
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-corrupt'));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${proxy.host}/lazy/a:1`, mnt);
      try {
        proxy.add({ method: 'GET', path: /\/v2\/lazy\/a\/blobs\//, times: 1000, fault: { kind: 'corrupt' } });
        await assert.rejects(run('sha256sum', [path.join(mnt, 'random-3m')]), (err: { stderr: string }) =>
          /Input\/output error/.test(err.stderr),
        );
        proxy.reset();
        assert.match(daemon!.log, /cache miss not served/);
        const { stdout } = await run('sha256sum', [path.join(mnt, 'random-3m'), path.join(trees.a, 'random-3m')]);
        const [x, y] = stdout
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[0]);
        assert.equal(x, y, 'read correctly once the registry is honest');
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('a fetch that never answers fails its read with EIO after the timeout, not a hang', async () => {
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-stall'), '--read-timeout', '20');
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${proxy.host}/lazy/b:1`, mnt);
      try {
        proxy.add({
          method: 'GET',
          path: /\/v2\/lazy\/b\/blobs\//,
          times: 1000,
          fault: { kind: 'respond', respond: () => undefined },
        });
        await assert.rejects(
          run('cat', [path.join(mnt, 'only-b')], { encoding: 'buffer', maxBuffer: 1 << 24 }),
          (err: { stderr: Buffer }) => /Input\/output error/.test(err.stderr.toString()),
        );
        assert.match(daemon!.log, /not served in time/);
        proxy.reset();
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('refuses an object no mount names (the kernel fails that mount) and keeps serving', async () => {
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await assert.rejects(
        run('mount', ['-t', 'erofs', '-o', 'fsid=nobody-knows-me,domain_id=erofs-ondemand', 'none', mnt]),
      );
      assert.match(daemon!.log, /OPEN of an object no mount of this daemon names: refused/);
      assert.equal((await status()).transport, 'cachefiles', 'the daemon still answers');
    });

    it('mounts on the directory it checked: a symbolic link as TARGET, or swapped into it or a parent, is refused', async () => {
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-swap'));
      const victim = fs.mkdtempSync(path.join(work, 'victim-'));
      fs.mkdirSync(path.join(victim, 'mnt'));
      fs.writeFileSync(path.join(victim, 'mnt', 'kept'), 'still here\n');
      const link = path.join(work, 'link-to-victim');
      fs.symlinkSync(path.join(victim, 'mnt'), link);
      await assert.rejects(cli('mount', '--socket', socket, refs.a, link), /symbolic link/);
      fs.symlinkSync(victim, `${link}-parent`);
      await assert.rejects(
        cli('mount', '--socket', socket, refs.a, path.join(`${link}-parent`, 'mnt')),
        /symbolic link/,
      );
      // Swapped in after the daemon's check, while the proxy holds the image's first request: the
      // mount itself resolves the target again, never through a symbolic link.
      for (const [swapped, image] of [
        ['target', 'a'],
        ['parent', 'b'],
      ] as const) {
        const parent = fs.mkdtempSync(path.join(work, 'swap-'));
        const mnt = path.join(parent, 'mnt');
        fs.mkdirSync(mnt);
        proxy.add({ path: new RegExp(`/v2/lazy/${image}/`), fault: { kind: 'stall', ms: 8000 } });
        const mounting = cli('mount', '--socket', socket, `${proxy.host}/lazy/${image}:1`, mnt);
        for (let i = 0; i < 1200 && proxy.held() === 0; i++) await new Promise((r) => setTimeout(r, 50));
        assert.equal(proxy.held(), 1, 'the daemon is fetching the image, its target checked');
        const [real, dest] = swapped === 'target' ? [mnt, path.join(victim, 'mnt')] : [parent, victim];
        fs.renameSync(real, `${real}-real`);
        fs.symlinkSync(dest, real);
        await assert.rejects(mounting, /ELOOP|symbolic link/);
        proxy.reset();
        for (const dir of [path.join(victim, 'mnt'), `${real}-real`, path.join(`${parent}-real`, 'mnt')])
          assert.equal(mountInfoLine(dir), undefined, `nothing mounted on ${dir} (${swapped} swapped)`);
        assert.equal(fs.readFileSync(path.join(victim, 'mnt', 'kept'), 'utf8'), 'still here\n');
      }
      assert.equal((await status()).transport, 'cachefiles', 'the daemon still answers');
    });

    it('a daemon killed with SIGKILL comes back with the device from the fd store: the mount never breaks', async () => {
      await stopDaemon();
      const { daemon: supervised } = await superviseDaemon(path.join(work, 'cache-restore'));
      const waitFor = (what: RegExp) => waitForLog(supervised, what);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.a, mnt);
      assert.equal(fs.readFileSync(path.join(mnt, 'etc', 'deep', 'er', 'small'), 'utf8'), 'small file\n');
      const mountLine = () => mountInfoLine(mnt);
      const before = mountLine();
      assert.ok(before, 'mounted');
      const { pid } = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout) as { pid: number };
      process.kill(pid, 'SIGKILL');
      // A reader arriving while no daemon runs waits for the next one instead of failing.
      const reading = run('sha256sum', [path.join(mnt, 'random-3m')]);
      await waitFor(/restarting/);
      await waitFor(/resumed a mount after restart/);
      const expected = execFileSync('sha256sum', [path.join(trees.a, 'random-3m')], { encoding: 'utf8' }).split(' ')[0];
      assert.equal((await reading).stdout.split(' ')[0], expected);
      assert.deepEqual(await compareTreesInChild(trees.a, mnt), []);
      assert.equal(mountLine(), before, 'the same mount, not a new one');
      const s = await status();
      assert.ok(s.transportRequests > 0, 'the new daemon served the reads');
      await cli('umount', '--socket', socket, mnt);
      await stopDaemon();
      assert.match(daemon!.log, /fdstore: removed cachefiles/, 'a clean stop unbinds the cache');
    });

    it('chaos: readers of random data get no wrong byte while the daemon is SIGKILLed again and again behind a faulty registry', async () => {
      const kills = Number(process.env.CHAOS_KILLS ?? 30);
      await stopDaemon();
      // An image of random data in which no page is zeros: a hole read as data would show.
      const dir = path.join(work, 'chaos');
      fs.mkdirSync(dir);
      const names = ['r0', 'r1', 'r2', 'r3'];
      names.forEach((name, i) => fs.writeFileSync(path.join(dir, name), randomPages(6 * MiB + i * 4099)));
      const img = new UmociImage(path.join(work, 'layout-chaos'), 'chaos').create().rawLayer(dir);
      execFileSync('skopeo', [
        'copy',
        '-q',
        '--dest-tls-verify=false',
        `oci:${img.ref}`,
        `docker://${registry.host}/src/chaos:1`,
      ]);
      await cli('convert', '-q', `${registry.host}/src/chaos:1`, `${registry.host}/lazy/chaos:1`);
      const cacheDir = path.join(work, 'cache-chaos');
      // No read-ahead: every read of data not yet fetched stays a READ of its own, crash after crash.
      const { pid: supervisor, daemon: supervised } = await superviseDaemon(
        cacheDir,
        '--read-ahead',
        '0',
        '--read-timeout',
        '15',
      );
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${proxy.host}/lazy/chaos:1`, mnt);
      const stop = path.join(work, 'chaos-stop');
      const readers = [0, 1, 2, 3].map((seed) =>
        run(
          'python3',
          [
            path.join(__dirname, '..', '..', 'kernel-tests', 'chaos-reader.py'),
            stop,
            String(seed),
            ...names.map((n) => `${path.join(mnt, n)}:${path.join(dir, n)}`),
          ],
          { maxBuffer: 1 << 24 },
        ),
      );
      const blobs = /\/v2\/lazy\/chaos\/blobs\//;
      const stall = (ms: number) => ({
        kind: 'respond' as const,
        respond: (_req: unknown, res: { destroy(): void }) => void setTimeout(() => res.destroy(), ms),
      });
      // Faults met by the fetches of reads (not by a restarted daemon's chunk tables, which a resume needs).
      const met = { reset: 0, status: 0 };
      try {
        for (let k = 0; k < kills; k++) {
          // Each round: a server error, a reset, a stall and altered bytes for the next fetches.
          proxy.add({ method: 'GET', path: blobs, fault: { kind: 'status', status: 503 } });
          proxy.add({ method: 'GET', path: blobs, fault: { kind: 'reset' } });
          proxy.add({ method: 'GET', path: blobs, fault: stall(3000) });
          proxy.add({ method: 'GET', path: blobs, fault: { kind: 'corrupt' } });
          await new Promise((r) => setTimeout(r, 1000 + Math.random() * 2000));
          met.reset += proxy.requests.filter((r) => r.status === 'reset').length;
          met.status += proxy.requests.filter((r) => r.status === 503).length;
          proxy.reset();
          const [pid] = childrenOf(supervisor);
          assert.ok(pid, 'a daemon runs under the fd store');
          process.kill(pid, 'SIGKILL');
          await waitForLog(supervised, /resumed a mount after restart/, k + 1);
        }
        await new Promise((r) => setTimeout(r, 2000));
      } finally {
        fs.writeFileSync(stop, '');
      }
      const results = (await Promise.all(readers)).map(
        (r) =>
          JSON.parse(r.stdout) as { reads: number; wrong: number; failed: number; unresolved: number; slowest: number },
      );
      const total = results.reduce(
        (t, r) => ({
          reads: t.reads + r.reads,
          wrong: t.wrong + r.wrong,
          failed: t.failed + r.failed,
          unresolved: t.unresolved + r.unresolved,
          slowest: Math.max(t.slowest, r.slowest),
        }),
        { reads: 0, wrong: 0, failed: 0, unresolved: 0, slowest: 0 },
      );
      const s = await status();
      console.log(
        `chaos: ${kills} kills, readers ${JSON.stringify(total)}, faults met ${JSON.stringify(met)}, verify failures (last daemon) ${s.fetch.verifyFailures}`,
      );
      assert.equal(total.wrong, 0, 'no read returned wrong bytes');
      assert.equal(total.unresolved, 0, 'every read through an fd opened before the crashes came right');
      assert.ok(total.reads > 0);
      assert.equal(blobFileBytes(cacheDir), 0, 'chunks went into the kernel objects only');
      assert.ok(met.reset > 0 && met.status > 0, `the faults were met: ${JSON.stringify(met)}`);
      await cli('umount', '--socket', socket, mnt);
    });
  },
);
