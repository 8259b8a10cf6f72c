// `erofs-ondemand convert SOURCE TARGET`: progress bars on a terminal, a JSON line with --json,
// one summary line otherwise. Ctrl-C aborts before the manifest is pushed.
import os from 'node:os';
import type { SingleBar } from 'cli-progress';
import { registriesFromFlags, type RegistryFlags } from '../config';
import { InputError, Interrupted } from '../errors';
import type { ChunkDictImage } from '../convert/chunk-dict-images';
import type { ConvertProgress, ConvertResult } from '../convert/convert';
import { findLazyImage, openLazyBlob } from '../daemon/image-store';
import { closeRegistryClients, openSource, openTarget, type OpenOptions } from '../oci/open-image';
import { convertAddon } from '../native/convert-addon';
import { hostPlatform, parsePlatform, type Platform } from '../oci/types';
import { bytes, chunkBitsOf, zstdLevelOf } from './format';

export interface ConvertCommandOptions extends RegistryFlags {
  chunkSize: string;
  compressionLevel: string;
  platform?: string;
  /** Lazy images (or images converted to one) whose stored chunks are referenced, not stored again. */
  chunkDict?: string[];
  json?: boolean;
  quiet?: boolean;
}

async function progressBars(): Promise<{ onProgress: (e: ConvertProgress) => void; stop: () => void }> {
  // Loaded only for a terminal: cli-progress pulls in readline, start-up that --json and -q skip.
  const { MultiBar, Presets } = await import('cli-progress');
  const multi = new MultiBar(
    {
      format: ' {name} [{bar}] {percentage}% {done}/{total}',
      hideCursor: true,
      clearOnComplete: false,
      stream: process.stderr,
    },
    Presets.shades_classic,
  );
  const bars: SingleBar[] = [];
  const totals: number[] = [];
  const done: number[] = [];
  return {
    onProgress: (e) => {
      if (e.kind === 'resolved') {
        e.layers.forEach((l, i) => {
          totals[i] = l.size;
          done[i] = 0;
          bars.push(
            multi.create(l.size, 0, {
              name: `layer ${i + 1} ${l.digest.slice(7, 19)}`,
              done: bytes(0),
              total: bytes(l.size),
            }),
          );
        });
      } else if (e.kind === 'layer-bytes') {
        done[e.layer] += e.bytes;
        bars[e.layer]?.update(done[e.layer], { done: bytes(done[e.layer]), total: bytes(totals[e.layer]) });
      }
    },
    stop: () => multi.stop(),
  };
}

/**
 * A `--chunk-dict` image as `mount` finds it (a lazy image, or the one an original image's referrer
 * names), with its chunk tables: any failure names the image, before anything is converted or pushed.
 */
async function chunkDictImage(ref: string, registries: OpenOptions, platform: Platform): Promise<ChunkDictImage> {
  try {
    const lazy = await findLazyImage(ref, registries, platform);
    const blobs = await Promise.all(
      lazy.manifest.layers
        .slice(1)
        .map(async (desc) => ({ desc, index: (await openLazyBlob(ref, lazy.client, lazy.repo, desc)).index })),
    );
    return { ref, registry: lazy.client.host, repository: lazy.repo, digest: lazy.digest, blobs };
  } catch (err) {
    throw InputError.wrap(err, { 'chunk-dict': ref });
  }
}

export async function convertCommand(
  source: string,
  target: string,
  opts: ConvertCommandOptions,
): Promise<ConvertResult> {
  // libuv's pool (4 threads by default) runs gunzip and every chunk's zstd. Converting is a CPU-bound
  // batch job: one pool thread per core keeps every core busy without threads contending for them,
  // on small machines and large. Read by libuv when the pool first starts, which is later than this.
  process.env.UV_THREADPOOL_SIZE ??= String(os.availableParallelism());
  convertAddon().prepareHeap();
  const controller = new AbortController();
  const onSigint = () => controller.abort(new Interrupted('interrupted: no manifest was pushed to the target'));
  process.once('SIGINT', onSigint);
  process.once('SIGTERM', onSigint);
  const tty = process.stderr.isTTY && !opts.json && !opts.quiet;
  const bars = tty ? await progressBars() : null;
  const started = process.hrtime.bigint();
  try {
    const registries = registriesFromFlags(opts);
    const chunkBits = chunkBitsOf(opts.chunkSize);
    const zstdLevel = zstdLevelOf(opts.compressionLevel);
    const platform = opts.platform ? parsePlatform(opts.platform) : hostPlatform();
    const src = await openSource(source, registries);
    // The converter (tar reader, EROFS and blob writers) loads while the source's manifest is on its
    // way, not before the request goes out.
    const resolved = src.resolve(platform);
    resolved.catch(() => undefined); // awaited by convertImage
    await new Promise((resolve) => setImmediate(resolve)); // the request goes out first
    const chunkDicts = await Promise.all((opts.chunkDict ?? []).map((r) => chunkDictImage(r, registries, platform)));
    const { convertImage } = await import('../convert/convert');
    const result = await convertImage(src, await openTarget(target, registries, src), {
      chunkBits,
      chunkDicts,
      zstdLevel,
      platform,
      resolved,
      signal: controller.signal,
      onProgress: bars?.onProgress,
    });
    bars?.stop();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const c = result.converted;
    const blobBytes = c.blobs.reduce((n, b) => n + b.size, 0);
    const fileBytes = c.layers.reduce((n, l) => n + l.fileBytes, 0);
    const tarBytes = c.layers.reduce((n, l) => n + l.tarBytes, 0);
    if (opts.json) {
      process.stdout.write(
        `${JSON.stringify({
          source: result.source,
          target: result.target,
          seconds,
          bootstrapBytes: c.bootstrapSize,
          blobs: c.blobs.map((b) => ({
            digest: `sha256:${b.id}`,
            bytes: b.size,
            uncompressedBytes: b.uncompressedSize,
            chunks: b.chunks.length,
            sourceLayer: b.sourceLayer,
          })),
          layers: c.layers,
          sourceLayerBytes: result.sourceLayerBytes,
          blobBytes,
          fileBytes,
          tarBytes,
          referrer: result.referrer,
          chunkDictBlobs: result.chunkDictBlobs.map((b) => ({ digest: b.desc.digest, from: b.image.ref })),
          uploadedBlobs: result.uploadedBlobs,
          skippedBlobs: result.skippedBlobs,
        })}\n`,
      );
    } else if (!opts.quiet) {
      const borrowed = result.chunkDictBlobs.length;
      process.stdout.write(
        `${result.target.ref}@${result.target.digest}: bootstrap ${bytes(c.bootstrapSize)}, ${c.blobs.length} blobs ${bytes(blobBytes)} ` +
          (borrowed > 0 ? `(and ${borrowed} of the chunk-dict images) ` : '') +
          `(source layers ${bytes(result.sourceLayerBytes)}, files ${bytes(fileBytes)}), ${result.uploadedBlobs} blobs uploaded, ` +
          `${result.skippedBlobs} already there, ${seconds.toFixed(1)} s\n`,
      );
    }
    return result;
  } finally {
    bars?.stop();
    await closeRegistryClients();
    process.off('SIGINT', onSigint);
    process.off('SIGTERM', onSigint);
  }
}
