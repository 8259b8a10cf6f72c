// The format side of `convert`: source layers in, one merged bootstrap and one data blob per layer out
// (a layer whose chunks all exist in lower layers gets no blob). Knows nothing of registries.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ChunkDictionary } from '../blob/chunk-dict';
import type { ChunkEntry } from '../blob/chunk-table';
import { addStoredChunks, CompressedBlobWriter, type CompressedBlob } from '../blob/compressed-blob-writer';
import { writeBootstrap } from '../erofs/writer';
import { InputError, type ErrorContext } from '../errors';
import type { OpenedBlob } from '../oci/image-io';
import type { Directory } from '../tree/node';
import { compressionOf, convertLayer, decompressLayer, type LayerStats } from './layer-converter';
import { MergedTree } from './layer-merge';

export interface LayerInput {
  digest: string;
  mediaType: string;
  size: number;
  /**
   * The layer's raw bytes; the stream must fail at its end if they do not match `digest`. An
   * `endpoint` on it (a registry mirror serving them) is named in errors about the layer.
   */
  open(): Promise<OpenedBlob>;
}

export interface ConvertedBlob extends CompressedBlob {
  path: string;
  /** Digest of the source layer this blob was made from. */
  sourceLayer: string;
}

/** A data blob stored already (an older image's): chunks it holds are referenced there, not stored again. */
export interface StoredBlob {
  /** sha256 hex of the blob: its device tag. */
  id: string;
  uncompressedSize: number;
  chunks: readonly ChunkEntry[];
}

export interface ConvertedLayers {
  bootstrapPath: string;
  bootstrapSize: number;
  bootstrapDigest: string;
  /**
   * Indexes into `ConvertLayersOptions.stored` of the blobs the bootstrap references: its devices
   * 1..n, in that order, before the image's own `blobs`.
   */
  storedUsed: number[];
  blobs: ConvertedBlob[];
  layers: Array<LayerStats & { digest: string; blob: string | null }>;
  chunkSize: number;
  inodes: number;
}

export interface ConvertLayersOptions {
  chunkBits: number;
  /** zstd level of the chunks (default DEFAULT_ZSTD_LEVEL). */
  zstdLevel?: number;
  /** Names the image in errors. */
  image: string;
  onBytes?: (layer: number, bytes: number) => void;
  /** Called as soon as a layer's blob is complete, so it can be pushed while later layers convert. */
  onBlob?: (blob: ConvertedBlob, layer: number) => void;
  /** Called when a layer turns out to need no blob (all its chunks are in lower layers). */
  onNoBlob?: (layer: number) => void;
  /** Asked when a layer's blob file is created: who follows its growth (an upload fed as it is written). */
  blobProgress?: (layer: number, file: string) => { written(bytes: number): void } | undefined;
  /** Downloads of these same layers, started earlier by the caller (beside its own requests); by default started here. */
  downloads?: LayerDownloads;
  /** Blobs stored already whose chunks are referenced, not stored again; the first holding a digest wins. */
  stored?: readonly StoredBlob[];
  signal?: AbortSignal;
}

// Small layers are read into memory as soon as the conversion starts, so that their requests are not
// a round trip each between the layers (most images end in a few small layers: config files, a user,
// an entrypoint script). Bounded per layer and in all, since nothing else limits how much is held.
const SMALL_LAYER_BYTES = 4 << 20;
const SMALL_LAYERS_BUDGET = 32 << 20;

/** A layer read to its end (so its digest is checked) while earlier layers convert. */
function readAhead(opened: Promise<OpenedBlob>): Promise<OpenedBlob> {
  let stream: OpenedBlob | undefined;
  let ended = false;
  const read = opened.then(async (s) => {
    stream = s;
    const parts: Buffer[] = [];
    for await (const b of s) parts.push(b);
    ended = true;
    return Object.assign(
      (async function* () {
        yield* parts.splice(0);
      })(),
      s.endpoint ? { endpoint: s.endpoint } : {},
    );
  });
  // LayerDownloads.discardFrom() ends the download when the conversion stops before this layer's turn.
  return Object.assign(read, { abort: () => void (ended || stream?.destroy?.()) });
}

async function* counted(
  source: AsyncIterable<Buffer>,
  onBytes: (n: number) => void,
  onEnd: () => void,
  signal?: AbortSignal,
): AsyncIterable<Buffer> {
  for await (const b of source) {
    signal?.throwIfAborted();
    onBytes(b.length);
    yield b;
  }
  onEnd();
}

/**
 * When each layer's download starts. The first one and the small ones start at once (created as soon
 * as the manifest is known); any other once the layer before it is downloaded, not earlier: an unread
 * body would time out behind a long layer. Each is awaited in its turn.
 */
export class LayerDownloads {
  private readonly opening: Array<Promise<OpenedBlob> | undefined> = [];

  constructor(private readonly layers: readonly LayerInput[]) {
    this.get(0);
    let ahead = 0;
    for (let i = 1; i < layers.length; i++) {
      if (layers[i].size > SMALL_LAYER_BYTES || ahead + layers[i].size > SMALL_LAYERS_BUDGET) continue;
      ahead += layers[i].size;
      this.start(i, readAhead(layers[i].open()));
    }
  }

  /** Layer `i`'s stream, its download started now if it has not been. */
  get(i: number): Promise<OpenedBlob> | undefined {
    if (i >= this.layers.length) return undefined;
    return this.opening[i] ?? this.start(i, this.layers[i].open());
  }

  /** Ends the downloads, from layer `from` on, that were started and will not be read. */
  discardFrom(from: number): void {
    for (const opened of this.opening.slice(from)) {
      if (!opened) continue;
      (opened as { abort?: () => void }).abort?.();
      opened.then(
        (s) => {
          if (s.destroy) s.destroy();
          else void s[Symbol.asyncIterator]().return?.();
        },
        () => undefined,
      );
    }
  }

  private start(i: number, opened: Promise<OpenedBlob>): Promise<OpenedBlob> {
    opened.catch(() => undefined); // awaited in its turn
    return (this.opening[i] = opened);
  }
}

export async function convertLayers(
  layers: readonly LayerInput[],
  workDir: string,
  opts: ConvertLayersOptions,
): Promise<ConvertedLayers> {
  const chunkSize = 2 ** opts.chunkBits;
  const tree = new MergedTree();
  const dict = new ChunkDictionary();
  const blobs: ConvertedBlob[] = [];
  const layerStats: ConvertedLayers['layers'] = [];
  // Chunks are first numbered by layer (device = layer + 1), stored blobs after the layers; layers
  // without new chunks get no blob and stored blobs no file uses are not listed, so devices are
  // renumbered once all layers are read: the stored blobs used first, then the layers' blobs.
  const deviceOfLayer = new Map<number, number>();
  const stored = opts.stored ?? [];
  const firstStored = layers.length + 1;
  stored.forEach((b, k) => addStoredChunks(dict, firstStored + k, b.chunks));
  const downloads = opts.downloads ?? new LayerDownloads(layers);
  let current = 0;
  try {
    for (const [i, layer] of layers.entries()) {
      current = i;
      const ctx: ErrorContext = { image: opts.image, layer: layer.digest };
      const compression = compressionOf(layer.mediaType);
      if (!compression) throw new InputError(`unsupported layer media type ${JSON.stringify(layer.mediaType)}`, ctx);
      const blobPath = path.join(workDir, `layer-${i}.blob`);
      const fd = fs.openSync(blobPath, 'w');
      let blob: CompressedBlob;
      let stats: LayerStats;
      try {
        const writer = new CompressedBlobWriter(fd, i + 1, dict, chunkSize, opts.zstdLevel);
        const progress = opts.blobProgress?.(i, blobPath);
        if (progress) writer.onWritten = (bytes) => progress.written(bytes);
        let raw: AsyncIterable<Buffer>;
        try {
          const opened = await downloads.get(i)!;
          if (opened.endpoint) ctx.endpoint = opened.endpoint;
          raw = counted(
            opened,
            (n) => opts.onBytes?.(i, n),
            () => downloads.get(i + 1),
            opts.signal,
          );
        } catch (err) {
          throw InputError.wrap(err, ctx);
        }
        stats = await convertLayer(decompressLayer(raw, compression), tree, i, writer, chunkSize, ctx, opts.signal);
        blob = await writer.finish();
        stats.storedChunks = blob.chunks.length;
      } finally {
        fs.closeSync(fd);
      }
      if (blob.chunks.length > 0) {
        deviceOfLayer.set(i + 1, blobs.length + 1);
        const finalPath = path.join(workDir, `${blob.id}.blob`);
        fs.renameSync(blobPath, finalPath);
        const converted = { ...blob, path: finalPath, sourceLayer: layer.digest };
        blobs.push(converted);
        opts.onBlob?.(converted, i);
      } else {
        fs.rmSync(blobPath);
        opts.onNoBlob?.(i);
      }
      layerStats.push({ ...stats, digest: layer.digest, blob: blob.chunks.length > 0 ? blob.id : null });
    }
  } finally {
    downloads.discardFrom(current + 1);
  }

  const used = stored.length > 0 ? devicesUsed(tree.root) : new Set<number>();
  const storedUsed = stored.flatMap((_, k) => (used.has(firstStored + k) ? [k] : []));
  const final = new Map<number, number>();
  storedUsed.forEach((k, n) => final.set(firstStored + k, n + 1));
  for (const [device, n] of deviceOfLayer) final.set(device, storedUsed.length + n);
  // Locations of stored blobs no file uses keep their number: nothing in the tree names them.
  for (const location of dict.locations()) location.device = final.get(location.device) ?? location.device;
  const { image, inodeCount } = (() => {
    try {
      return writeBootstrap(tree.root, {
        chunkBits: opts.chunkBits,
        devices: [...storedUsed.map((k) => stored[k]), ...blobs].map((b) => ({ id: b.id, size: b.uncompressedSize })),
      });
    } catch (err) {
      throw InputError.wrap(err, { image: opts.image });
    }
  })();
  const bootstrapPath = path.join(workDir, 'bootstrap.erofs');
  fs.writeFileSync(bootstrapPath, image);
  return {
    bootstrapPath,
    bootstrapSize: image.length,
    bootstrapDigest: `sha256:${createHash('sha256').update(image).digest('hex')}`,
    storedUsed,
    blobs,
    layers: layerStats,
    chunkSize,
    inodes: inodeCount,
  };
}

/** The devices the files of the tree take chunks from (a file deleted by a later layer is not in it). */
function devicesUsed(root: Directory): Set<number> {
  const used = new Set<number>();
  const dirs: Directory[] = [root];
  for (let dir = dirs.pop(); dir; dir = dirs.pop()) {
    for (const inode of dir.entries.values()) {
      if (inode.type === 'dir') dirs.push(inode);
      else if (inode.type === 'file') for (const c of inode.chunks) if (c) used.add(c.device);
    }
  }
  return used;
}
