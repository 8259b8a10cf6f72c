// `umount` of an image in use fails saying who uses it: the processes (pid, command, how) and the
// mounts stacked on it, so that the user knows what to stop.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { writeRandomTree } from '../lib/chaos';
import { execCli, publishLazy, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { UmociImage } from '../lib/test-images';
import { mountOverlay } from '../../src/mount/overlay';
import { unmount } from '../../src/mount/file-backed';

describe('umount of a busy image', () => {
  let registry: RegistryServer;
  let daemon: Daemon;
  let work: string;
  let socket: string;
  let ref: string;

  before(async () => {
    work = tempDir('umount-busy');
    const tree = path.join(work, 'tree');
    writeRandomTree(tree, [100_000]);
    registry = await startRegistry();
    const image = new UmociImage(path.join(work, 'layout'), 'busy').create().rawLayer(tree);
    ref = publishLazy(image.ref, registry.host, 'busy').lazy;
    socket = path.join(work, 'control.sock');
    daemon = await startDaemon({ cacheDir: path.join(work, 'cache'), socket, flags: ['--metrics-address', ''] });
  });
  after(async () => {
    await daemon?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it('names the process whose working directory is in the mount, and unmounts once it is gone', async () => {
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, ref, mnt);
    const holder = spawn('sleep', ['600'], { cwd: path.join(mnt, 'data'), stdio: 'ignore' });
    try {
      await assert.rejects(execCli('umount', '--socket', socket, mnt), (err: { stderr: string }) => {
        assert.match(err.stderr, new RegExp(`${mnt} is busy: .*pid ${holder.pid} \\(sleep: cwd\\)`));
        return true;
      });
    } finally {
      const exited = new Promise((r) => holder.once('exit', r));
      holder.kill('SIGKILL');
      await exited;
    }
    await execCli('umount', '--socket', socket, mnt);
  });

  it('names an open file and an overlay using the mount as a layer', async () => {
    const { mnt, merged } = await mountUnderOverlay();
    const holder = spawn('tail', ['-f', path.join(mnt, 'data', 'random-0')], { stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 300)); // tail has opened the file
      await assert.rejects(execCli('umount', '--socket', socket, mnt), (err: { stderr: string }) => {
        assert.match(err.stderr, new RegExp(`pid ${holder.pid} \\(tail: fd\\)`));
        assert.match(err.stderr, new RegExp(`mounted on it: ${merged}`));
        return true;
      });
    } finally {
      const exited = new Promise((r) => holder.once('exit', r));
      holder.kill('SIGKILL');
      await exited;
      unmount(merged);
    }
    await execCli('umount', '--socket', socket, mnt);
  });

  it('umount --local of an image mounted by mount-local names the holder too', async () => {
    const out = path.join(work, 'built');
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('build', path.join(work, 'tree'), out);
    await execCli('mount-local', out, mnt);
    const holder = spawn('sleep', ['600'], { cwd: mnt, stdio: 'ignore' });
    try {
      await assert.rejects(execCli('umount', '--local', mnt), (err: { stderr: string }) => {
        assert.match(err.stderr, new RegExp(`${mnt} is busy: pid ${holder.pid} \\(sleep: cwd\\)`));
        return true;
      });
    } finally {
      const exited = new Promise((r) => holder.once('exit', r));
      holder.kill('SIGKILL');
      await exited;
    }
    await execCli('umount', '--local', mnt);
  });

  /** A new lazy mount of the image, and an overlay using it as its lower layer. */
  async function mountUnderOverlay(): Promise<{ mnt: string; merged: string }> {
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, ref, mnt);
    const merged = fs.mkdtempSync(path.join(work, 'merged-'));
    const upper = fs.mkdtempSync(path.join(work, 'upper-'));
    const workdir = fs.mkdtempSync(path.join(work, 'work-'));
    mountOverlay({ lower: mnt, upper, work: workdir, target: merged });
    return { mnt, merged };
  }

  // An overlay holds its layers by private clones: unmounting one under it succeeds, which left the
  // overlay's readers with a mount nothing served.
  it('refuses while only an overlay uses the mount as a layer', async () => {
    const { mnt, merged } = await mountUnderOverlay();
    try {
      await assert.rejects(execCli('umount', '--socket', socket, mnt), (err: { stderr: string }) => {
        assert.match(err.stderr, new RegExp(`${mnt} is busy: mounted on it: ${merged}`));
        return true;
      });
    } finally {
      unmount(merged);
    }
    await execCli('umount', '--socket', socket, mnt);
  });

  // Last: it stops the daemon.
  it('a planned stop fills a mount only an overlay uses before detaching it', async () => {
    // A daemon on an empty cache: what the overlay reads after the stop was never fetched before it.
    await daemon.stop();
    daemon = await startDaemon({ cacheDir: path.join(work, 'cache-2'), socket, flags: ['--metrics-address', ''] });
    const { merged } = await mountUnderOverlay();
    try {
      await daemon.stop();
      const file = path.join('data', 'random-0');
      assert.ok(
        fs.readFileSync(path.join(merged, file)).equals(fs.readFileSync(path.join(work, 'tree', file))),
        'read right through the overlay after the daemon stopped',
      );
    } finally {
      unmount(merged);
    }
  });
});
