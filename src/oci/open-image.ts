// Turns a user's image reference into a source or target: `oci:PATH[:TAG]`, `docker-archive:PATH`,
// or a registry reference, reached through the endpoints its host configuration names.
import { InputError } from '../errors';
import { DockerArchiveSource } from './docker-archive';
import { HostClient } from './host-client';
import { hostEndpoints, type Endpoint, type RegistriesConfig } from './hosts';
import type { ImageSource, ImageTarget } from './image-io';
import { OciLayoutSource, OciLayoutTarget } from './layout';
import { parseReference, type ImageReference } from './reference';
import { RegistrySource, RegistryTarget } from './registry-image';

/** How registries are reached: mirrors, TLS, plain HTTP (the daemon configuration's `registries`). */
export type OpenOptions = RegistriesConfig;

const clients = new Map<string, HostClient>();

function endpointKey(e: Endpoint): unknown[] {
  return [e.api, e.mirror, [...e.capabilities].sort(), e.ca, e.insecure, e.namespace];
}

/** One client per registry host and configuration, so connections and tokens are shared between source and target. */
export function registryClient(host: string, opts: OpenOptions = {}): HostClient {
  const endpoints = hostEndpoints(host, opts);
  const key = JSON.stringify([host, endpointKey(endpoints.upstream), endpoints.pull.map(endpointKey)]);
  let c = clients.get(key);
  if (!c) {
    c = new HostClient(host, endpoints);
    clients.set(key, c);
  }
  return c;
}

export async function closeRegistryClients(): Promise<void> {
  await Promise.all([...clients.values()].map((c) => c.close()));
  clients.clear();
}

/** Prefixes of references to local images; any other reference names a registry image. */
const LOCAL_TRANSPORTS = ['oci:', 'docker-archive:'] as const;

/** A reference to an image in a registry, refused when it names a local one (`oci:PATH`, `docker-archive:PATH`). */
export function registryReference(ref: string): ImageReference {
  const local = LOCAL_TRANSPORTS.find((t) => ref.startsWith(t));
  if (local) throw new InputError(`${local}PATH names a local image, not one in a registry`, { image: ref });
  return parseReference(ref);
}

export async function openSource(ref: string, opts: OpenOptions = {}): Promise<ImageSource> {
  if (ref.startsWith('oci:')) return new OciLayoutSource(ref);
  if (ref.startsWith('docker-archive:')) return new DockerArchiveSource(ref);
  const parsed = parseReference(ref);
  return new RegistrySource(ref, parsed, registryClient(parsed.registry, opts));
}

/** Pushes go to the target host's upstream, never to its mirrors. */
export async function openTarget(ref: string, opts: OpenOptions = {}, source?: ImageSource): Promise<ImageTarget> {
  if (ref.startsWith('oci:')) return new OciLayoutTarget(ref);
  if (ref.startsWith('docker-archive:')) throw new InputError('docker-archive: can only be a source', { image: ref });
  const parsed = parseReference(ref);
  const mountFrom =
    source instanceof RegistrySource &&
    source.parsed.registry === parsed.registry &&
    source.parsed.repository !== parsed.repository
      ? source.parsed.repository
      : undefined;
  return new RegistryTarget(ref, parsed, registryClient(parsed.registry, opts).upstream, mountFrom);
}
