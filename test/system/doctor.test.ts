// `doctor` probes the kernel for real; the daemon refuses a cache where misses cannot be served.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, it } from 'node:test';
import { cleanup, tempDir } from '../lib/image';
import { runCli } from '../lib/harness';

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
