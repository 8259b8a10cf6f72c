// Mount targets the daemon is asked for: never resolved through a symbolic link (which could point
// at /etc, or give one directory two names and so two stacked mounts), absolute and normalised on the
// socket, never in the daemon's own cache directory, and restored once after a restart, spaces and all.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, afterEach, before, describe, it } from 'node:test';
import { callControl } from '../../src/daemon/control';
import { mounts } from '../../src/mount/mountinfo';
import { RegistryClient } from '../../src/oci/registry';
import { CLI, execCli, runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { pushSmallImage, smallImage } from '../lib/small-image';

const run = promisify(execFile);

const mountsAt = (target: string) => mounts().filter((m) => m.target === target);

describe('mount targets', { timeout: 300_000 }, () => {
  const img = smallImage();
  let registry: RegistryServer;
  let work: string;
  let cache: string;
  let socket: string;
  let lazy: string;
  let daemon: Daemon;

  const start = async () => {
    daemon = await startDaemon({
      cacheDir: cache,
      socket,
      flags: ['--transport', 'fanotify', '--metrics-address', '127.0.0.1:0'],
    });
  };
  const mount = (target: string) => execCli('mount', '--socket', socket, lazy, target);
  const ask = (req: Parameters<typeof callControl>[1]) => callControl(socket, req);
  const hello = async (mnt: string) => (await run('cat', [path.join(mnt, 'app', 'hello.txt')])).stdout;
  /** A directory of `work` holding a file, so that a mount over it shows. */
  const dir = (name: string) => {
    const d = path.join(work, name);
    fs.mkdirSync(d, { recursive: true });
    fs.writeFileSync(path.join(d, 'mine'), 'not the image\n');
    return d;
  };

  before(async () => {
    work = tempDir('targets');
    cache = path.join(work, 'cache');
    socket = path.join(work, 'control.sock');
    registry = await startRegistry();
    await pushSmallImage(new RegistryClient(registry.host, { plainHttp: true, credentials: null }), 'app', '1', img);
    lazy = `${registry.host}/lazy/app:1`;
    const convert = await runCliAsync(['convert', '-q', `${registry.host}/app:1`, lazy], {
      env: { XDG_CACHE_HOME: work },
    });
    assert.equal(convert.status, 0, convert.stderr);
    await start();
  });
  afterEach(async () => {
    for (const m of (
      JSON.parse((await execCli('status', '--json', '--socket', socket)).stdout) as {
        mounts: Array<{ target: string }>;
      }
    ).mounts)
      await execCli('umount', '--socket', socket, m.target);
  });
  after(async () => {
    await daemon?.stop();
    await registry?.stop();
    for (const m of mounts()
      .filter((e) => e.target.startsWith(work))
      .reverse())
      execFileSync('umount', ['-l', m.target]);
    cleanup(work);
  });

  it('refuses a target reached through a symbolic link, in its last component or an earlier one', async () => {
    const victim = dir('victim');
    fs.symlinkSync(victim, path.join(work, 'link'));
    fs.mkdirSync(path.join(victim, 'sub'));
    for (const target of [path.join(work, 'link'), path.join(work, 'link', 'sub')]) {
      await assert.rejects(mount(target), (err: { code: number; stderr: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr, /reached through a symbolic link/);
        assert.ok(err.stderr.includes(JSON.stringify(target)), err.stderr);
        return true;
      });
    }
    assert.deepEqual(mountsAt(victim), [], 'nothing mounted over what the link points at');
    assert.deepEqual(mountsAt(path.join(victim, 'sub')), []);
    assert.equal(fs.readFileSync(path.join(victim, 'mine'), 'utf8'), 'not the image\n');
  });

  it('never stacks two mounts on one directory through a symlink, and umount by the link removes nothing', async () => {
    const real = dir('real');
    const link = path.join(work, 'real-link');
    fs.symlinkSync(real, link);
    await mount(real);
    await assert.rejects(mount(link), /reached through a symbolic link/);
    assert.equal(mountsAt(real).length, 1, 'one mount');
    await assert.rejects(execCli('umount', '--socket', socket, link), /not mounted by this daemon/);
    assert.equal(mountsAt(real).length, 1, 'still mounted');
    assert.equal(await hello(real), 'hello through a mirror\n');
  });

  it('refuses relative and unnormalised paths on the socket; the CLI resolves relative ones', async () => {
    const rel = dir('relative');
    await assert.rejects(ask({ op: 'mount', ref: lazy, target: 'relative' }), /absolute path/);
    await assert.rejects(ask({ op: 'mount', ref: lazy, target: `${work}/x/../relative` }), /not normalised/);
    await assert.rejects(ask({ op: 'mount', ref: lazy, target: `${rel}/` }), /not normalised/);
    await assert.rejects(ask({ op: 'umount', target: 'relative' }), /absolute path/);
    assert.deepEqual(mountsAt(rel), []);
    await run(process.execPath, [CLI, 'mount', '--socket', socket, lazy, 'relative'], { cwd: work });
    assert.equal(mountsAt(rel).length, 1);
  });

  it("refuses the daemon's cache directory, anything inside it (also through a bind mount) and above it", async () => {
    const bind = dir('bind');
    execFileSync('mount', ['--bind', cache, bind]);
    try {
      for (const [target, why] of [
        [path.join(cache, 'blobs'), /inside the daemon's cache directory/],
        [cache, /inside the daemon's cache directory/],
        [path.join(bind, 'blobs'), /inside the daemon's cache directory/],
        [work, /holds the daemon's cache directory/],
        ['/', /holds the daemon's cache directory/],
      ] as const) {
        await assert.rejects(mount(target), why);
        assert.ok(!mountsAt(target).some((m) => m.fstype === 'erofs'), `nothing mounted on ${target}`);
      }
    } finally {
      execFileSync('umount', [bind]);
    }
  });

  for (const transport of ['fanotify', 'fuse']) {
    it(`${transport}: restores a target with spaces once after kill -9, and unmounts it`, async () => {
      const own = { cacheDir: path.join(work, `cache-${transport}`), socket: path.join(work, `${transport}.sock`) };
      const flags = ['--transport', transport, '--metrics-address', '127.0.0.1:0'];
      const cli = (...args: string[]) => execCli(...args, '--socket', own.socket);
      const spaced = dir(`${transport} with  spaces\tand a tab`);
      let d = await startDaemon({ ...own, flags });
      try {
        await cli('mount', lazy, spaced);
        await d.stop('SIGKILL');
        d = await startDaemon({ ...own, flags });
        const status = JSON.parse((await cli('status', '--json')).stdout);
        assert.deepEqual(
          status.mounts.map((m: { target: string }) => m.target),
          [spaced],
          d.log,
        );
        assert.equal(mountsAt(spaced).length, 1, 'one mount, the stale one detached');
        assert.equal(await hello(spaced), 'hello through a mirror\n');
        await cli('umount', spaced);
        assert.deepEqual(mountsAt(spaced), []);
      } finally {
        await d.stop();
      }
    });
  }
});
