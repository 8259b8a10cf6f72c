// `doctor` probes the kernel for real; the daemon refuses a cache where misses cannot be served;
// `doctor` checks the snapshotter socket of a real daemon and prints containerd's configuration for it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { cleanup, tempDir } from '../lib/image';
import { runCli, startDaemon } from '../lib/harness';

const disk = tempDir('doctor');
const shm = fs.mkdtempSync('/dev/shm/eo-doctor-');
after(() => cleanup(disk, shm));

function doctor(cacheDir: string) {
  const r = runCli(['doctor', '--json', '--cache-dir', cacheDir]);
  return { status: r.status, report: JSON.parse(r.stdout) };
}

it('chooses fanotify on a disk filesystem of this 6.18 kernel, and reports what is missing', () => {
  const { status, report } = doctor(disk);
  assert.equal(status, 0);
  assert.equal(report.transports.fanotify.ok, true);
  assert.equal(report.erofs.ok, true);
  assert.equal(report.cacheFs.type, 'ext4');
  assert.equal(report.transports.cachefiles.ok, false);
  assert.equal(report.chosen, 'fanotify');
});

it('says what readers see when the daemon dies, and never chooses fanotify without an fd keeper', () => {
  const { report } = doctor(disk);
  assert.equal(report.keeper, 'holder');
  assert.deepEqual(report.whenDaemonDies, {
    cachefiles: 'blocks and resumes',
    fanotify: 'blocks and resumes',
    fuse: 'blocks and resumes',
  });
  const none = runCli(['doctor', '--json', '--cache-dir', disk, '--fd-keeper', 'none']);
  const bare = JSON.parse(none.stdout);
  assert.deepEqual(bare.whenDaemonDies, { cachefiles: 'EIO', fanotify: 'zeros', fuse: 'EIO' });
  assert.equal(bare.chosen, 'fuse');
  assert.match(bare.passedOver.fanotify, /read as zeros after a daemon crash/);
  const text = runCli(['doctor', '--cache-dir', disk, '--fd-keeper', 'none']).stdout;
  assert.match(text, /fanotify: daemon dies +reads of data not cached return ZEROS: never chosen/);
  // Asked for by name, it is refused too: the daemon would not start with it.
  const named = runCli(['doctor', '--json', '--cache-dir', disk, '--fd-keeper', 'none', '--transport', 'fanotify']);
  assert.equal(named.status, 1);
  assert.equal(JSON.parse(named.stdout).chosen, null);
});

// FUSE serves the blob files from the cache files whatever filesystem holds them; lazy-fuse.test.ts
// mounts and reads an image with its cache on tmpfs for real.
it('chooses FUSE for a cache on tmpfs, where fanotify marks answer EOPNOTSUPP', () => {
  const { status, report } = doctor(shm);
  assert.equal(status, 0);
  assert.equal(report.transports.fanotify.ok, false);
  assert.match(report.transports.fanotify.detail, /EOPNOTSUPP/);
  assert.equal(report.transports.fuse.ok, true);
  assert.equal(report.cacheFs.type, 'tmpfs');
  assert.equal(report.chosen, 'fuse');
  const text = runCli(['doctor', '--cache-dir', shm]).stdout;
  assert.match(text, /FUSE +yes/);
  assert.match(text, /transport chosen +yes +fuse/);
});

it('the daemon will not run fanotify on such a cache, and says why', () => {
  const r = runCli(
    [
      'daemon',
      '--cache-dir',
      shm,
      '--socket',
      path.join(disk, 'sock'),
      '--transport',
      'fanotify',
      '--metrics-address',
      '',
    ],
    { timeout: 20_000 },
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /transport fanotify was requested but cannot work here .*EOPNOTSUPP.*tmpfs/);
});

it('FUSE can be insisted on where fanotify would be chosen', () => {
  const d = runCli(['doctor', '--cache-dir', disk, '--transport', 'fuse', '--json']);
  assert.equal(d.status, 0);
  assert.equal(JSON.parse(d.stdout).chosen, 'fuse');
});

it('a transport the kernel lacks, when forced, stops the daemon with the reason', () => {
  const r = runCli(
    [
      'daemon',
      '--cache-dir',
      disk,
      '--socket',
      path.join(disk, 'sock'),
      '--transport',
      'cachefiles',
      '--metrics-address',
      '',
    ],
    { timeout: 20_000 },
  );
  assert.equal(r.status, 1);
  assert.match(r.stderr, /transport cachefiles was requested but cannot work here \(cachefiles: .*\/dev\/cachefiles/);
  const d = runCli(['doctor', '--cache-dir', disk, '--transport', 'cachefiles', '--json']);
  assert.equal(d.status, 1);
  assert.equal(JSON.parse(d.stdout).chosen, null);
});

it('an unknown transport name is a usage error', () => {
  const r = runCli(['daemon', '--transport', 'nfs']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /nfs.*Allowed choices are auto, cachefiles, fanotify, fuse/);
});

it("checks the socket the daemon serves containerd on, and prints containerd's configuration for it", async () => {
  const work = fs.mkdtempSync(path.join(disk, 'snapshotter-'));
  const control = path.join(work, 'control.sock');
  const sock = path.join(work, 'snapshotter.sock');
  const daemon = await startDaemon({
    cacheDir: path.join(work, 'cache'),
    socket: control,
    flags: ['--metrics-address', '', '--fd-keeper', 'none', '--snapshotter-socket', sock],
  });
  try {
    const r = runCli(['doctor', '--json', '--cache-dir', disk, '--socket', control]);
    assert.equal(r.status, 0, r.stderr);
    const { snapshotter } = JSON.parse(r.stdout);
    assert.equal(snapshotter.socket, sock);
    assert.match(snapshotter.from, /what the daemon on .*control\.sock serves/);
    const check = (name: string) => snapshotter.checks.find((c: { name: string }) => c.name === name);
    for (const name of ['configured', 'exists', 'root only', 'daemon listening', 'answers Snapshots.List'])
      assert.equal(check(name)?.ok, true, `${name}: ${JSON.stringify(check(name))}`);
    assert.match(check('root only').detail, /socket 0600/);
    assert.equal(check('answers Snapshots.List').detail, '0 snapshots');

    const text = runCli(['doctor', '--cache-dir', disk, '--socket', control]).stdout;
    assert.match(text, /snapshotter: answers Snapshots\.List +yes +0 snapshots/);
    const toml = text.slice(text.indexOf('version = 2'));
    assert.match(
      toml,
      new RegExp(`\\[proxy_plugins\\.erofs-ondemand\\]\\n  type = "snapshot"\\n  address = "${sock}"`),
    );
    assert.match(toml, /\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\]\n {2}snapshotter = "erofs-ondemand"/);
    assert.match(toml, /disable_snapshot_annotations = false/);

    // Reachable by others: a failure.
    fs.chmodSync(sock, 0o666);
    const open = runCli(['doctor', '--json', '--cache-dir', disk, '--socket', control]);
    assert.equal(open.status, 1);
    assert.match(
      JSON.parse(open.stdout).snapshotter.checks.find((c: { name: string }) => c.name === 'root only').detail,
      /the socket's mode is 0666, others may connect/,
    );
    fs.chmodSync(sock, 0o600);
  } finally {
    await daemon.stop();
  }
  // The daemon is gone and a socket file left behind: nothing listens; and no daemon answers on the
  // control socket to say which socket it serves, so one on another control socket serves none.
  execFileSync('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', sock]);
  const left = JSON.parse(runCli(['doctor', '--json', '--cache-dir', disk, '--snapshotter-socket', sock]).stdout);
  const listening = left.snapshotter.checks.find((c: { name: string }) => c.name === 'daemon listening');
  assert.equal(listening.ok, false);
  assert.match(listening.detail, /left behind/);
  const off = JSON.parse(runCli(['doctor', '--json', '--cache-dir', disk, '--socket', control]).stdout).snapshotter;
  assert.equal(off.socket, '');
  assert.equal(off.containerdConfig, null);
  assert.match(
    off.checks[0].detail,
    /off \(the default; no daemon answers on .*control\.sock\); serve it with --snapshotter-socket/,
  );
});
