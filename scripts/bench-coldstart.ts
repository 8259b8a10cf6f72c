// Cold start: the time from "run this image" to the workload's first result, for an image built from
// Debian packages in a registry on 127.0.0.1, with the page cache dropped before each run:
//   traditional  skopeo copy (pull) + umoci unpack, then run
//   lazy         erofs-ondemand mount (fanotify), then run
//   lazy+pf      the same with 2 background prefetch workers
//   local        the image already unpacked on disk (the floor)
// Medians of BENCH_RUNS runs (default 3). Prints a table.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon } from '../test/lib/harness';
import { startRegistry } from '../test/lib/registry-server';
import { pythonImage } from '../test/lib/test-images';
import { cli, dropCaches, median, numberTable, timed } from './lib';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const WORKLOAD = [
  '/usr/bin/python3',
  '-c',
  'import json, email.parser, http.client; print(json.dumps({"answer": 42}))',
];

async function main(): Promise<void> {
  const work = fs.mkdtempSync('/var/tmp/erofs-ondemand-coldstart-');
  const registry = await startRegistry();
  const rows: string[][] = [];
  try {
    process.stderr.write('== preparing: image, registry, conversion\n');
    const img = pythonImage();
    execFileSync('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${img.ref}`,
      `docker://${registry.host}/src/python:1`,
    ]);
    cli('convert', '-q', `${registry.host}/src/python:1`, `${registry.host}/lazy/python:1`);
    const sourceBytes = JSON.parse(
      execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/src/python:1`], {
        encoding: 'utf8',
      }),
    ).layers.reduce((n: number, l: { size: number }) => n + l.size, 0);
    const results: Record<string, { t: number[]; bytes: number[] }> = {
      traditional: { t: [], bytes: [] },
      lazy: { t: [], bytes: [] },
      'lazy+prefetch': { t: [], bytes: [] },
      local: { t: [], bytes: [] },
    };
    let expected = '';
    for (let i = 0; i < RUNS; i++) {
      // traditional
      const dir = path.join(work, `trad-${i}`);
      fs.mkdirSync(dir);
      dropCaches();
      const [out, pulled] = timed(() => {
        execFileSync('skopeo', [
          'copy',
          '-q',
          '--src-tls-verify=false',
          `docker://${registry.host}/src/python:1`,
          `oci:${dir}/layout:1`,
        ]);
        execFileSync('umoci', ['unpack', '--image', `${dir}/layout:1`, `${dir}/bundle`], { stdio: 'ignore' });
        return execFileSync('chroot', [`${dir}/bundle/rootfs`, ...WORKLOAD], { encoding: 'utf8' });
      });
      results.traditional.t.push(pulled);
      results.traditional.bytes.push(sourceBytes);
      expected ||= out;
      // local: the same rootfs, now on disk
      dropCaches();
      results.local.t.push(timed(() => execFileSync('chroot', [`${dir}/bundle/rootfs`, ...WORKLOAD]))[1]);
      results.local.bytes.push(0);
      fs.rmSync(dir, { recursive: true, force: true });

      for (const [name, prefetch] of [
        ['lazy', 0],
        ['lazy+prefetch', 2],
      ] as const) {
        const cache = path.join(work, `cache-${name}-${i}`);
        const socket = path.join(work, `sock-${name}-${i}`);
        const daemon = await startDaemon({
          cacheDir: cache,
          socket,
          flags: ['--prefetch', String(prefetch)],
          stderr: 'ignore',
        });
        const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
        try {
          dropCaches();
          const [got, lazySeconds] = timed(() => {
            cli('mount', '--socket', socket, `${registry.host}/src/python:1`, mnt);
            return execFileSync('chroot', [mnt, ...WORKLOAD], { encoding: 'utf8' });
          });
          results[name].t.push(lazySeconds);
          if (got !== expected)
            throw new Error(`lazy run printed ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`);
          const status = JSON.parse(cli('status', '--json', '--socket', socket));
          results[name].bytes.push(status.fetch.bytesFetched);
          cli('umount', '--socket', socket, mnt);
        } finally {
          await daemon.stop();
          fs.rmSync(cache, { recursive: true, force: true });
        }
      }
      process.stderr.write(
        `   run ${i + 1}: ${Object.entries(results)
          .map(([k, v]) => `${k} ${v.t[i].toFixed(2)} s`)
          .join(', ')}\n`,
      );
    }
    for (const [name, r] of Object.entries(results)) {
      rows.push([
        name,
        median(r.t).toFixed(2),
        (median(r.bytes) / 1e6).toFixed(1),
        `${((100 * median(r.bytes)) / sourceBytes).toFixed(1)}%`,
      ]);
    }
    const header = ['method', 'seconds to first result', 'MB fetched', 'of image (compressed)'];
    process.stdout.write(
      `\ncold start of minbase+python3 (${(sourceBytes / 1e6).toFixed(1)} MB compressed), workload: ${WORKLOAD.join(' ')}\n`,
    );
    process.stdout.write(`registry on 127.0.0.1, page cache dropped before each run, medians of ${RUNS} runs\n`);
    process.stdout.write(`${numberTable([header, ...rows])}\n`);
    process.stdout.write(
      'lazy+prefetch: the prefetch keeps running after the first result; its bytes are counted when the run ends.\n',
    );
  } finally {
    await registry.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench-coldstart: ${(err as Error).stack}\n`);
  process.exit(1);
});
