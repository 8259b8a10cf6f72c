// Finding who holds a directory from /proc: needs no mount and no root (this user's own processes).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { describeHolders, explainBusy, mountHolders } from '../../src/mount/holders';

describe('mount holders', () => {
  it('finds a process by its working directory and by an open file, not one elsewhere', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-holders-'));
    fs.mkdirSync(path.join(dir, 'sub'));
    fs.writeFileSync(path.join(dir, 'file'), 'x');
    const inCwd = spawn('sleep', ['60'], { cwd: path.join(dir, 'sub'), stdio: 'ignore' });
    const withFile = spawn('sh', ['-c', 'exec sleep 60 < "$1"', 'sh', path.join(dir, 'file')], { stdio: 'ignore' });
    const elsewhere = spawn('sleep', ['60'], { cwd: os.tmpdir(), stdio: 'ignore' });
    try {
      await new Promise((r) => setTimeout(r, 200));
      const h = mountHolders(dir);
      const byPid = new Map(h.processes.map((p) => [p.pid, p]));
      assert.deepEqual(byPid.get(inCwd.pid!), { pid: inCwd.pid, command: 'sleep', uses: ['cwd'] });
      assert.deepEqual(byPid.get(withFile.pid!), { pid: withFile.pid, command: 'sleep', uses: ['fd'] });
      assert.equal(byPid.has(elsewhere.pid!), false);
      assert.equal(byPid.has(process.pid), false, 'the scanning process itself is left out');
      assert.deepEqual(h.mounts, []);
      assert.match(describeHolders(h), new RegExp(`pid ${inCwd.pid} \\(sleep: cwd\\)`));
      // A sibling whose name starts with the target's is not under it.
      assert.equal(mountHolders(`${dir}-not`).processes.length, 0);
    } finally {
      for (const c of [inCwd, withFile, elsewhere]) c.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('explains EBUSY only', () => {
    const other = Object.assign(new Error('umount2 /x: EINVAL'), { code: 'EINVAL' });
    assert.equal(explainBusy('/x', other), other);
    const busy = Object.assign(new Error('umount2 /nowhere: EBUSY'), { code: 'EBUSY' });
    const e = explainBusy('/nowhere', busy) as NodeJS.ErrnoException;
    assert.equal(e.code, 'EBUSY');
    assert.equal(e.cause, busy);
    assert.match(e.message, /^\/nowhere is busy: no process or mount found holding it/);
  });
});
