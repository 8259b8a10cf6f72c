// Layer bombs: a few MB of gzip or zstd that inflate to GiBs of zeros. `convert` streams every layer,
// so it must convert them within a fixed address-space limit (prlimit --as: V8 reserves its heap up
// front, so the limit sits above that reservation and below what a bomb held whole would need), and
// it leaves no temp files behind, also when it is stopped.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { compress as zstdCompress } from '@mongodb-js/zstd';
import { MediaType } from '../../src/oci/types';
import { until } from '../lib/assertions';
import { CLI, type CliResult, type ConvertJson } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { writeLayoutImage } from '../lib/layout-writer';
import { fileHeader } from '../lib/tar-writer';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
/** The address space `convert` gets: what it reserves at start plus room for bounded buffers. */
const ADDRESS_SPACE = 3 * GiB;
/** Zeros in the bomb layers: more than ADDRESS_SPACE, so a layer held whole cannot fit. */
const BOMB_ZEROS = 4 * GiB;
/** Files of BOMB_ZEROS in the bomb that is stopped midway: it would take far longer than the test to convert. */
const LONG_BOMB_FILES = 64;
/** How soon convert must end once signalled. */
const STOP_MS = 2500;
/** One compressed member (gzip) or frame (zstd) of zeros, repeated to make a bomb in no time. */
const ZEROS_PIECE = 64 * MiB;

interface Codec {
  mediaType: string;
  compress(data: Buffer): Promise<Buffer>;
}

const gzip: Codec = { mediaType: MediaType.ociLayerGzip, compress: async (b) => gzipSync(b, { level: 9 }) };
const zstd: Codec = { mediaType: MediaType.ociLayerZstd, compress: (b) => zstdCompress(b, 19) };
const codecs = [
  ['gzip', gzip],
  ['zstd', zstd],
] as const;

/**
 * A layer tar of `data.bin` (random bytes: a chunk stored before the holes) and `files` files of
 * `zeros` zero bytes each, compressed as concatenated members/frames, which decompress as one stream.
 */
async function bombLayer(codec: Codec, zeros: number, files = 1): Promise<Buffer> {
  const data = randomBytes(100_000);
  const head = Buffer.concat([
    fileHeader('data.bin', data.length),
    data,
    Buffer.alloc((512 - (data.length % 512)) % 512),
  ]);
  const piece = await codec.compress(Buffer.alloc(ZEROS_PIECE));
  const parts = [await codec.compress(head)];
  // Each body is a multiple of 512 bytes: no padding. Then the two zero end-of-archive blocks.
  for (let i = 0; i < files; i++) {
    parts.push(await codec.compress(fileHeader(`zeros-${i}`, zeros)));
    for (let left = zeros; left > 0; left -= ZEROS_PIECE)
      parts.push(left >= ZEROS_PIECE ? piece : await codec.compress(Buffer.alloc(left)));
  }
  parts.push(await codec.compress(Buffer.alloc(1024)));
  return Buffer.concat(parts);
}

/** `convert` under the address-space limit, its temp files in `tmp`; `whileRunning` may signal it. */
function convertLimited(
  source: string,
  target: string,
  tmp: string,
  whileRunning?: (pid: number) => Promise<void>,
): Promise<CliResult & { signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      'prlimit',
      [`--as=${ADDRESS_SPACE}`, '--', process.execPath, CLI, 'convert', source, target, '--json'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        // Each pool thread reserves address space of its own (stack, malloc arena): a fixed pool keeps
        // the limit meaning the same on machines with many cores.
        env: { ...process.env, TMPDIR: tmp, UV_THREADPOOL_SIZE: '4' },
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', reject);
    child.on('exit', (status, signal) => resolve({ status, signal, stdout, stderr }));
    whileRunning?.(child.pid!).catch(reject);
  });
}

const made: string[] = [];
after(() => cleanup(...made));

describe('convert: layer bombs in bounded memory', () => {
  let work: string;
  const sources = new Map<Codec, string>();
  let longBomb: string;

  before(async () => {
    work = tempDir('convert-bombs');
    made.push(work);
    for (const [name, codec] of codecs) {
      const data = await bombLayer(codec, BOMB_ZEROS);
      sources.set(codec, writeLayoutImage(path.join(work, `${name}-bomb`), [{ mediaType: codec.mediaType, data }]));
    }
    const data = await bombLayer(zstd, BOMB_ZEROS, LONG_BOMB_FILES);
    longBomb = writeLayoutImage(path.join(work, 'long-bomb'), [{ mediaType: zstd.mediaType, data }]);
  });

  for (const [name, codec] of codecs) {
    it(`a ${name} layer of ${BOMB_ZEROS / GiB} GiB of zeros converts within ${ADDRESS_SPACE / GiB} GiB of address space`, async () => {
      const tmp = path.join(work, `${name}-tmp`);
      fs.mkdirSync(tmp);
      const r = await convertLimited(sources.get(codec)!, `oci:${path.join(work, `${name}-out`)}:v1`, tmp);
      assert.equal(r.status, 0, `exit ${r.status} (signal ${r.signal}): ${r.stderr}`);
      const json = JSON.parse(r.stdout) as ConvertJson;
      assert.equal(json.fileBytes, BOMB_ZEROS + 100_000);
      assert.equal(json.layers[0].holeChunks, BOMB_ZEROS / MiB);
      assert.equal(json.layers[0].dataChunks, 1, 'only data.bin is stored');
      assert.deepEqual(fs.readdirSync(tmp), [], 'temp files are removed');
    });
  }

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    it(`${signal} in the middle of a bomb stops convert at once and removes its temp files`, async () => {
      const tmp = path.join(work, `${signal}-tmp`);
      fs.mkdirSync(tmp);
      const target = path.join(work, `${signal}-out`);
      let killed = 0;
      const r = await convertLimited(longBomb, `oci:${target}:v1`, tmp, async (pid) => {
        await until(
          () => fs.readdirSync(tmp).some((f) => f.startsWith('erofs-ondemand-convert-')),
          'convert started',
          10_000,
        );
        await new Promise((resolve) => setTimeout(resolve, 200));
        process.kill(pid, signal);
        killed = performance.now();
      });
      const stopping = performance.now() - killed;
      assert.equal(r.status, 130, `exit ${r.status} (signal ${r.signal}): ${r.stderr}`);
      // A few hundred bytes of the layer inflate to GiBs: the signal must not wait for the next read.
      assert.ok(stopping < STOP_MS, `stopped ${Math.round(stopping)} ms after ${signal}`);
      assert.match(r.stderr, /interrupted/);
      assert.deepEqual(fs.readdirSync(tmp), [], 'temp files are removed');
    });
  }
});
