// `docker save` archives (`docker-archive:PATH[:NAME:TAG]`): a tar holding manifest.json, the image
// config and one tar per layer. Before Docker 25 the members are named by IDs, not digests, so those
// are hashed on opening and the manifest is made from manifest.json. Docker 25 and later write an OCI
// layout into the archive: its members under blobs/sha256/ are named by their digests (checked as
// they are read, like any source's blobs), and its index.json leads to the image's own manifest.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { InputError } from '../errors';
import { readAt, readByPosition } from '../read-at';
import { TarReader } from '../tar/reader';
import { sha256Digest, verifyDigest } from './digest';
import { readAll, type ImageSource, type OpenedBlob, type ResolvedImage } from './image-io';
import {
  manifestTooLarge,
  MAX_MANIFEST_BYTES,
  MediaType,
  parseManifestOrIndex,
  type Descriptor,
  type ImageManifest,
} from './types';

interface Member {
  offset: number;
  size: number;
}

interface ArchiveManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** From a member's first bytes (up to 8; a shorter member is taken as padded with zeros). */
function sniffLayerType(first: Buffer): string {
  const head = Buffer.concat([first, Buffer.alloc(8)]);
  if (head[0] === 0x1f && head[1] === 0x8b) return MediaType.ociLayerGzip;
  if (head.readUInt32LE(0) === 0xfd2fb528) return MediaType.ociLayerZstd;
  return MediaType.ociLayerTar;
}

/** A member named by its digest (the OCI layout inside archives of Docker 25 and later). */
const DIGEST_NAMED = /^blobs\/sha256\/([0-9a-f]{64})$/;

// Headers are 512 bytes and most members of an archive are large layers: a read takes a few headers.
const INDEX_READ_BYTES = 64 << 10;

export class DockerArchiveSource implements ImageSource {
  private readonly file: string;
  private readonly name: string | undefined;
  private members: Map<string, Member> | null = null;
  private readonly byDigest = new Map<string, Member>();

  constructor(readonly ref: string) {
    const rest = ref.replace(/^docker-archive:/, '');
    const m = /^(.*?\.tar):(.+)$/.exec(rest);
    this.file = m ? m[1] : rest;
    this.name = m ? m[2] : undefined;
  }

  private async index(): Promise<Map<string, Member>> {
    if (this.members) return this.members;
    const members = new Map<string, Member>();
    let fd: number | undefined;
    try {
      fd = fs.openSync(this.file, 'r');
      // Headers only: the members' bodies (the layers, most of the archive) are skipped by position.
      const reader = new TarReader(readByPosition(fd, fs.fstatSync(fd).size, this.file, INDEX_READ_BYTES));
      for (let e = await reader.next(); e; e = await reader.next()) {
        if (e.type === 'file')
          members.set(e.name.toString('utf8').replace(/^\.\//, ''), { offset: reader.bodyOffset, size: e.size });
      }
    } catch (err) {
      throw InputError.wrap(err, { image: this.ref });
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
    this.members = members;
    return members;
  }

  private async member(name: string): Promise<Member> {
    const m = (await this.index()).get(name);
    if (!m) throw new InputError(`archive has no member ${JSON.stringify(name)}`, { image: this.ref });
    return m;
  }

  /** The member's first `length` bytes (all of them by default). */
  private async readMember(m: Member, length = m.size): Promise<Buffer> {
    const fd = fs.openSync(this.file, 'r');
    try {
      const buf = Buffer.alloc(length);
      await readAt(fd, buf, 0, length, m.offset, this.file);
      return buf;
    } finally {
      fs.closeSync(fd);
    }
  }

  private async hashMember(m: Member): Promise<{ digest: string; head: Buffer }> {
    const hash = createHash('sha256');
    let head = Buffer.alloc(0);
    if (m.size > 0) {
      for await (const b of fs.createReadStream(this.file, {
        start: m.offset,
        end: m.offset + m.size - 1,
        highWaterMark: 1 << 20,
      })) {
        if (head.length < 8) head = Buffer.concat([head, b as Buffer]).subarray(0, 8);
        hash.update(b as Buffer);
      }
    }
    return { digest: `sha256:${hash.digest('hex')}`, head };
  }

  /** The document a digest-named member holds, read whole and checked against its descriptor (it is small and read now). */
  private async readDocument(desc: Descriptor): Promise<Buffer | null> {
    const m = (await this.index()).get(`blobs/sha256/${desc.digest.slice('sha256:'.length)}`);
    if (!m) return null;
    const ctx = { image: this.ref, digest: desc.digest };
    if (m.size > MAX_MANIFEST_BYTES) throw manifestTooLarge(m.size, ctx);
    return readAll(this.openMember(m, desc));
  }

  /**
   * The image's own manifest when the archive holds an OCI layout (Docker 25+): the one index.json
   * leads to (through at most one nested index) whose config and layers are those manifest.json
   * names. Its digest is the image's digest in a registry, which a made-up manifest's is not.
   */
  private async layoutManifest(config: string, layers: string[]): Promise<ResolvedImage | null> {
    const indexMember = (await this.index()).get('index.json');
    if (!indexMember || indexMember.size > MAX_MANIFEST_BYTES) return null;
    const ctx = { image: this.ref, path: 'index.json' };
    const top = parseManifestOrIndex(await this.readMember(indexMember), MediaType.ociIndex, ctx);
    if (top.kind !== 'index') return null;
    const visit = async (descs: Descriptor[], depth: number): Promise<ResolvedImage | null> => {
      for (const desc of descs) {
        const raw = await this.readDocument(desc);
        if (!raw) continue;
        const doc = parseManifestOrIndex(raw, desc.mediaType, { image: this.ref, digest: desc.digest });
        if (doc.kind === 'index') {
          const found = depth > 0 ? await visit(doc.index.manifests, depth - 1) : null;
          if (found) return found;
        } else if (
          doc.manifest.config.digest === config &&
          doc.manifest.layers.map((l) => l.digest).join() === layers.join()
        ) {
          return { manifest: doc.manifest, raw, digest: desc.digest, mediaType: doc.mediaType };
        }
      }
      return null;
    };
    return visit(top.index.manifests, 1);
  }

  async resolve(): Promise<ResolvedImage> {
    let entries: ArchiveManifestEntry[];
    try {
      entries = JSON.parse((await this.readMember(await this.member('manifest.json'))).toString('utf8'));
    } catch (err) {
      throw InputError.wrap(err, { image: this.ref, path: 'manifest.json' });
    }
    if (!Array.isArray(entries) || entries.length === 0)
      throw new InputError('manifest.json lists no image', { image: this.ref });
    const entry = this.name
      ? entries.find((e) => e.RepoTags?.includes(this.name!))
      : entries.length === 1
        ? entries[0]
        : undefined;
    if (!entry)
      throw new InputError(
        this.name ? `no image tagged ${this.name}` : `${entries.length} images in the archive: name one with :NAME:TAG`,
        { image: this.ref },
      );

    const describe = async (name: string, mediaType?: string): Promise<Descriptor> => {
      const m = await this.member(name);
      const named = DIGEST_NAMED.exec(name);
      // A wrong name fails the conversion when the member is read (openBlob verifies every blob).
      const { digest, head } = named
        ? { digest: `sha256:${named[1]}`, head: await this.readMember(m, Math.min(8, m.size)) }
        : await this.hashMember(m);
      this.byDigest.set(digest, m);
      return { mediaType: mediaType ?? sniffLayerType(head), digest, size: m.size };
    };
    const manifest: ImageManifest = {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: await describe(entry.Config, MediaType.ociConfig),
      layers: [],
    };
    for (const layer of entry.Layers) manifest.layers.push(await describe(layer));
    if ([entry.Config, ...entry.Layers].every((name) => DIGEST_NAMED.test(name))) {
      const own = await this.layoutManifest(
        manifest.config.digest,
        manifest.layers.map((l) => l.digest),
      );
      if (own) return own;
    }
    const raw = Buffer.from(JSON.stringify(manifest));
    return { manifest, raw, digest: sha256Digest(raw), mediaType: MediaType.ociManifest };
  }

  async openBlob(desc: Descriptor): Promise<OpenedBlob> {
    const m = this.byDigest.get(desc.digest);
    if (!m) throw new InputError(`blob ${desc.digest} is not in the archive`, { image: this.ref });
    return this.openMember(m, desc);
  }

  /** The member's bytes, checked against `desc` (digest and size) as they are read. */
  private openMember(m: Member, desc: Descriptor): OpenedBlob {
    if (m.size === 0) return verifyDigest((async function* () {})(), desc.digest, desc.size, { image: this.ref });
    const stream = fs.createReadStream(this.file, {
      start: m.offset,
      end: m.offset + m.size - 1,
      highWaterMark: 1 << 20,
    });
    // destroy() closes the archive's descriptor for a blob that will not be read (a conversion that stopped early).
    return Object.assign(verifyDigest(stream, desc.digest, desc.size, { image: this.ref }), {
      destroy: () => void stream.destroy(),
    });
  }
}
