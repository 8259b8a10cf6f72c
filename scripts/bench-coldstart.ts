// Cold start: the time from "run this image" to the workload's result, for images built from Debian
// packages in a registry on 127.0.0.1, every container run by runc through containerd (`ctr run`):
//   traditional      containerd's own pull + unpack (a fresh containerd root), then `ctr run`
//   lazy             a pull of the original reference through CRI (as the kubelet makes it) into a fresh
//                    containerd whose proxy snapshotter is erofs-ondemand's daemon, then
//                    `ctr run --snapshotter erofs-ondemand` (the image mounted lazily under the container)
//   lazy+prefetch10  the same with 10 background prefetch workers (blind: every chunk, in blob order)
//   lazy+trace       the same, the daemon replaying a trace of the workload recorded beforehand
//                    (in a separate run with its own daemon and cache, never in the measured one)
//   lazy+cached      the same as lazy+trace on the cache its run left (the pull's snapshots removed):
//                    every chunk the workload reads is on the node, so nothing is fetched. What a start
//                    costs besides fetching: the bound of any prefetch. A fresh daemon and containerd.
//   floor            the image already unpacked by containerd, then `ctr run`
// Every measured run starts with an empty cache (lazy+cached: the one the run before it filled), a
// freshly started daemon and containerd, and a dropped page cache. Seconds are pull + run in every
// mode but the floor (run only), to the workload's result: the first bytes of its output. The time to
// `ctr run`'s exit is printed beside it: it adds the container's teardown, whose overlay unmount syncs
// the filesystem of the upper directory.
// Medians of BENCH_RUNS runs (default 3), all modes of one run back to back, in one series.
// BENCH_IMAGES: comma-separated, of `small` (minbase + python3) and `ml` (Debian's torch and friends);
// default both. BENCH_TRANSPORT: the daemon's transport (default fanotify). BENCH_SVG: where the
// chart goes (default docs/coldstart.svg; empty: no chart). BENCH_MODES: comma-separated modes to run
// (default all; the floor's image is then pulled untimed). BENCH_LOG_DIR: where each lazy run's daemon
// log goes (default: nowhere), to see what a run waited on.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { holderPids, runCli, startDaemon, type Daemon } from '../test/lib/harness';
import { HOLDER_SOCKET } from '../src/daemon/fd-holder';
import { startRegistry } from '../test/lib/registry-server';
import { mlImage, pythonImage, type UmociImage } from '../test/lib/test-images';
import { coldStartSvg, type ChartPanel } from './coldstart-chart';
import { SNAPSHOTTER, startContainerd, unmountUnder, type Containerd } from './containerd';
import { cli, dropCaches, median, numberTable, processCpuSeconds, secondsSince } from './lib';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const TRANSPORT = process.env.BENCH_TRANSPORT ?? 'fanotify';
/** Further daemon flags for every lazy mode, e.g. `--read-ahead 16M` (for picking defaults). */
const DAEMON_FLAGS = (process.env.BENCH_DAEMON_FLAGS ?? '').split(' ').filter(Boolean);
const PREFETCH_WORKERS = 10;
const SVG = process.env.BENCH_SVG ?? path.resolve(__dirname, '..', '..', 'docs', 'coldstart.svg');

interface BenchImage {
  name: string;
  title: string;
  build: () => UmociImage;
  workload: readonly string[];
  /** Whether the workload's stdout is the result it should print. */
  check: (stdout: string) => boolean;
}

const IMAGES: Record<string, BenchImage> = {
  small: {
    name: 'small',
    title: 'minbase + python3',
    build: pythonImage,
    workload: ['python3', '-c', 'import json, email.parser, http.client; print(json.dumps({"answer": 42}))'],
    check: (out) => out === '{"answer": 42}\n',
  },
  ml: {
    name: 'ml',
    title: 'minbase + python3 + numpy + torch + scipy, pandas, sklearn, opencv, torchvision, gcc',
    build: mlImage,
    workload: ['python3', '-c', 'import torch; x=torch.randn(512,512); print((x@x).sum())'],
    // A sum of random numbers: only its shape is known.
    check: (out) => /^tensor\(-?[0-9.e+-]+\)\n$/.test(out),
  },
};

const ALL_MODES = ['traditional', 'lazy', 'lazy+prefetch10', 'lazy+trace', 'lazy+cached', 'floor'] as const;
type Mode = (typeof ALL_MODES)[number];
const MODES: readonly Mode[] = (() => {
  const asked = (process.env.BENCH_MODES ?? ALL_MODES.join(',')).split(',').filter(Boolean);
  for (const m of asked)
    if (!(ALL_MODES as readonly string[]).includes(m)) throw new Error(`BENCH_MODES: no mode ${m} (have ${ALL_MODES})`);
  return ALL_MODES.filter((m) => asked.includes(m));
})();
/** Whether a mode asked for needs a recorded trace (lazy+cached starts on the cache of a traced run). */
const TRACED = MODES.includes('lazy+trace') || MODES.includes('lazy+cached');
const LOG_DIR = process.env.BENCH_LOG_DIR ?? '';

interface Sample {
  /** To the workload's result: the first bytes of its output. */
  seconds: number;
  /** To `ctr run`'s exit: the result, then the container's teardown (see Containerd.runImage). */
  exitSeconds: number;
  bytes: number;
  gets: number;
  /** Reads the workload waited on the network for, and the median wait (seconds); lazy modes only. */
  misses?: number;
  missP50?: number;
  missP99?: number;
  /** Of `seconds`, the pull's (containerd's own, or CRI's through the snapshotter); not the floor's. */
  pullSeconds?: number;
  /** CPU seconds the daemon and the registry used until the result; lazy modes only. */
  daemonCpu?: number;
  registryCpu?: number;
  /** The erofs-ondemand daemon's resident set when the result is out, and its peak (VmHWM); lazy modes only. */
  rssBytes?: number;
  peakRssBytes?: number;
}

interface Prepared {
  image: BenchImage;
  /** The original image in the registry, with its lazy copy but no trace. */
  source: string;
  compressedBytes: number;
  layers: number;
  /** The same image in repositories that hold a trace of the workload, when this build records traces. */
  traced: string | null;
  /** Compressed bytes of the chunks the workload read (its recorded trace): what an exact fetch takes. */
  workloadBytes: number | null;
}

/** `trace record` exists only in builds that have it; the bench says so instead of failing. */
function hasTrace(): boolean {
  return runCli(['trace', '--help']).stdout.startsWith('Usage: erofs-ondemand trace');
}

function memory(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(m[1]) * 1024;
}

class Bench {
  private seq = 0;

  constructor(
    readonly work: string,
    readonly registryHost: string,
    readonly registryPid: number,
  ) {}

  private dir(name: string): string {
    const d = path.join(this.work, `${name}-${++this.seq}`);
    fs.mkdirSync(d, { recursive: true });
    return d;
  }

  private daemon(dir: string, flags: string[] = []): Promise<Daemon> {
    return startDaemon({
      cacheDir: path.join(dir, 'cache'),
      socket: path.join(dir, 'control.sock'),
      flags: ['--transport', TRANSPORT, '--metrics-address', '', ...DAEMON_FLAGS, ...flags],
    });
  }

  /** Pushes the image as `repo/NAME:1` and converts it to `repo-lazy/NAME:1`; the reference pushed. */
  private publish(img: UmociImage, repo: string, name: string): string {
    const source = `${this.registryHost}/${repo}/${name}:1`;
    execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${img.ref}`, `docker://${source}`]);
    cli('convert', '-q', source, `${this.registryHost}/${repo}-lazy/${name}:1`);
    return source;
  }

  async prepare(image: BenchImage, traceAvailable: boolean): Promise<Prepared> {
    const img = image.build();
    const source = this.publish(img, 'src', image.name);
    const manifest = JSON.parse(
      execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${source}`], { encoding: 'utf8' }),
    ) as { layers: Array<{ size: number }> };
    const compressedBytes = manifest.layers.reduce((n, l) => n + l.size, 0);
    const prepared: Prepared = {
      image,
      source,
      compressedBytes,
      layers: manifest.layers.length,
      traced: null,
      workloadBytes: null,
    };
    if (traceAvailable) {
      // A daemon replays any trace the registry holds for an image at every mount, so the traced copy
      // lives in repositories of its own and the other lazy modes mount one without a trace.
      const traced = this.publish(img, 'traced', image.name);
      // The recording run: its own daemon and cache, thrown away before the series.
      const dir = this.dir(`trace-${image.name}`);
      const daemon = await this.daemon(dir);
      try {
        const out = cli('trace', 'record', '--json', '--socket', daemon.socket, traced, '--', ...image.workload);
        // The workload's own output comes first; the summary is the last line.
        const summary = JSON.parse(out.trim().split('\n').pop()!) as { compressedBytes: number };
        prepared.workloadBytes = summary.compressedBytes;
      } finally {
        await daemon.stop();
        fs.rmSync(dir, { recursive: true, force: true });
      }
      prepared.traced = traced;
    }
    return prepared;
  }

  /** containerd's pull + unpack + run, then (the floor) the same image run again from its local snapshot. */
  async traditional(p: Prepared, containerd: Containerd, run: number): Promise<Partial<Record<Mode, Sample>>> {
    const got: Partial<Record<Mode, Sample>> = {};
    if (MODES.includes('traditional')) {
      dropCaches();
      const t0 = process.hrtime.bigint();
      containerd.pull(p.source);
      const pullSeconds = secondsSince(t0);
      const ran = await containerd.runImage(p.source, `trad-${run}`, p.image.workload);
      containerd.removeContainer(`trad-${run}`);
      this.expect(p, 'traditional', ran.stdout);
      // A pull GETs the manifest, the config and every layer.
      got.traditional = { ...timesOf(t0, ran), pullSeconds, bytes: p.compressedBytes, gets: p.layers + 2 };
    } else if (MODES.includes('floor')) containerd.pull(p.source);
    if (!MODES.includes('floor')) return got;
    dropCaches();
    const t0 = process.hrtime.bigint();
    const again = await containerd.runImage(p.source, `floor-${run}`, p.image.workload);
    containerd.removeContainer(`floor-${run}`);
    this.expect(p, 'floor', again.stdout);
    got.floor = { ...timesOf(t0, again), bytes: 0, gets: 0 };
    return got;
  }

  /**
   * A lazy run as Kubernetes makes it: a fresh daemon (empty cache) serving containerd's snapshots API,
   * a fresh containerd with it as its proxy snapshotter, a CRI pull of the original reference, then
   * `ctr run --snapshotter erofs-ondemand`. `owned`: a directory the caller owns and removes; the run
   * leaves its cache there for the next one.
   */
  async lazy(p: Prepared, mode: Mode, run: number, owned?: string): Promise<Sample> {
    const dir = owned ?? this.dir(`${mode}-${p.image.name}`);
    const socket = path.join(dir, 'snapshotter.sock');
    const daemon = await this.daemon(dir, [
      '--snapshotter-socket',
      socket,
      ...(mode === 'lazy+prefetch10' ? ['--prefetch', String(PREFETCH_WORKERS)] : []),
    ]);
    let containerd: Containerd | undefined;
    try {
      containerd = await startContainerd(path.join(dir, 'containerd'), {
        snapshotter: { socket, plainHttp: [this.registryHost] },
      });
      const ref = mode === 'lazy+trace' || mode === 'lazy+cached' ? p.traced! : p.source;
      const id = `${mode.replace(/\W/g, '-')}-${run}`;
      dropCaches();
      const cpu0 = [processCpuSeconds(daemon.process.pid!), processCpuSeconds(this.registryPid)];
      const t0 = process.hrtime.bigint();
      await containerd.criPull(ref);
      const pullSeconds = secondsSince(t0);
      // Kept until the daemon's status is read: removing it unmounts the image with its counters.
      const ran = await containerd.runImage(ref, id, p.image.workload, { snapshotter: SNAPSHOTTER });
      const rssBytes = memory(daemon.process.pid!, 'VmRSS');
      const daemonCpu = processCpuSeconds(daemon.process.pid!) - cpu0[0];
      const registryCpu = processCpuSeconds(this.registryPid) - cpu0[1];
      this.expect(p, mode, ran.stdout);
      const status = JSON.parse(cli('status', '--json', '--socket', daemon.socket)) as {
        fetch: { bytesFetched: number; requests: number };
        miss: { latency: { p50: number; p99: number } | null };
        mounts: Array<{ misses: number }>;
      };
      const peakRssBytes = memory(daemon.process.pid!, 'VmHWM');
      if (status.mounts.length !== 1)
        throw new Error(
          `${p.image.name} ${mode}: the daemon serves ${status.mounts.length} mounts, not the image's one`,
        );
      containerd.removeContainer(id);
      return {
        ...timesOf(t0, ran),
        pullSeconds,
        bytes: status.fetch.bytesFetched,
        gets: status.fetch.requests,
        misses: status.mounts[0].misses,
        missP50: status.miss.latency?.p50 ?? 0,
        missP99: status.miss.latency?.p99 ?? 0,
        rssBytes,
        peakRssBytes,
        daemonCpu,
        registryCpu,
      };
    } finally {
      await containerd?.stop();
      await daemon.stop();
      // A planned stop leaves snapshotter mounts still in use (a failed run's) to the fd holder: not here.
      for (const pid of holderPids(path.join(dir, 'cache', HOLDER_SOCKET))) process.kill(pid, 'SIGKILL');
      if (LOG_DIR) {
        fs.mkdirSync(LOG_DIR, { recursive: true });
        fs.writeFileSync(path.join(LOG_DIR, `${path.basename(dir)}.log`), daemon.log);
      }
      unmountUnder(dir);
      if (owned) {
        // The chunks, bootstraps and chunk tables stay; containerd, the snapshots of its pull and the
        // daemon's record of their mounts (which a restarted daemon would mount again) go.
        for (const gone of ['containerd', 'snapshots', 'cache/snapshots', 'cache/mounts.json'])
          fs.rmSync(path.join(dir, gone), { recursive: true, force: true });
      } else fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  private expect(p: Prepared, mode: string, out: string): void {
    if (!p.image.check(out)) throw new Error(`${p.image.name} ${mode}: the workload printed ${JSON.stringify(out)}`);
  }

  /** One run of every mode, back to back, each on a fresh containerd. */
  async run(p: Prepared, run: number): Promise<Partial<Record<Mode, Sample>>> {
    let got: Partial<Record<Mode, Sample>> = {};
    if (MODES.includes('traditional') || MODES.includes('floor')) {
      const containerd = await startContainerd(this.dir('containerd'));
      try {
        got = await this.traditional(p, containerd, run);
      } finally {
        await containerd.stop();
      }
    }
    for (const mode of ['lazy', 'lazy+prefetch10'] as const) {
      if (MODES.includes(mode)) got[mode] = await this.lazy(p, mode, run);
    }
    if (!p.traced || !TRACED) return got;
    // lazy+cached starts on the cache the traced run leaves, so that run happens for it too.
    const dir = this.dir(`lazy+trace-${p.image.name}`);
    try {
      const traced = await this.lazy(p, 'lazy+trace', run, dir);
      if (MODES.includes('lazy+trace')) got['lazy+trace'] = traced;
      if (MODES.includes('lazy+cached')) got['lazy+cached'] = await this.lazy(p, 'lazy+cached', run, dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    return got;
  }
}

const mb = (bytes: number) => (bytes / 1e6).toFixed(1);

/** A run's seconds to its result and to `ctr run`'s exit, from `t0`. */
function timesOf(t0: bigint, ran: { resultAt: bigint; exitAt: bigint }): Pick<Sample, 'seconds' | 'exitSeconds'> {
  return { seconds: secondsSince(t0, ran.resultAt), exitSeconds: secondsSince(t0, ran.exitAt) };
}

async function main(): Promise<void> {
  const names = (process.env.BENCH_IMAGES ?? 'small,ml').split(',').filter(Boolean);
  for (const n of names) if (!IMAGES[n]) throw new Error(`BENCH_IMAGES: no image ${n} (have ${Object.keys(IMAGES)})`);
  const traceAvailable = hasTrace();
  const work = fs.mkdtempSync('/var/tmp/erofs-ondemand-coldstart-');
  const registry = await startRegistry();
  const bench = new Bench(work, registry.host, registry.pid);
  const panels: ChartPanel[] = [];
  try {
    for (const name of names) {
      const image = IMAGES[name];
      process.stderr.write(`== ${name}: building (cached), pushing, converting\n`);
      const p = await bench.prepare(image, traceAvailable && TRACED);
      const samples: Record<Mode, Sample[]> = Object.fromEntries(MODES.map((m) => [m, []])) as never;
      // Each run's seconds over the floor of the same run: the floor drifts with the disk from run to run.
      const perRun: Record<Mode, number[]> = Object.fromEntries(MODES.map((m) => [m, []])) as never;
      for (let i = 0; i < RUNS; i++) {
        const got = await bench.run(p, i);
        for (const m of MODES) {
          if (!got[m]) continue;
          samples[m].push(got[m]!);
          if (got.floor) perRun[m].push(got[m]!.seconds / got.floor.seconds);
        }
        process.stderr.write(
          `   run ${i + 1}: ${MODES.filter((m) => got[m])
            .map(
              (m) =>
                `${m} ${got[m]!.seconds.toFixed(2)} s` +
                (got[m]!.pullSeconds !== undefined ? ` (pull ${got[m]!.pullSeconds!.toFixed(2)} s)` : ''),
            )
            .join(', ')}\n`,
        );
      }
      const floor = samples.floor?.length ? median(samples.floor.map((s) => s.seconds)) : NaN;
      const rows = [
        [
          'mode',
          'seconds',
          'exit s',
          'pull s',
          'x floor',
          'x floor per run',
          'MB fetched',
          'GETs',
          'misses',
          'miss p50/p99 ms',
          'CPU s daemon/registry',
          'daemon RSS MB at result/peak',
        ],
      ];
      const bars: ChartPanel['bars'][number][] = [];
      for (const m of MODES) {
        const s = samples[m];
        if (s.length === 0) {
          rows.push([m, '-', '-', '-', '-', '-', '-', '-', '-', '-', '-', '-']);
          continue;
        }
        const seconds = median(s.map((x) => x.seconds));
        const bytes = median(s.map((x) => x.bytes));
        const rss = s.some((x) => x.peakRssBytes)
          ? `${mb(median(s.map((x) => x.rssBytes ?? 0)))}/${mb(Math.max(...s.map((x) => x.peakRssBytes ?? 0)))}`
          : '-';
        // Two decimals: the goals are 1.5x and 2.5x, and 1.546 must not print as met.
        const ratio = Number.isNaN(floor) ? '-' : `${(seconds / floor).toFixed(2)}x`;
        const lazy = s[0].misses !== undefined;
        rows.push([
          m,
          seconds.toFixed(2),
          median(s.map((x) => x.exitSeconds)).toFixed(2),
          s[0].pullSeconds === undefined ? '-' : median(s.map((x) => x.pullSeconds ?? 0)).toFixed(2),
          ratio,
          perRun[m].length ? `${median(perRun[m]).toFixed(2)}x` : '-',
          mb(bytes),
          String(median(s.map((x) => x.gets))),
          lazy ? String(median(s.map((x) => x.misses ?? 0))) : '-',
          lazy
            ? `${(median(s.map((x) => x.missP50 ?? 0)) * 1000).toFixed(1)}/${(median(s.map((x) => x.missP99 ?? 0)) * 1000).toFixed(0)}`
            : '-',
          lazy
            ? `${median(s.map((x) => x.daemonCpu ?? 0)).toFixed(2)}/${median(s.map((x) => x.registryCpu ?? 0)).toFixed(2)}`
            : '-',
          rss,
        ]);
        bars.push({ mode: m, seconds, note: m === 'floor' ? '' : `${ratio} floor, ${mb(bytes)} MB` });
      }
      process.stdout.write(
        `\n${image.title}: ${p.layers} layers, ${mb(p.compressedBytes)} MB compressed\n` +
          `workload: ${image.workload.join(' ')}\n${numberTable(rows)}\n`,
      );
      const notes = p.traced || !MODES.includes('lazy+trace') ? [] : ['lazy+trace: not available in this build'];
      if (p.workloadBytes !== null && samples['lazy+trace']?.length) {
        const fetched = median(samples['lazy+trace'].map((x) => x.bytes));
        notes.push(
          `the workload's chunks (its trace): ${mb(p.workloadBytes)} MB compressed; ` +
            `lazy+trace fetched ${(fetched / p.workloadBytes).toFixed(2)}x that by the result`,
        );
      }
      for (const note of notes) process.stdout.write(`${note}\n`);
      panels.push({
        title: `${image.name}: ${p.layers} layers, ${mb(p.compressedBytes)} MB compressed`,
        lines: [image.title, `workload: ${image.workload.join(' ')}`],
        bars,
        notes,
      });
    }
    process.stdout.write(
      `\nregistry on 127.0.0.1, transport ${TRANSPORT}, page cache dropped before each run, medians of ${RUNS} runs; ` +
        "seconds: to the workload's result, its first output (pull + run; the floor: run only); exit s: to " +
        "`ctr run`'s exit, after the container's teardown; x floor: the ratio of the medians; x floor per run: the " +
        "median of each run's ratio to that run's floor; lazy modes pull through CRI into the erofs-ondemand " +
        'snapshotter and run with `ctr run --snapshotter erofs-ondemand`; ' +
        'bytes and GETs of lazy modes are counted when the workload has printed its result (prefetch goes on); ' +
        "the daemon's RSS: the median when the result is out / the highest peak of the runs.\n",
    );
    if (SVG) {
      fs.writeFileSync(
        SVG,
        coldStartSvg(
          'Cold start: seconds to the workload result (ctr run, runc)',
          `registry on 127.0.0.1, page cache dropped, medians of ${RUNS} runs; transport ${TRANSPORT}`,
          panels,
        ),
      );
      process.stderr.write(`chart: ${SVG}\n`);
    }
  } finally {
    await registry.stop();
    unmountUnder(work);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`bench-coldstart: ${(err as Error).stack}\n`);
  process.exit(1);
});
