// Turns a user's image reference into a source or target: `oci:PATH[:TAG]`, `docker-archive:PATH`,
// or a registry reference.
import { InputError } from '../errors';
import { DockerArchiveSource } from './docker-archive';
import type { ImageSource, ImageTarget } from './image-io';
import { OciLayoutSource, OciLayoutTarget } from './layout';
import { parseReference } from './reference';
import { RegistryClient } from './registry';
import { RegistrySource, RegistryTarget } from './registry-image';

export interface OpenOptions {
  /** Registry hosts spoken to over plain HTTP (loopback hosts always are). */
  plainHttp?: string[];
  /** Registry hosts whose TLS certificates are not verified. */
  insecure?: string[];
}

const clients = new Map<string, RegistryClient>();

function isLoopback(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return name === 'localhost' || name === '::1' || /^127\.\d+\.\d+\.\d+$/.test(name);
}

/** One client per registry host, so connections and tokens are shared between source and target. */
export function registryClient(host: string, opts: OpenOptions = {}): RegistryClient {
  let c = clients.get(host);
  if (!c) {
    c = new RegistryClient(host, { plainHttp: isLoopback(host) || (opts.plainHttp ?? []).includes(host), insecure: (opts.insecure ?? []).includes(host) });
    clients.set(host, c);
  }
  return c;
}

export async function closeRegistryClients(): Promise<void> {
  await Promise.all([...clients.values()].map((c) => c.close()));
  clients.clear();
}

export async function openSource(ref: string, opts: OpenOptions = {}): Promise<ImageSource> {
  if (ref.startsWith('oci:')) return new OciLayoutSource(ref);
  if (ref.startsWith('docker-archive:')) return new DockerArchiveSource(ref);
  const parsed = parseReference(ref);
  return new RegistrySource(ref, parsed, registryClient(parsed.registry, opts));
}

export async function openTarget(ref: string, opts: OpenOptions = {}, source?: ImageSource): Promise<ImageTarget> {
  if (ref.startsWith('oci:')) return new OciLayoutTarget(ref);
  if (ref.startsWith('docker-archive:')) throw new InputError('docker-archive: can only be a source', { image: ref });
  const parsed = parseReference(ref);
  const mountFrom = source instanceof RegistrySource && source.parsed.registry === parsed.registry && source.parsed.repository !== parsed.repository ? source.parsed.repository : undefined;
  return new RegistryTarget(ref, parsed, registryClient(parsed.registry, opts), mountFrom);
}
