// Registry-side dedup: what the second version of an image stores in a registry (docker-registry on
// 127.0.0.1, its blob files counted on disk) once the first is there, converted
//   layer-level   as a plain OCI image: the v2 source layers v1 does not have (what a registry holds
//                 anew for a pull-by-layer of v2, containerd's unit)
//   plain         `convert` of v2 without a chunk dict
//   chunk-dict    `convert --chunk-dict <lazy v1>` of v2
// A v2 is a rebuild of v1's last layer: the same entries plus one more Debian package's files (the
// .deb from the test images' apt cache, unpacked with dpkg-deb: this script needs no network), or
// for an image with no such package cached, one new small file; so a new layer digest.
// BENCH_IMAGES: comma-separated, of `synthetic` (one layer of 12 files of 3 MB of random bytes, the
// case of issue 20), `small` (minbase + python3) and `ml` (Debian's torch and friends); default
// `synthetic,small`.
// Then what one node fetches for v2 after v1 (a daemon on a fresh cache mounts lazy v1 and reads
// every file, then mounts v2 and reads every file; registry bytes fetched for v2: its bootstrap and
// the chunks it fetched):
//   layer-level   a plain containerd pull of v2 after v1: the v2 layers v1 does not have, compressed
//   plain         v2 converted without a chunk dict: the node's chunk index copies what v1's cache holds
//   chunk-dict    v2 converted with --chunk-dict v1: v2 uses v1's blob, whose chunks are cached already
// The daemon runs with --transport BENCH_TRANSPORT (default fanotify: under cachefiles the chunks
// of a blob live in the kernel's object, which is no copy source) and without blind prefetch.
import { createHash, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { readAll } from '../src/oci/image-io';
import { RegistryClient } from '../src/oci/registry';
import { MediaType, type ImageManifest } from '../src/oci/types';
import { execCli, runCli, startDaemon, type ConvertJson } from '../test/lib/harness';
import { startRegistry, storedBytes, type RegistryServer } from '../test/lib/registry-server';
import { imageOf, pushSmallImage } from '../test/lib/small-image';
import { makeTar } from '../test/lib/tar-writer';
import { CACHE_DIR, mlImage, pythonImage, type UmociImage } from '../test/lib/test-images';
import { numberTable } from './lib';

const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const mb = (n: number) => (n / 1e6).toFixed(2);

/** Pushes v1 as `library/NAME:1`. */
type PushV1 = (client: RegistryClient, registry: RegistryServer, repo: string) => Promise<void>;

function fromLayout(build: () => UmociImage): PushV1 {
  return async (_client, registry, repo) => {
    const img = build();
    execFileSync('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${img.ref}`,
      `docker://${registry.host}/${repo}:1`,
    ]);
  };
}

/**
 * An image of the benchmark: how v1 is pushed, and the package (a file name prefix in the test
 * images' apt cache, one that v1 does not have) whose files v2's last layer adds; none: a new small file.
 */
interface BenchImage {
  title: string;
  push: PushV1;
  addedDeb?: string;
}

const IMAGES: Record<string, BenchImage> = {
  synthetic: {
    title: '12 files of 3 MB random bytes (1 layer)',
    push: async (client, _registry, repo) => {
      const files = Array.from({ length: 12 }, (_, i) => ({ name: `data/file-${i}`, body: randomBytes(3_000_000) }));
      await pushSmallImage(
        client,
        repo,
        '1',
        imageOf([makeTar([{ name: 'data/', type: '5', mode: 0o755 }, ...files])]),
      );
    },
  },
  small: { title: 'minbase + python3 (2 layers)', push: fromLayout(pythonImage), addedDeb: 'python3-numpy_' },
  ml: { title: 'minbase + python3 + numpy + torch + ... (5 layers)', push: fromLayout(mlImage) },
};

/** Where a tar's end-of-archive blocks start: after the last entry's header and body. */
function tarEnd(tar: Buffer): number {
  let at = 0;
  while (at + 512 <= tar.length && tar.subarray(at, at + 512).some((b) => b !== 0)) {
    const size = parseInt(
      tar
        .subarray(at + 124, at + 136)
        .toString('latin1')
        .replace(/\0.*$/s, '')
        .trim() || '0',
      8,
    );
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return at;
}

/** What v2's last layer adds to v1's, as a tar: the files of `image.addedDeb`, or one new small file. */
function addedEntries(image: BenchImage): { tar: Buffer; what: string } {
  const archives = path.join(CACHE_DIR, 'apt-archives');
  const deb = image.addedDeb && fs.readdirSync(archives).find((f) => f.startsWith(image.addedDeb ?? ''));
  if (!deb)
    return { tar: makeTar([{ name: 'opt/added-in-v2.txt', body: 'one more package\n' }]), what: 'one small file' };
  const tar = execFileSync('dpkg-deb', ['--fsys-tarfile', path.join(archives, deb)], { maxBuffer: 1 << 30 });
  return { tar, what: deb.replace(/_.*/, '') };
}

/** `library/NAME:2`: v1 with its last layer rebuilt holding the entries of `added` (a tar) too. */
async function pushV2(client: RegistryClient, repo: string, added: Buffer): Promise<void> {
  const v1 = JSON.parse((await client.getManifest(repo, '1')).raw.toString('utf8')) as ImageManifest;
  const last = v1.layers[v1.layers.length - 1];
  if (!/gzip/.test(last.mediaType)) throw new Error(`${repo}: last layer is ${last.mediaType}, not gzip`);
  const tar = gunzipSync(await readAll(await client.getBlob(repo, last.digest, last.size)));
  const rebuilt = Buffer.concat([tar.subarray(0, tarEnd(tar)), added]);
  const layer = gzipSync(rebuilt);
  const config = JSON.parse(
    (await readAll(await client.getBlob(repo, v1.config.digest, v1.config.size))).toString('utf8'),
  ) as { rootfs: { diff_ids: string[] } };
  config.rootfs.diff_ids[config.rootfs.diff_ids.length - 1] = sha256(rebuilt);
  const configBytes = Buffer.from(JSON.stringify(config));
  for (const b of [configBytes, layer]) await client.pushBlob(repo, sha256(b), b.length, () => Readable.from([b]));
  const v2: ImageManifest = {
    ...v1,
    config: { ...v1.config, digest: sha256(configBytes), size: configBytes.length },
    layers: [...v1.layers.slice(0, -1), { ...last, digest: sha256(layer), size: layer.length }],
  };
  await client.putManifest(repo, '2', Buffer.from(JSON.stringify(v2)), v2.mediaType ?? MediaType.ociManifest);
}

/** convert's memo of converted layers, this run's own: it decides what is streamed, not what is stored. */
const MEMO_HOME = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-dedup-'));

/** Reads every regular file under `dir` to its end (symlinks not followed). */
function readEveryFile(dir: string): void {
  const buf = Buffer.allocUnsafe(1 << 20);
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) readEveryFile(p);
    else if (e.isFile()) {
      const fd = fs.openSync(p, 'r');
      try {
        while (fs.readSync(fd, buf, 0, buf.length, null) > 0);
      } finally {
        fs.closeSync(fd);
      }
    }
  }
}

/**
 * Registry bytes a node fetches for `v2` after `v1`: on a fresh daemon, v1 is mounted and read whole,
 * then v2; for each, the bytes of chunks fetched plus its bootstrap (`bootstraps`: their sizes, fetched at mount).
 */
async function nodeFetch(
  v1: string,
  v2: string,
  bootstraps: readonly [number, number],
): Promise<{ v1: number; v2: number }> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-dedup-node-'));
  const socket = path.join(work, 'control.sock');
  const daemon = await startDaemon({
    cacheDir: path.join(work, 'cache'),
    socket,
    flags: ['--transport', process.env.BENCH_TRANSPORT ?? 'fanotify', '--metrics-address', '', '--prefetch', '0'],
  });
  const mounted: string[] = [];
  const fetched = async () =>
    (JSON.parse((await execCli('status', '--json', '--socket', socket)).stdout) as { fetch: { bytesFetched: number } })
      .fetch.bytesFetched;
  const readImage = async (ref: string) => {
    const mnt = path.join(work, `mnt-${mounted.length}`);
    fs.mkdirSync(mnt);
    await execCli('mount', '--socket', socket, ref, mnt);
    mounted.push(mnt);
    readEveryFile(mnt);
  };
  try {
    await readImage(v1);
    const afterV1 = await fetched();
    await readImage(v2);
    return { v1: afterV1 + bootstraps[0], v2: (await fetched()) - afterV1 + bootstraps[1] };
  } finally {
    for (const mnt of mounted.reverse())
      await execCli('umount', '--socket', socket, mnt).catch((err: Error) => process.stderr.write(`${err.message}\n`));
    await daemon.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function convert(...args: string[]): ConvertJson {
  const r = runCli(['convert', '--json', ...args], { env: { XDG_CACHE_HOME: MEMO_HOME } });
  if (r.status !== 0) throw new Error(`convert ${args.join(' ')}: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

async function main(): Promise<void> {
  const names = (process.env.BENCH_IMAGES ?? 'synthetic,small').split(',').filter(Boolean);
  for (const n of names) if (!IMAGES[n]) throw new Error(`BENCH_IMAGES: no image ${n} (have ${Object.keys(IMAGES)})`);
  const rows = [
    ['image', 'v2 layer-level MB', 'v2 plain MB', 'v2 chunk-dict MB', 'its bootstrap MB', 'blobs of v1 used'],
  ];
  const nodeRows = [['image', 'v1 MB', 'v2 layer-level MB', 'v2 plain MB', 'v2 chunk-dict MB']];
  for (const name of names) {
    // One registry per image, so each figure is that image's alone.
    const registry = await startRegistry();
    const client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    try {
      const repo = `library/${name}`;
      process.stderr.write(`== ${name}: pushing v1 and v2, converting v1\n`);
      await IMAGES[name].push(client, registry, repo);
      const added = addedEntries(IMAGES[name]);
      await pushV2(client, repo, added.tar);
      const [m1, m2] = await Promise.all(
        ['1', '2'].map(
          async (t) => JSON.parse((await client.getManifest(repo, t)).raw.toString('utf8')) as ImageManifest,
        ),
      );
      const v1Layers = new Set(m1.layers.map((l) => l.digest));
      const layerLevel = m2.layers.filter((l) => !v1Layers.has(l.digest)).reduce((s, l) => s + l.size, 0);
      convert(`${registry.host}/${repo}:1`, `${registry.host}/lazy/${name}:1`);

      process.stderr.write(`== ${name}: v2 without and with --chunk-dict\n`);
      let before = storedBytes(registry);
      convert(`${registry.host}/${repo}:2`, `${registry.host}/plain/${name}:2`);
      const plain = storedBytes(registry) - before;
      before = storedBytes(registry);
      const out = convert(
        '--chunk-dict',
        `${registry.host}/lazy/${name}:1`,
        `${registry.host}/${repo}:2`,
        `${registry.host}/lazy/${name}:2`,
      );
      const dict = storedBytes(registry) - before;
      const title = `${IMAGES[name].title}, v2 + ${added.what}`;
      rows.push([
        title,
        mb(layerLevel),
        mb(plain),
        mb(dict),
        mb(out.bootstrapBytes),
        String(out.chunkDictBlobs.length),
      ]);

      process.stderr.write(`== ${name}: a node reading v1, then v2 (plain, then chunk-dict)\n`);
      const v1 = `${registry.host}/lazy/${name}:1`;
      const bootstrapOf = async (r: string, tag: string) =>
        (JSON.parse((await client.getManifest(r, tag)).raw.toString('utf8')) as ImageManifest).layers[0].size;
      const boot1 = await bootstrapOf(`lazy/${name}`, '1');
      const plainNode = await nodeFetch(v1, `${registry.host}/plain/${name}:2`, [
        boot1,
        await bootstrapOf(`plain/${name}`, '2'),
      ]);
      const dictNode = await nodeFetch(v1, `${registry.host}/lazy/${name}:2`, [
        boot1,
        await bootstrapOf(`lazy/${name}`, '2'),
      ]);
      nodeRows.push([title, mb(plainNode.v1), mb(layerLevel), mb(plainNode.v2), mb(dictNode.v2)]);
    } finally {
      await client.close();
      await registry.stop();
    }
  }
  process.stdout.write(`Bytes the registry stores for v2 once v1 is there (MB)\n${numberTable(rows)}\n`);
  process.stdout.write(`\nBytes a node fetches for v2 after reading v1 whole (MB)\n${numberTable(nodeRows)}\n`);
}

main()
  .catch((err) => {
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exitCode = 1;
  })
  .finally(() => fs.rmSync(MEMO_HOME, { recursive: true, force: true }));
