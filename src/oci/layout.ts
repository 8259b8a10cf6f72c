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

/**
 * Makes `dir` and its missing parents one at a time (fs.mkdirSync's recursive mode loops forever where
 * mkdir fails with ENOENT under a parent that exists, as in /proc/sys); returns those it made, outermost first.
 */
function makeDirs(dir: string, ref: string): string[] {
  const missing: string[] = [];
  for (let d = path.resolve(dir); !fs.existsSync(d); d = path.dirname(d)) missing.unshift(d);
  for (const [i, d] of missing.entries()) {
    try {
      fs.mkdirSync(d);
    } catch (err) {
      removeMade(missing.slice(0, i));
      throw new InputError(`cannot create the layout directory ${d}: ${(err as Error).message}`, { image: ref });
    }
  }
  return missing;
}

/** Removes what `OciLayoutTarget` made, newest first; a directory only while it is empty. */
function removeMade(made: readonly string[]): void {
  for (const p of [...made].reverse()) {
    try {
      if (fs.lstatSync(p).isDirectory()) fs.rmdirSync(p);
      else fs.unlinkSync(p);
    } catch {
      // Best effort: someone else's file in a directory made here keeps it, and its parents.
    }
  }
}

export class OciLayoutTarget implements ImageTarget {
  private readonly dir: string;
  private readonly tag: string;
  /** Directories and files this target added to the layout, oldest first: what `discard` removes. */
  private readonly made: string[] = [];

  constructor(readonly ref: string) {
    const parsed = parseLayoutRef(ref);
    this.dir = parsed.dir;
    this.tag = parsed.tag ?? 'latest';
    this.made.push(...makeDirs(path.join(this.dir, 'blobs', 'sha256'), ref));
    try {
      const marker = path.join(this.dir, 'oci-layout');
      if (!fs.existsSync(marker)) {
        fs.writeFileSync(marker, JSON.stringify({ imageLayoutVersion: '1.0.0' }));
        this.made.push(marker);
      }
      const index = path.join(this.dir, 'index.json');
      if (!fs.existsSync(index)) {
        this.writeIndex({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] });
        this.made.push(index);
      }
    } catch (err) {
      this.discard();
      throw err;
    }
  }

  async putBlob(desc: Descriptor, file: string): Promise<boolean> {
    const dest = blobPath(this.dir, desc.digest);
    const there = fs.existsSync(dest);
    if (there && (await this.holds(dest, desc))) return false;
    this.writeAtomically(dest, (tmp) => fs.copyFileSync(file, tmp));
    if (!there) this.made.push(dest);
    return true;
  }

  /** Removes what this target added to the layout: for a conversion that failed before its manifest was stored. */
  discard(): void {
    removeMade(this.made);
    this.made.length = 0;
  }

  /** Whether the blob at `file` is the one `desc` names: the same size is not enough to skip it. */
  private async holds(file: string, desc: Descriptor): Promise<boolean> {
    if (fs.statSync(file).size !== desc.size) return false;
    try {
      const stream = fs.createReadStream(file, { highWaterMark: 1 << 20 });
      for await (const chunk of verifyDigest(stream, desc.digest, desc.size, { image: this.ref })) void chunk;
      return true;
    } catch (err) {
      if (err instanceof InputError) return false;
      throw err;
    }
  }

  /** Writes `dest` through a temp file renamed over it, so that a reader never sees it half written. */
  private writeAtomically(dest: string, write: (tmp: string) => void): void {
    const tmp = `${dest}.tmp-${process.pid}`;
    try {
      write(tmp);
      fs.renameSync(tmp, dest);
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  }

  async putManifest(raw: Buffer, mediaType: string): Promise<string> {
    const digest = sha256Digest(raw);
    const dest = blobPath(this.dir, digest);
    if (!fs.existsSync(dest)) this.made.push(dest);
    this.writeAtomically(dest, (tmp) => fs.writeFileSync(tmp, raw));
    const index = readIndex(this.dir, this.ref);
    index.manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== this.tag);
    index.manifests.push({ mediaType, digest, size: raw.length, annotations: { [REF_NAME]: this.tag } });
    this.writeIndex(index);
    return digest;
  }

  private writeIndex(index: ImageIndex): void {
    this.writeAtomically(path.join(this.dir, 'index.json'), (tmp) => fs.writeFileSync(tmp, JSON.stringify(index)));
  }
}
