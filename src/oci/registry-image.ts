// Registry images as convert's source and target, and the referrer that lets a node find the lazy
// image from the original reference.
import fs from 'node:fs';
import { Readable } from 'node:stream';
import { InputError } from '../errors';
import { log } from '../log';
import { pushArtifact } from './artifacts';
import type { HostClient } from './host-client';
import type { ImageSource, ImageTarget, ResolvedImage, StreamedBlob } from './image-io';
import { StreamedBlobPush } from './streamed-push';
import { pushScope } from './auth';
import { manifestReference, type ImageReference } from './reference';
import type { RegistryClient } from './registry';
import type { Descriptor, Platform } from './types';

/** Pulls through the host's mirrors; the referrer is pushed to the upstream. */
export class RegistrySource implements ImageSource {
  constructor(
    readonly ref: string,
    readonly parsed: ImageReference,
    readonly client: HostClient,
  ) {}

  resolve(platform: Platform): Promise<ResolvedImage> {
    return this.client.resolveManifest(this.parsed.repository, manifestReference(this.parsed), platform);
  }

  async openBlob(desc: Descriptor): Promise<AsyncIterable<Buffer>> {
    return this.client.getBlob(this.parsed.repository, desc.digest, desc.size);
  }

  /** Pushes an artifact whose subject is `subject` into this image's repository. */
  async addReferrer(subject: Descriptor, artifactType: string, annotations: Record<string, string>): Promise<string> {
    return pushArtifact(this.client.upstream, this.parsed.repository, subject, artifactType, annotations);
  }
}

/** Reads of a growing blob into its streamed upload: what is left to send when the blob is finished is at most this. */
const STREAM_READ_SIZE = 1 << 20;

export class RegistryTarget implements ImageTarget {
  constructor(
    readonly ref: string,
    readonly parsed: ImageReference,
    /** The target host's upstream: pushes never go to mirrors. */
    readonly client: RegistryClient,
    /** A repository on the same registry that may already hold blobs (the source): mounted, not uploaded. */
    private readonly mountFrom?: string,
  ) {
    if (parsed.digest) throw new InputError('a target reference names a tag, not a digest', { image: ref });
  }

  async putBlob(desc: Descriptor, file: string): Promise<boolean> {
    const result = await this.client.pushBlob(
      this.parsed.repository,
      desc.digest,
      desc.size,
      () => fs.createReadStream(file, { highWaterMark: 1 << 20 }),
      {
        mountFrom: this.mountFrom,
      },
    );
    return result === 'uploaded';
  }

  get registry(): string {
    return this.parsed.registry;
  }

  async linkBlob(desc: Descriptor, repository: string): Promise<boolean> {
    const repo = this.parsed.repository;
    const copy = async function* (client: RegistryClient): AsyncIterable<Buffer> {
      yield* await client.getBlob(repository, desc.digest, desc.size);
    };
    const result = await this.client.pushBlob(repo, desc.digest, desc.size, () => Readable.from(copy(this.client)), {
      mountFrom: repository,
    });
    if (result === 'uploaded')
      log.warn('the registry did not mount the blob from the other repository: copied it', {
        image: this.ref,
        layer: desc.digest,
        from: repository,
      });
    return result === 'uploaded';
  }

  async hasBlob(digest: string): Promise<boolean> {
    const repo = this.parsed.repository;
    return (await this.client.headBlob(repo, digest, [pushScope(repo)]).catch(() => null)) !== null;
  }

  streamBlob(file: string): StreamedBlob {
    const push = new StreamedBlobPush(this.client, this.parsed.repository, file, STREAM_READ_SIZE, this.mountFrom);
    return {
      written: (bytes) => push.written(bytes),
      finish: async (desc) => (await push.finish(desc)) === 'uploaded',
      abandon: () => push.abandon(),
    };
  }

  putManifest(raw: Buffer, mediaType: string): Promise<string> {
    return this.client.putManifest(this.parsed.repository, this.parsed.tag ?? 'latest', raw, mediaType);
  }

  pinnedRef(digest: string): string {
    return `${this.ref}@${digest}`;
  }
}
