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
import { startFaultProxy, type FaultProxy } from '../test/lib/fault-proxy';
import { adoptDaemon, CLI, execCli, startDaemon as launchDaemon, type Daemon } from '../test/lib/harness';
import { MiB } from '../test/lib/fixtures';
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
      transport: string;
      transportRequests: number;
      fetch: { bytesFetched: number; verifyFailures: number };
    }> {
      return JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
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
      await cli('umount', '--socket', socket, mnt);
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

    it('a daemon killed with SIGKILL comes back with the device from the fd store: the mount never breaks', async () => {
      await stopDaemon();
      // fdstore.py plays systemd (FileDescriptorStoreMax=, Restart=on-failure).
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
          path.join(work, 'cache-restore'),
          '--socket',
          socket,
          '--metrics-address',
          '',
        ],
        {
          stdio: ['ignore', 'ignore', 'pipe'],
        },
      );
      const supervised = adoptDaemon(supervisor, socket);
      daemon = supervised;
      const waitFor = async (what: RegExp) => {
        for (let i = 0; i < 1200 && !what.test(supervised.log); i++) await new Promise((r) => setTimeout(r, 100));
        assert.match(supervised.log, what);
      };
      await waitFor(/fdstore: stored cachefiles/);
      for (let i = 0; i < 600 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, refs.a, mnt);
      assert.equal(fs.readFileSync(path.join(mnt, 'etc', 'deep', 'er', 'small'), 'utf8'), 'small file\n');
      const mountLine = () =>
        fs
          .readFileSync('/proc/self/mountinfo', 'utf8')
          .split('\n')
          .find((l) => l.split(' ')[4] === mnt);
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
  },
);
