// Turns a user's image reference into a source or target: `oci:PATH[:TAG]`, `docker-archive:PATH`,
// or a registry reference.
import { DockerArchiveSource } from './docker-archive';
import type { ImageSource, ImageTarget } from './image-io';
import { OciLayoutSource, OciLayoutTarget } from './layout';

export interface OpenOptions {
  /** Registry hosts spoken to over plain HTTP. */
  plainHttp?: string[];
  /** Registry hosts whose TLS certificates are not verified. */
  insecure?: string[];
}

export async function openSource(ref: string, _opts: OpenOptions = {}): Promise<ImageSource> {
  if (ref.startsWith('oci:')) return new OciLayoutSource(ref);
  if (ref.startsWith('docker-archive:')) return new DockerArchiveSource(ref);
  throw new Error(`registry sources are not wired yet: ${ref}`);
}

export async function openTarget(ref: string, _opts: OpenOptions = {}): Promise<ImageTarget> {
  if (ref.startsWith('oci:')) return new OciLayoutTarget(ref);
  if (ref.startsWith('docker-archive:')) throw new Error('docker-archive: can only be a source');
  throw new Error(`registry targets are not wired yet: ${ref}`);
}
