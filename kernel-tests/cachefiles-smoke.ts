// End-to-end proof of the cachefiles on-demand transport through the addon's CachefilesDevice.
// Runs as root inside the test VM (kernel-tests/run-vm), on a kernel with CONFIG_CACHEFILES_ONDEMAND
// and CONFIG_EROFS_FS_ONDEMAND, with an ext4 file system at /cache:
//
//   node dist/kernel-tests/cachefiles-smoke.js [work-dir]
//
// 1. builds a small tree into bootstrap + blob with the project's own builder (the CLI);
// 2. opens /dev/cachefiles, `dir /cache/fscache`, `tag smoke`, `bind ondemand`, starts the reader;
// 3. mounts `-t erofs -o fsid=F none MNT` (in a child process: mount(2) blocks until the bootstrap's
//    OPEN and first READs are answered, and they are answered on this thread) and serves
//    OPEN (copen with the local file's size), READ (writeAligned from the local file, then
//    readComplete) and CLOSE (closeFd);
// 4. compares every file under MNT with the source (in a child process, for the same reason);
// 5. unmounts and mounts the same fsid again: everything is now in the cache, so no READ is expected;
// 6. mounts with a domain_id (a new volume, so cold again) and compares once more.
// Prints OPEN/READ/CLOSE counts per phase; exits non-zero on any mismatch or protocol surprise.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { native, type CachefilesMessage } from '../src/native';
import { execCli } from '../test/lib/harness';
import { compareTreesInChild } from '../test/lib/tree-compare';

const run = promisify(execFile);
const ENOENT = os.constants.errno.ENOENT;
const CACHE_DIR = '/cache/fscache';
const TIMEOUT_MS = Number(process.env.SMOKE_TIMEOUT_MS ?? 600_000);

interface Counts {
  open: number;
  read: number;
  close: number;
  readBytes: number;
  invalid: number;
  errors: number;
}
const zero = (): Counts => ({ open: 0, read: 0, close: 0, readBytes: 0, invalid: 0, errors: 0 });

function log(msg: string): void {
  process.stdout.write(`smoke: ${msg}\n`);
}

function makeSource(dir: string): void {
  fs.mkdirSync(path.join(dir, 'sub', 'deeper'), { recursive: true });
  const rand = (n: number) => crypto.randomBytes(n);
  fs.writeFileSync(path.join(dir, 'hello.txt'), 'hello from the lazily served image\n');
  fs.writeFileSync(path.join(dir, 'empty'), '');
  fs.writeFileSync(path.join(dir, 'page'), rand(4096));
  fs.writeFileSync(path.join(dir, 'page-plus-one'), rand(4097));
  fs.writeFileSync(path.join(dir, 'sub', 'three-chunks'), rand(3 * 1024 * 1024 - 1234)); // crosses 1 MiB chunks
  fs.writeFileSync(path.join(dir, 'sub', 'deeper', 'odd'), rand(12345));
  fs.writeFileSync(path.join(dir, 'sub', 'zeros'), Buffer.alloc(2 * 1024 * 1024)); // hole chunks
  fs.symlinkSync('../hello.txt', path.join(dir, 'sub', 'link'));
  fs.linkSync(path.join(dir, 'page'), path.join(dir, 'sub', 'hardlink'));
}

async function main(): Promise<number> {
  const work = fs.mkdtempSync(path.join(process.argv[2] ?? os.tmpdir(), 'cachefiles-smoke-'));
  const src = path.join(work, 'src');
  const out = path.join(work, 'out');
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(src);
  fs.mkdirSync(mnt);
  makeSource(src);

  let t = Date.now();
  const built = JSON.parse((await execCli('build', src, out, '--json')).stdout) as {
    blob: { id: string; path: string; bytes: number } | null;
  };
  if (!built.blob) throw new Error('the build wrote no blob');
  const bootstrap = path.join(out, 'bootstrap.erofs');
  log(
    `built in ${Date.now() - t} ms: bootstrap ${fs.statSync(bootstrap).size} B, blob ${built.blob.id} ${built.blob.bytes} B`,
  );

  // Cookie key -> local file. The bootstrap's cookie is the fsid; a blob's is its device tag (sha256).
  const fsid = `smoke-${process.pid}`;
  const files = new Map<string, string>([
    [fsid, bootstrap],
    [built.blob.id, built.blob.path],
  ]);

  interface CacheObject {
    key: string;
    file: string;
    size: number;
    fds: number[];
  }
  const objects = new Map<number, CacheObject>();
  let counts = zero();
  const problems: string[] = [];

  fs.mkdirSync(CACHE_DIR, { recursive: true });
  const dev = new native.CachefilesDevice();
  dev.open();
  dev.command(`dir ${CACHE_DIR}`);
  dev.command('tag smoke');
  dev.command('bind ondemand');
  log(`bound ${CACHE_DIR} in on-demand mode`);

  const onMessage = (m: CachefilesMessage): void => {
    switch (m.opcode) {
      case 'open': {
        counts.open++;
        const key = m.cookieKey.toString('latin1');
        const file = files.get(key);
        const volume = m.volumeKey.toString('latin1');
        if (!file) {
          problems.push(`OPEN of unknown cookie ${JSON.stringify(key)} in ${volume}`);
          dev.copen(m.msgId, -ENOENT);
          dev.closeFd(m.fd);
          return;
        }
        const size = fs.statSync(file).size;
        const obj = objects.get(m.objectId) ?? { key, file, size, fds: [] };
        obj.fds.push(m.fd);
        objects.set(m.objectId, obj);
        dev.copen(m.msgId, size);
        log(
          `OPEN  object ${m.objectId} volume ${JSON.stringify(volume)} cookie ${key.slice(0, 16)} fd ${m.fd} -> copen ${size}`,
        );
        return;
      }
      case 'read': {
        counts.read++;
        const obj = objects.get(m.objectId);
        if (!obj || obj.fds.length === 0) {
          problems.push(`READ for unknown object ${m.objectId}`);
          return;
        }
        const fd = obj.fds[0];
        try {
          const end = Math.min(obj.size, m.offset + m.length);
          const data = Buffer.alloc(Math.max(0, end - m.offset));
          const local = fs.openSync(obj.file, 'r');
          try {
            fs.readSync(local, data, 0, data.length, m.offset);
          } finally {
            fs.closeSync(local);
          }
          counts.readBytes += dev.writeAligned(fd, m.offset, data, obj.size);
        } catch (err) {
          problems.push(`READ ${obj.key.slice(0, 16)} [${m.offset}, +${m.length}): ${(err as Error).message}`);
        }
        dev.readComplete(fd, m.msgId); // even after a failure: the reader then gets EIO, not a hang
        if (counts.read <= 5 || process.env.SMOKE_VERBOSE)
          log(`READ  object ${m.objectId} [${m.offset}, +${m.length})`);
        return;
      }
      case 'close': {
        counts.close++;
        const obj = objects.get(m.objectId);
        if (obj) for (const fd of obj.fds) dev.closeFd(fd);
        objects.delete(m.objectId);
        log(`CLOSE object ${m.objectId}`);
        return;
      }
      case 'invalid':
        counts.invalid++;
        problems.push(`invalid message: ${m.reason}`);
        if (m.fd !== undefined && m.msgId !== undefined) {
          dev.copen(m.msgId, -os.constants.errno.EINVAL);
          dev.closeFd(m.fd);
        }
        return;
      case 'error':
        counts.errors++;
        problems.push(`device error: ${m.code} ${m.reason}`);
        return;
    }
  };
  dev.start(onMessage);

  const watchdog = setTimeout(() => {
    log(
      `TIMEOUT after ${TIMEOUT_MS} ms; counts ${JSON.stringify(counts)}; closing the device (pending reads fail with EIO)`,
    );
    dev.close();
    process.exit(1);
  }, TIMEOUT_MS);

  const phases: { name: string; counts: Counts; ms: number; diffs: string[] }[] = [];
  const phase = async (name: string, options: string): Promise<void> => {
    counts = zero();
    t = Date.now();
    await run('mount', ['-t', 'erofs', '-o', options, 'none', mnt]);
    const mountMs = Date.now() - t;
    const diffs = await compareTreesInChild(src, mnt);
    const ms = Date.now() - t;
    await run('umount', [mnt]);
    // CLOSE for every object arrives when the mount lets go of its cookies.
    for (let i = 0; i < 100 && objects.size > 0; i++) await new Promise((r) => setTimeout(r, 50));
    phases.push({ name, counts, ms, diffs });
    log(
      `${name}: mount ${mountMs} ms, mount+compare ${ms} ms; OPEN ${counts.open}, READ ${counts.read} ` +
        `(${counts.readBytes} B written), CLOSE ${counts.close}; ${diffs.length === 0 ? 'tree matches' : `${diffs.length} differences`}`,
    );
    for (const d of diffs.slice(0, 20)) log(`  diff: ${d}`);
  };

  await phase('cold', `fsid=${fsid}`);
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
  await phase('warm (same fsid, data now in the cache)', `fsid=${fsid}`);
  await phase('cold in a domain', `domain_id=smoke-domain,fsid=${fsid}`);

  clearTimeout(watchdog);
  dev.close();

  const [cold, warm, domain] = phases;
  const expect = (ok: boolean, what: string) => {
    if (!ok) problems.push(what);
  };
  for (const p of phases) {
    expect(p.diffs.length === 0, `${p.name}: the mounted tree differs from the source`);
    expect(p.counts.open === 2, `${p.name}: expected 2 OPENs (bootstrap + blob), got ${p.counts.open}`);
    expect(p.counts.close === p.counts.open, `${p.name}: ${p.counts.open} OPENs but ${p.counts.close} CLOSEs`);
  }
  expect(cold.counts.read > 0, 'cold: no READ at all');
  expect(warm.counts.read === 0, `warm: expected no READ (cached), got ${warm.counts.read}`);
  expect(domain.counts.read > 0, 'domain: no READ in a new volume');
  const total = phases.reduce(
    (a, p) => ({ open: a.open + p.counts.open, read: a.read + p.counts.read, close: a.close + p.counts.close }),
    {
      open: 0,
      read: 0,
      close: 0,
    },
  );
  log(`total: OPEN ${total.open}, READ ${total.read}, CLOSE ${total.close}`);
  for (const p of problems) log(`FAIL: ${p}`);
  log(problems.length === 0 ? 'PASS' : `FAIL (${problems.length} problems)`);
  fs.rmSync(work, { recursive: true, force: true });
  return problems.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stdout.write(`smoke: FAIL: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
