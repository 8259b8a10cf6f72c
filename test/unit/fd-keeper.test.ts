// Which FdKeeper the daemon gets (src/daemon/fd-keeper.ts): systemd's fd store only under systemd,
// none when asked, and what systemd handed over is taken from the environment either way.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { describe, it } from 'node:test';
import type { CacheLock } from '../../src/daemon/cache-lock';
import { openFdKeeper, SystemdFdStore } from '../../src/daemon/fd-keeper';

// Never used: only the holder takes the lock's fd, and these choices start no holder.
const NO_LOCK: CacheLock = { file: '/nonexistent/daemon.lock', fd: -1, release: () => undefined };

describe('openFdKeeper', () => {
  it("'auto' under systemd is its fd store, with the fds it handed over", () => {
    const env = { NOTIFY_SOCKET: '/run/notify', LISTEN_FDS: '1', LISTEN_FDNAMES: 'cachefiles' };
    const keeper = openFdKeeper({ cacheDir: '/nonexistent', lock: NO_LOCK, choice: 'auto', env });
    assert.equal(keeper.kind, 'systemd');
    assert.equal(keeper.inherited('cachefiles'), 3);
    assert.equal(env.LISTEN_FDS, undefined, 'children do not see them');
  });

  it("'systemd' without systemd is refused, naming what is missing", () => {
    assert.throws(
      () => openFdKeeper({ cacheDir: '/nonexistent', lock: NO_LOCK, choice: 'systemd', env: {} }),
      /fdKeeper "systemd" needs NOTIFY_SOCKET/,
    );
  });

  it("'none' keeps nothing, even under systemd", () => {
    const keeper = openFdKeeper({
      cacheDir: '/nonexistent',
      lock: NO_LOCK,
      choice: 'none',
      env: { NOTIFY_SOCKET: '/x' },
    });
    assert.equal(keeper.kind, 'none');
    assert.equal(keeper.keep('fanotify', 0), false);
  });

  it('closes the handed-over fds no transport asked for, and only those', () => {
    const asked = fs.openSync('/dev/null', 'r');
    const unclaimed = fs.openSync('/dev/null', 'r');
    const store = new SystemdFdStore(
      new Map([
        ['fuse', asked],
        ['fanotify', unclaimed],
      ]),
    );
    assert.equal(store.inherited('fuse'), asked);
    assert.deepEqual(store.releaseUnclaimed(), ['fanotify']);
    assert.throws(() => fs.fstatSync(unclaimed), { code: 'EBADF' });
    fs.fstatSync(asked);
    assert.deepEqual(store.releaseUnclaimed(), [], 'once');
    fs.closeSync(asked);
  });
});
