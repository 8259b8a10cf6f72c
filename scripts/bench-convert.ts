// Convert benchmark: images built from Debian packages, pushed to one local registry, converted
// into a second local registry by `erofs-ondemand convert`, against `skopeo copy` of the same image
// between the same two registries. Medians of several runs; each run gets a fresh destination
// registry, so no blob can be mounted or skipped. Prints a table.
import { execFileSync } from 'node:child_process';
import os from 'node:os';
import { runCli, type ConvertJson } from '../test/lib/harness';
import { startRegistry, type RegistryServer } from '../test/lib/registry-server';
import { minbaseImage, pythonImage, type UmociImage } from '../test/lib/test-images';
import { childrenCpuSeconds, median, numberTable, processCpuSeconds, timed } from './lib';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);

const mb = (n: number) => (n / 1e6).toFixed(1);

async function main(): Promise<void> {
  const images: Array<[string, () => UmociImage]> = [
    ['debootstrap minbase (3 layers)', minbaseImage],
    ['minbase + python3 (2 layers)', pythonImage],
  ];
  let src: RegistryServer | undefined;
  let dst: RegistryServer | undefined;
  const rows: string[][] = [];
  try {
    src = await startRegistry();
    for (const [name, make] of images) {
      process.stderr.write(`== ${name}: building/pushing the source image\n`);
      const img = make();
      const repo = name.split(' ')[0].replace(/[^a-z0-9]/g, '');
      execFileSync('skopeo', [
        'copy',
        '-q',
        '--dest-tls-verify=false',
        `oci:${img.ref}`,
        `docker://${src.host}/src/${repo}:1`,
      ]);
      const ours: number[] = [];
      const theirs: number[] = [];
      const ourCpu: number[] = [];
      const registryCpu: number[] = [];
      let last: ConvertJson | undefined;
      for (let i = 0; i < RUNS; i++) {
        await dst?.stop();
        dst = await startRegistry();
        theirs.push(
          timed(() =>
            execFileSync('skopeo', [
              'copy',
              '-q',
              '--src-tls-verify=false',
              '--dest-tls-verify=false',
              `docker://${src!.host}/src/${repo}:1`,
              `docker://${dst!.host}/copy${i}/${repo}:1`,
            ]),
          )[1],
        );
        let out = '';
        const registriesBefore = processCpuSeconds(src.pid) + processCpuSeconds(dst.pid);
        const childrenBefore = childrenCpuSeconds();
        ours.push(
          timed(() => {
            const r = runCli(['convert', '--json', `${src!.host}/src/${repo}:1`, `${dst!.host}/lazy${i}/${repo}:1`]);
            if (r.status !== 0) throw new Error(`convert failed: ${r.stderr}`);
            out = r.stdout;
          })[1],
        );
        ourCpu.push(childrenCpuSeconds() - childrenBefore);
        registryCpu.push(processCpuSeconds(src.pid) + processCpuSeconds(dst.pid) - registriesBefore);
        last = JSON.parse(out);
        process.stderr.write(
          `   run ${i + 1}: convert ${ours[i].toFixed(2)} s (${ourCpu[i].toFixed(2)} CPU-s; registries ${registryCpu[i].toFixed(2)} CPU-s), skopeo copy ${theirs[i].toFixed(2)} s\n`,
        );
      }
      if (!last) throw new Error(`BENCH_RUNS=${RUNS}: no run to report`);
      const { blobBytes, tarBytes } = last;
      rows.push([
        name,
        mb(last.sourceLayerBytes),
        mb(tarBytes),
        median(ours).toFixed(2),
        (tarBytes / 1e6 / median(ours)).toFixed(1),
        median(ourCpu).toFixed(2),
        median(registryCpu).toFixed(2),
        `${mb(last.bootstrapBytes)} (${((100 * last.bootstrapBytes) / tarBytes).toFixed(2)}%)`,
        `${mb(blobBytes)} (${((100 * blobBytes) / last.sourceLayerBytes).toFixed(0)}%)`,
        median(theirs).toFixed(2),
      ]);
    }
  } finally {
    await src?.stop();
    await dst?.stop();
  }
  const header = [
    'image',
    'layers MB (gz)',
    'tar MB',
    'convert s',
    'MB/s (tar)',
    'convert CPU-s',
    'registries CPU-s',
    'bootstrap MB (% of tar)',
    'blobs MB (% of layers)',
    'skopeo copy s',
  ];
  process.stdout.write(
    `\nconvert: registry 127.0.0.1 -> registry 127.0.0.1, medians of ${RUNS} runs, ${os.cpus().length} cores\n`,
  );
  process.stdout.write(`${numberTable([header, ...rows])}\n`);
  process.stdout.write(
    'MB = 1e6 bytes; tar MB = uncompressed layer tars read; blobs = zstd chunks + chunk tables pushed\n',
  );
  process.stdout.write(
    'CPU-s = user + system seconds of the convert process, and of both docker-registry processes during it (same cores)\n',
  );
}

main().catch((err) => {
  process.stderr.write(`bench-convert: ${(err as Error).stack}\n`);
  process.exit(1);
});
