// Read throughput through each cache-miss transport this machine has, against the same image mounted
// from local files (mount-local of the materialised blobs). The image holds one 200 MiB file of random
// bytes, in a registry on 127.0.0.1:
//   sequential  dd of the whole file, 1 MiB reads
//   random      4 KiB reads at random 4 KiB-aligned offsets (the same sequence for every method)
//   cold        page cache dropped, blob cache empty: every miss fetches from the registry
//   warm        blob cache full (prefetched), page cache dropped
// Each lazy method is a real daemon (`--transport`, `--fuse-backing`); readers are other processes.
// Medians of BENCH_RUNS runs (default 3). Prints one table.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { materializeBlob } from '../src/blob/materialize';
import { mountFileBacked, unmount } from '../src/mount/file-backed';
import { startDaemon } from '../test/lib/harness';
import { startRegistry } from '../test/lib/registry-server';
import { layoutManifest } from '../test/lib/lazy-image';
import { bigFileImage } from '../test/lib/test-images';
import { cli, dropCaches, median, numberTable, timed } from './lib';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const RANDOM_READS = Number(process.env.BENCH_RANDOM_READS ?? 1000);
const FILE = 'big';

interface Method {
  name: string;
  /** Daemon flags; none: the local mount. */
  flags?: string[];
}

/** MB/s of reading the whole file sequentially. */
function sequential(file: string): number {
  const size = fs.statSync(file).size;
  const [, s] = timed(() => execFileSync('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'], { stdio: 'ignore' }));
  return size / 1e6 / s;
}

/** 4 KiB reads per second at RANDOM_READS pseudo-random offsets (a fixed sequence), in another process. */
function random(file: string): number {
  const script = `
    const fs = require('fs');
    const fd = fs.openSync(process.argv[1], 'r');
    const blocks = Math.floor(fs.fstatSync(fd).size / 4096);
    const buf = Buffer.alloc(4096);
    let x = 12345;
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < ${RANDOM_READS}; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      if (fs.readSync(fd, buf, 0, 4096, (x % blocks) * 4096) !== 4096) throw new Error('short read');
    }
    console.log(Number(process.hrtime.bigint() - t0) / 1e9);`;
  const seconds = Number(execFileSync(process.execPath, ['-e', script, file], { encoding: 'utf8' }).trim());
  return RANDOM_READS / seconds;
}

type Measure = 'seq-cold' | 'seq-warm' | 'rand-cold' | 'rand-warm';
const MEASURES: Measure[] = ['seq-cold', 'seq-warm', 'rand-cold', 'rand-warm'];

async function main(): Promise<void> {
  const work = fs.mkdtempSync('/var/tmp/erofs-ondemand-bench-transports-');
  const registry = await startRegistry();
  const results = new Map<string, Record<Measure, number[]>>();
  let expected = '';
  try {
    process.stderr.write('== preparing: image (200 MiB random file), registry, conversion, local blobs\n');
    const img = bigFileImage();
    execFileSync('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${img.ref}`,
      `docker://${registry.host}/src/big:1`,
    ]);
    cli('convert', '-q', `${registry.host}/src/big:1`, `${registry.host}/lazy/big:1`);
    cli('convert', '-q', `oci:${img.ref}`, `oci:${work}/lazy-layout:1`);
    const { manifest, blob } = layoutManifest(`${work}/lazy-layout:1`);
    const [boot, ...blobs] = manifest.layers;
    const devices: string[] = [];
    for (const b of blobs) {
      const out = path.join(work, `${b.digest.slice(7)}.raw`);
      await materializeBlob(blob(b.digest), out);
      devices.push(out);
    }
    const doctor = JSON.parse(cli('doctor', '--json', '--cache-dir', path.join(work, 'probe')));
    const methods: Method[] = [{ name: 'local (mount-local)' }];
    if (doctor.transports.fanotify.ok) methods.push({ name: 'fanotify', flags: ['--transport', 'fanotify'] });
    if (doctor.transports.fuse.ok) {
      methods.push({ name: 'FUSE file-backed', flags: ['--transport', 'fuse', '--fuse-backing', 'file'] });
      methods.push({ name: 'FUSE loop', flags: ['--transport', 'fuse', '--fuse-backing', 'loop'] });
    }
    const localMnt = fs.mkdtempSync(path.join(work, 'local-'));
    mountFileBacked({ bootstrap: blob(boot.digest), blobs: devices, target: localMnt });
    try {
      expected = execFileSync('sha256sum', [path.join(localMnt, FILE)], { encoding: 'utf8' }).split(' ')[0];
    } finally {
      unmount(localMnt);
    }

    for (let run = 0; run < RUNS; run++) {
      for (const m of methods) {
        const r = results.get(m.name) ?? { 'seq-cold': [], 'seq-warm': [], 'rand-cold': [], 'rand-warm': [] };
        results.set(m.name, r);
        const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
        if (!m.flags) {
          mountFileBacked({ bootstrap: blob(boot.digest), blobs: devices, target: mnt });
          try {
            for (const kind of ['cold', 'warm'] as const) {
              dropCaches();
              r[`seq-${kind}`].push(sequential(path.join(mnt, FILE)));
              dropCaches();
              r[`rand-${kind}`].push(random(path.join(mnt, FILE)));
            }
          } finally {
            unmount(mnt);
          }
        } else {
          for (const pattern of ['seq', 'rand'] as const) {
            const cache = path.join(work, `cache-${run}-${pattern}`);
            const socket = path.join(work, `sock-${run}-${pattern}`);
            const daemon = await startDaemon({
              cacheDir: cache,
              socket,
              flags: ['--metrics-address', '', ...m.flags],
              env: { EROFS_ONDEMAND_LOG_LEVEL: process.env.EROFS_ONDEMAND_LOG_LEVEL ?? 'warn' },
              stderr: 'inherit',
              startTimeoutMs: 20_000,
            });
            try {
              cli('mount', '--socket', socket, `${registry.host}/lazy/big:1`, mnt);
              const read = pattern === 'seq' ? sequential : random;
              dropCaches();
              r[`${pattern}-cold`].push(read(path.join(mnt, FILE)));
              cli('prefetch', '--socket', socket, mnt);
              dropCaches();
              r[`${pattern}-warm`].push(read(path.join(mnt, FILE)));
              if (pattern === 'seq') {
                const got = execFileSync('sha256sum', [path.join(mnt, FILE)], { encoding: 'utf8' }).split(' ')[0];
                if (got !== expected) throw new Error(`${m.name}: ${FILE} reads as ${got}, expected ${expected}`);
              }
              cli('umount', '--socket', socket, mnt);
            } finally {
              await daemon.stop();
              fs.rmSync(cache, { recursive: true, force: true });
            }
          }
        }
        fs.rmdirSync(mnt);
        process.stderr.write(
          `   run ${run + 1} ${m.name}: ${MEASURES.map((k) => `${k} ${r[k][run].toFixed(0)}`).join(', ')}\n`,
        );
      }
    }
    const header = ['method', 'seq cold MB/s', 'seq warm MB/s', '4K random cold reads/s', '4K random warm reads/s'];
    const rows = [...results].map(([name, r]) => [name, ...MEASURES.map((k) => median(r[k]).toFixed(0))]);
    process.stdout.write(
      `\nread throughput of a 200 MiB file of random bytes (1 MiB chunks), registry on 127.0.0.1, medians of ${RUNS} runs\n`,
    );
    process.stdout.write(
      `cold: page cache dropped, blob cache empty; warm: blob cache full, page cache dropped; random: ${RANDOM_READS} reads of 4 KiB\n`,
    );
    process.stdout.write(`${numberTable([header, ...rows])}\n`);
    process.stdout.write(
      'local: the materialised blobs mounted file-backed (no daemon): its cold and warm runs are the same thing.\n',
    );
  } finally {
    await registry.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench-transports: ${(err as Error).stack}\n`);
  process.exit(1);
});
