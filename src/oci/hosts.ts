// Registry host configuration, in the spirit of containerd's hosts.toml: for each upstream registry
// host (or "*" for every host without an entry of its own) the mirrors to try first, in order, with
// what each may be asked for, and the TLS settings of mirrors and upstream. This module turns that
// into the ordered endpoints a request for a host goes to; it sends nothing itself.
import fs from 'node:fs';
import type { JSONSchemaType } from 'ajv';
import { DOCKER_HUB_REGISTRY, isValidRegistryHost } from './reference';

/** `resolve`: tags to digests (manifests by tag, referrers). `pull`: blobs and manifests by digest. */
export type Capability = 'pull' | 'resolve';
export const CAPABILITIES: readonly Capability[] = ['pull', 'resolve'];

export interface MirrorConfig {
  /** `http(s)://host[:port][/path]`; requests go to `<path>/v2/<repository>/...`. */
  url: string;
  /** Default: both. Give a mirror you do not trust to map tags to digests `["pull"]` only. */
  capabilities?: Capability[];
  /** PEM file of certificates trusted for this mirror, besides Node's default CAs. */
  ca?: string;
  /** TLS without certificate verification. */
  insecure?: boolean;
  /** The url's path is the API root as it is (`<path>/<repository>/...`), no `/v2` added. */
  overridePath?: boolean;
}

export interface HostConfig {
  mirrors?: MirrorConfig[];
  /** Whether pulls go to the upstream once every mirror failed (default true). Pushes always do. */
  fallbackToUpstream?: boolean;
  /** PEM file of certificates trusted for the upstream, besides Node's default CAs. */
  ca?: string;
  /** The upstream's TLS certificate is not verified. */
  insecure?: boolean;
  /** The upstream speaks plain HTTP. Default: false, except for loopback hosts without `ca`/`insecure`. */
  plainHttp?: boolean;
}

/** The `registries` object of the daemon configuration, also what `--registries-config FILE` holds. */
export interface RegistriesConfig {
  /** Hosts whose upstream speaks plain HTTP (shorthand for `hosts[host].plainHttp`). */
  plainHttp?: string[];
  /** Hosts whose upstream's certificate is not verified (shorthand for `hosts[host].insecure`). */
  insecure?: string[];
  /** Per upstream host `host[:port]`, or `"*"` for hosts without an entry. */
  hosts?: Record<string, HostConfig>;
}

export const DEFAULT_HOST = '*';

export interface Endpoint {
  /** The API root, `scheme://host[:port]/path` without a trailing slash: `<api>/<repository>/manifests/...`. */
  api: string;
  mirror: boolean;
  capabilities: ReadonlySet<Capability>;
  /** PEM file trusted besides Node's default CAs. */
  ca?: string;
  insecure: boolean;
  /** Sent to mirrors as `?ns=`: which upstream the request is for (containerd does the same). */
  namespace?: string;
}

export interface HostEndpoints {
  /** Where pushes go, and pulls last. */
  upstream: Endpoint;
  /** Where pulls go, in order: the mirrors, then the upstream unless `fallbackToUpstream` is false. */
  pull: Endpoint[];
}

const hostSchema: JSONSchemaType<HostConfig> = {
  type: 'object',
  additionalProperties: false,
  properties: {
    mirrors: {
      type: 'array',
      nullable: true,
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['url'],
        properties: {
          url: { type: 'string', minLength: 1 },
          capabilities: {
            type: 'array',
            nullable: true,
            minItems: 1,
            uniqueItems: true,
            items: { type: 'string', enum: [...CAPABILITIES] },
          },
          ca: { type: 'string', minLength: 1, nullable: true },
          insecure: { type: 'boolean', nullable: true },
          overridePath: { type: 'boolean', nullable: true },
        },
      },
    },
    fallbackToUpstream: { type: 'boolean', nullable: true },
    ca: { type: 'string', minLength: 1, nullable: true },
    insecure: { type: 'boolean', nullable: true },
    plainHttp: { type: 'boolean', nullable: true },
  },
};

/** JSON schema of `RegistriesConfig` (embedded in the daemon configuration's schema). */
export const registriesSchema: JSONSchemaType<RegistriesConfig> = {
  type: 'object',
  additionalProperties: false,
  properties: {
    plainHttp: { type: 'array', items: { type: 'string' }, nullable: true },
    insecure: { type: 'array', items: { type: 'string' }, nullable: true },
    hosts: { type: 'object', nullable: true, required: [], additionalProperties: hostSchema },
  },
};

const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', DOCKER_HUB_REGISTRY]);

/** A host as image references name it after parsing: Docker Hub's aliases become registry-1.docker.io. */
export function canonicalHost(host: string): string {
  const lower = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(lower) ? DOCKER_HUB_REGISTRY : host;
}

export function isLoopback(host: string): boolean {
  const name = host.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return name === 'localhost' || name === '::1' || /^127\.\d+\.\d+\.\d+$/.test(name);
}

/**
 * Problems the schema cannot see, each `<JSON pointer>: <what is wrong>` relative to the registries
 * object: host keys, mirror URLs, CA files that cannot be read, a host left with nothing to pull from.
 */
export function checkRegistries(config: RegistriesConfig): string[] {
  const problems: string[] = [];
  for (const list of ['plainHttp', 'insecure'] as const) {
    (config[list] ?? []).forEach((h, i) => {
      if (!isValidRegistryHost(h)) problems.push(`/${list}/${i}: ${JSON.stringify(h)} is not a registry host[:port]`);
    });
  }
  const seen = new Map<string, string>();
  for (const [key, entry] of Object.entries(config.hosts ?? {})) {
    const at = `/hosts/${pointerEscape(key)}`;
    if (key !== DEFAULT_HOST && !isValidRegistryHost(key))
      problems.push(`${at}: ${JSON.stringify(key)} is not a registry host[:port] (nor "*")`);
    const canonical = key === DEFAULT_HOST ? key : canonicalHost(key);
    if (seen.has(canonical)) problems.push(`${at}: the same registry as ${JSON.stringify(seen.get(canonical))}`);
    seen.set(canonical, key);
    if (entry.ca !== undefined) problems.push(...checkCaFile(entry.ca, `${at}/ca`));
    if (entry.plainHttp === true && (entry.ca !== undefined || entry.insecure !== undefined))
      problems.push(`${at}/plainHttp: plain HTTP has no TLS for "ca" or "insecure" to apply to`);
    if (entry.fallbackToUpstream === false && !(entry.mirrors ?? []).length)
      problems.push(`${at}/fallbackToUpstream: false leaves no endpoint to pull from (no mirrors)`);
    (entry.mirrors ?? []).forEach((m, i) => {
      const mAt = `${at}/mirrors/${i}`;
      const why = mirrorUrlProblem(m.url);
      if (why) problems.push(`${mAt}/url: ${JSON.stringify(m.url)} ${why}`);
      if (m.ca !== undefined) problems.push(...checkCaFile(m.ca, `${mAt}/ca`));
    });
  }
  return problems;
}

function pointerEscape(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

function mirrorUrlProblem(text: string): string | undefined {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    return 'is not a URL';
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return 'is not an http:// or https:// URL';
  // Credentials belong in the docker config, where they are looked up by the mirror's host.
  if (u.username || u.password) return "holds credentials; put them in the docker config under the mirror's host";
  if (u.search || u.hash) return 'has a query or fragment';
  return undefined;
}

function checkCaFile(file: string, at: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    return [
      `${at}: cannot read ${JSON.stringify(file)}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
    ];
  }
  return text.includes('-----BEGIN CERTIFICATE-----')
    ? []
    : [`${at}: ${JSON.stringify(file)} holds no PEM certificate`];
}

/** The entry for `host`: its own (Docker Hub's aliases are one host), else the "*" entry, else none. */
export function hostConfig(host: string, config: RegistriesConfig): HostConfig {
  const entries = Object.entries(config.hosts ?? {});
  const own = entries.find(([key]) => key !== DEFAULT_HOST && canonicalHost(key) === canonicalHost(host));
  return own?.[1] ?? config.hosts?.[DEFAULT_HOST] ?? {};
}

/** Where requests for the registry `host` (as parsed from an image reference) go. */
export function hostEndpoints(host: string, config: RegistriesConfig): HostEndpoints {
  const entry = hostConfig(host, config);
  const listed = (list: string[] | undefined) => (list ?? []).some((h) => canonicalHost(h) === canonicalHost(host));
  const insecure = entry.insecure ?? listed(config.insecure);
  const tlsAsked = entry.ca !== undefined || insecure;
  const plainHttp = entry.plainHttp ?? (listed(config.plainHttp) || (isLoopback(host) && !tlsAsked));
  const upstream: Endpoint = {
    api: `${plainHttp ? 'http' : 'https'}://${host}/v2`,
    mirror: false,
    capabilities: new Set(CAPABILITIES),
    ca: entry.ca,
    insecure,
  };
  const namespace = host === DOCKER_HUB_REGISTRY ? 'docker.io' : host;
  const mirrors = (entry.mirrors ?? []).map((m): Endpoint => ({
    api: mirrorApi(m),
    mirror: true,
    capabilities: new Set(m.capabilities ?? CAPABILITIES),
    ca: m.ca,
    insecure: m.insecure ?? false,
    namespace,
  }));
  return { upstream, pull: entry.fallbackToUpstream === false ? mirrors : [...mirrors, upstream] };
}

/** `<url path>/v2`, or with `overridePath` the url's path as it is; no trailing slash either way. */
export function mirrorApi(m: MirrorConfig): string {
  const u = new URL(m.url);
  let p = u.pathname.replace(/\/+$/, '');
  if (!m.overridePath && !/(^|\/)v2$/.test(p)) p = `${p}/v2`;
  return `${u.protocol}//${u.host}${p}`;
}
