// OCI image-spec and distribution-spec shapes, media types, and the checks applied when parsing them.
import { InputError, type ErrorContext } from '../errors';

export interface Platform {
  architecture: string;
  os: string;
  variant?: string;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: Platform;
  artifactType?: string;
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  artifactType?: string;
  manifests: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export const MediaType = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const MANIFEST_MEDIA_TYPES = [MediaType.ociManifest, MediaType.dockerManifest];
export const INDEX_MEDIA_TYPES = [MediaType.ociIndex, MediaType.dockerManifestList];

/** Manifests and indexes larger than this are refused before parsing. */
export const MAX_MANIFEST_BYTES = 4 << 20;

/** The error for a manifest or index over MAX_MANIFEST_BYTES, wherever its size is first known. */
export function manifestTooLarge(bytes: number | string, ctx: ErrorContext): InputError {
  return new InputError(`manifest of ${bytes} bytes exceeds the ${MAX_MANIFEST_BYTES}-byte bound`, ctx);
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

export function isDigest(s: unknown): s is string {
  return typeof s === 'string' && DIGEST_RE.test(s);
}

function checkDescriptor(d: unknown, where: string, ctx: ErrorContext): Descriptor {
  const o = d as Partial<Descriptor> | null;
  if (!o || typeof o !== 'object') throw new InputError(`${where} is not a descriptor`, ctx);
  if (typeof o.mediaType !== 'string') throw new InputError(`${where} has no mediaType`, ctx);
  if (!isDigest(o.digest)) throw new InputError(`${where} has an invalid digest ${JSON.stringify(o.digest)}`, ctx);
  if (!Number.isSafeInteger(o.size) || (o.size as number) < 0)
    throw new InputError(`${where} has an invalid size`, ctx);
  return o as Descriptor;
}

export type ParsedManifest =
  | { kind: 'manifest'; manifest: ImageManifest; mediaType: string }
  | { kind: 'index'; index: ImageIndex; mediaType: string };

/** Parses a manifest or an index, with the media type from the response or the document itself. */
export function parseManifestOrIndex(raw: Buffer, mediaType: string | undefined, ctx: ErrorContext): ParsedManifest {
  if (raw.length > MAX_MANIFEST_BYTES) throw manifestTooLarge(raw.length, ctx);
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new InputError(`manifest is not JSON: ${(err as Error).message}`, ctx);
  }
  if (!doc || typeof doc !== 'object' || doc.schemaVersion !== 2)
    throw new InputError('manifest schemaVersion is not 2', ctx);
  const type = (typeof doc.mediaType === 'string' && doc.mediaType) || mediaType?.split(';')[0].trim() || '';
  const isIndex = INDEX_MEDIA_TYPES.includes(type as never) || (!type && Array.isArray(doc.manifests));
  if (isIndex) {
    if (!Array.isArray(doc.manifests)) throw new InputError('index has no manifests list', ctx);
    doc.manifests.forEach((m, i) => checkDescriptor(m, `manifests[${i}]`, ctx));
    return { kind: 'index', index: doc as unknown as ImageIndex, mediaType: type || MediaType.ociIndex };
  }
  if (type && !MANIFEST_MEDIA_TYPES.includes(type as never))
    throw new InputError(`unknown manifest media type ${JSON.stringify(type)}`, ctx);
  checkDescriptor(doc.config, 'config', ctx);
  if (!Array.isArray(doc.layers)) throw new InputError('manifest has no layers list', ctx);
  doc.layers.forEach((l, i) => checkDescriptor(l, `layers[${i}]`, ctx));
  if (doc.subject !== undefined) checkDescriptor(doc.subject, 'subject', ctx);
  return { kind: 'manifest', manifest: doc as unknown as ImageManifest, mediaType: type || MediaType.ociManifest };
}

export function hostPlatform(): Platform {
  const arch: Record<string, string> = {
    x64: 'amd64',
    arm64: 'arm64',
    arm: 'arm',
    ia32: '386',
    ppc64: 'ppc64le',
    s390x: 's390x',
    riscv64: 'riscv64',
  };
  const p: Platform = { os: 'linux', architecture: arch[process.arch] ?? process.arch };
  if (p.architecture === 'arm64') p.variant = 'v8';
  return p;
}

export function parsePlatform(text: string): Platform {
  const [os, architecture, variant] = text.split('/');
  if (!os || !architecture) throw new InputError(`platform ${JSON.stringify(text)} is not os/arch[/variant]`);
  return variant ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(p: Platform): string {
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** The index entry for `platform`; arm64's variant v8 is the default and may be left out. */
export function choosePlatform(index: ImageIndex, platform: Platform, ctx: ErrorContext): Descriptor {
  const norm = (v: string | undefined, arch: string) => v ?? (arch === 'arm64' ? 'v8' : '');
  const match = index.manifests.find(
    (m) =>
      m.platform &&
      m.platform.os === platform.os &&
      m.platform.architecture === platform.architecture &&
      norm(m.platform.variant, m.platform.architecture) === norm(platform.variant, platform.architecture),
  );
  if (!match) {
    const have = index.manifests.map((m) => (m.platform ? formatPlatform(m.platform) : '?')).join(', ');
    throw new InputError(`no manifest for platform ${formatPlatform(platform)} (index has: ${have || 'none'})`, ctx);
  }
  return match;
}
