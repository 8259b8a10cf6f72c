// OCI image layout directories (`oci:PATH[:TAG]`), read and written as the image-spec describes.
import fs from 'node:fs';
import path from 'node:path';
import { InputError } from '../errors';
import { digestHex, sha256Digest, verifyDigest } from './digest';
import {
  readAll,
  resolveThroughIndexes,
  type ImageSource,
  type ImageTarget,
  type OpenedBlob,
  type ResolvedImage,
} from './image-io';
import { MediaType, parseManifestOrIndex, type Descriptor, type ImageIndex, type Platform } from './types';

const REF_NAME = 'org.opencontainers.image.ref.name';

export function parseLayoutRef(ref: string): { dir: string; tag: string | undefined } {
  const rest = ref.replace(/^oci:/, '');
  // PATH may contain ':' only before the last '/': anything after a ':' in the last component is the tag.
  const slash = rest.lastIndexOf('/');
  const colon = rest.indexOf(':', slash + 1);
  return colon === -1
    ? { dir: rest, tag: undefined }
    : { dir: rest.slice(0, colon), tag: rest.slice(colon + 1) || undefined };
}

function blobPath(dir: string, digest: string): string {
  return path.join(dir, 'blobs', 'sha256', digestHex(digest));
}

function readIndex(dir: string, ref: string): ImageIndex {
  const file = path.join(dir, 'index.json');
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (err) {
    throw new InputError(`not an OCI image layout: ${(err as Error).message}`, { image: ref });
  }
  const parsed = parseManifestOrIndex(raw, MediaType.ociIndex, { image: ref, path: file });
  if (parsed.kind !== 'index') throw new InputError('index.json is not an image index', { image: ref });
  return parsed.index;
}

export class OciLayoutSource implements ImageSource {
  private readonly dir: string;
  private readonly tag: string | undefined;

  constructor(readonly ref: string) {
    ({ dir: this.dir, tag: this.tag } = parseLayoutRef(ref));
  }

  async resolve(platform: Platform): Promise<ResolvedImage> {
    const index = readIndex(this.dir, this.ref);
    const candidates = this.tag
      ? index.manifests.filter((m) => m.annotations?.[REF_NAME] === this.tag)
      : index.manifests;
    if (candidates.length === 0)
      throw new InputError(`no manifest tagged ${JSON.stringify(this.tag)}`, { image: this.ref });
    if (candidates.length > 1)
      throw new InputError(`${candidates.length} manifests in the layout: name one with :TAG`, { image: this.ref });
    return resolveThroughIndexes(async (next) => {
      const desc = next ?? candidates[0];
      return {
        raw: await readAll(await this.openBlob(desc)),
        mediaType: desc.mediaType,
        digest: desc.digest,
        ctx: { image: this.ref, digest: desc.digest },
      };
    }, platform);
  }

  async openBlob(desc: Descriptor): Promise<OpenedBlob> {
    const file = blobPath(this.dir, desc.digest);
    if (!fs.existsSync(file))
      throw new InputError(`blob ${desc.digest} is missing from the layout`, { image: this.ref });
    const stream = fs.createReadStream(file, { highWaterMark: 1 << 20 });
    // destroy() closes the file of a blob that will not be read (a conversion that stopped early).
    return Object.assign(verifyDigest(stream, desc.digest, desc.size, { image: this.ref }), {
      destroy: () => void stream.destroy(),
    });
  }
}

export class OciLayoutTarget implements ImageTarget {
  private readonly dir: string;
  private readonly tag: string;

  constructor(readonly ref: string) {
    const parsed = parseLayoutRef(ref);
    this.dir = parsed.dir;
    this.tag = parsed.tag ?? 'latest';
    fs.mkdirSync(path.join(this.dir, 'blobs', 'sha256'), { recursive: true });
    const marker = path.join(this.dir, 'oci-layout');
    if (!fs.existsSync(marker)) fs.writeFileSync(marker, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    if (!fs.existsSync(path.join(this.dir, 'index.json')))
      this.writeIndex({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });
  }

  async putBlob(desc: Descriptor, file: string): Promise<boolean> {
    const dest = blobPath(this.dir, desc.digest);
    if (fs.existsSync(dest) && fs.statSync(dest).size === desc.size) return false;
    const tmp = `${dest}.tmp-${process.pid}`;
    fs.copyFileSync(file, tmp);
    fs.renameSync(tmp, dest);
    return true;
  }

  async putManifest(raw: Buffer, mediaType: string): Promise<string> {
    const digest = sha256Digest(raw);
    const dest = blobPath(this.dir, digest);
    fs.writeFileSync(`${dest}.tmp-${process.pid}`, raw);
    fs.renameSync(`${dest}.tmp-${process.pid}`, dest);
    const index = readIndex(this.dir, this.ref);
    index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== this.tag);
    index.manifests.push({ mediaType, digest, size: raw.length, annotations: { [REF_NAME]: this.tag } });
    this.writeIndex(index);
    return digest;
  }

  private writeIndex(index: ImageIndex): void {
    const file = path.join(this.dir, 'index.json');
    fs.writeFileSync(`${file}.tmp-${process.pid}`, JSON.stringify(index));
    fs.renameSync(`${file}.tmp-${process.pid}`, file);
  }
}
