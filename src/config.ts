// The daemon's configuration file (default /etc/erofs-ondemand/config.json) and the registries file
// of `--registries-config`, checked against a JSON schema so that a typo is an error naming the key,
// not a silently ignored setting.
import fs from 'node:fs';
import type { ErrorObject, JSONSchemaType, SchemaObject, ValidateFunction } from 'ajv';
import { InputError, type ErrorContext } from './errors';
import { FD_KEEPER_CHOICES, type FdKeeperChoice } from './transport/fd-keepers';
import { FUSE_BACKINGS, type FuseBacking } from './transport/fuse-backing';
import { TRANSPORT_NAMES, type TransportName } from './transport/transport';
import { checkRegistries, registriesSchema, type RegistriesConfig } from './oci/hosts';

import { DEFAULT_CACHE_DIR, DEFAULT_SOCKET } from './defaults';
import { DEFAULT_READ_AHEAD } from './storage/blob-cache';
import { DEFAULT_READ_DEADLINE_MS } from './transport/miss-requests';

export { DEFAULT_CONFIG, DEFAULT_SOCKET } from './defaults';

export interface Config {
  cacheDir: string;
  /** Bound on the cache's disk use; blobs of unmounted images are evicted, least recently used first. 0: none. */
  cacheMaxBytes: number;
  socket: string;
  prefetch: number;
  /** 'auto': the best the kernel supports (cachefiles, then fanotify, then FUSE). */
  transport: TransportName | 'auto';
  /** FUSE transport: how EROFS reaches the FUSE files ('auto': file-backed on 6.12+, loop devices before). */
  fuseBacking: FuseBacking;
  /** Where kernel-facing fds outlive the daemon ('auto': systemd's fd store under systemd, else the holder process). */
  fdKeeper: FdKeeperChoice;
  logLevel: 'error' | 'warn' | 'info' | 'debug';
  /**
   * concurrency: Range GETs at once; readTimeoutSeconds: a read not served by then gets EIO (0: no
   * deadline); readAheadKiB: what a demand miss may fetch past itself in its blob (0: nothing).
   */
  fetch: { concurrency: number; readTimeoutSeconds: number; readAheadKiB: number };
  /** Mirrors, CAs, TLS and plain HTTP per registry host (src/oci/hosts.ts). */
  registries: RegistriesConfig;
  /** Prometheus metrics on host:port; empty: off. */
  metrics: { address: string };
  /**
   * containerd's snapshots API on this unix socket (a proxy snapshotter); empty: off; absent:
   * DEFAULT_SNAPSHOTTER_SOCKET for a daemon on the default control socket, off for others.
   */
  snapshotter: { socket?: string };
}

export const DEFAULTS: Config = {
  cacheDir: DEFAULT_CACHE_DIR,
  cacheMaxBytes: 0,
  socket: DEFAULT_SOCKET,
  prefetch: 0,
  transport: 'auto',
  fuseBacking: 'auto',
  fdKeeper: 'auto',
  logLevel: 'info',
  fetch: {
    concurrency: 8,
    readTimeoutSeconds: DEFAULT_READ_DEADLINE_MS / 1000,
    readAheadKiB: DEFAULT_READ_AHEAD.maxBytes / 1024,
  },
  registries: { plainHttp: [], insecure: [], hosts: {} },
  metrics: { address: '127.0.0.1:9543' },
  snapshotter: {},
};

/** What a configuration file may hold, and what command-line flags may override: every key optional. */
export type FileConfig = Partial<Omit<Config, 'fetch' | 'registries' | 'metrics' | 'snapshotter'>> & {
  fetch?: Partial<Config['fetch']>;
  registries?: RegistriesConfig;
  metrics?: Partial<Config['metrics']>;
  snapshotter?: Partial<Config['snapshotter']>;
};

const schema: JSONSchemaType<FileConfig> = {
  type: 'object',
  additionalProperties: false,
  properties: {
    cacheDir: { type: 'string', minLength: 1, nullable: true },
    cacheMaxBytes: { type: 'integer', minimum: 0, nullable: true },
    socket: { type: 'string', minLength: 1, nullable: true },
    prefetch: { type: 'integer', minimum: 0, maximum: 64, nullable: true },
    transport: { type: 'string', enum: ['auto', ...TRANSPORT_NAMES], nullable: true },
    fuseBacking: { type: 'string', enum: [...FUSE_BACKINGS], nullable: true },
    fdKeeper: { type: 'string', enum: [...FD_KEEPER_CHOICES], nullable: true },
    logLevel: { type: 'string', enum: ['error', 'warn', 'info', 'debug'], nullable: true },
    fetch: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: {
        concurrency: { type: 'integer', minimum: 1, maximum: 256, nullable: true },
        // Beyond what a timer can hold, Node fires it at once: every read would time out.
        readTimeoutSeconds: { type: 'number', minimum: 0, maximum: Math.floor(0x7fffffff / 1000), nullable: true },
        readAheadKiB: { type: 'integer', minimum: 0, maximum: 1 << 20, nullable: true },
      },
    },
    registries: { ...registriesSchema, nullable: true },
    metrics: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: {
        address: { type: 'string', pattern: '^(|.+:[0-9]+)$', description: 'host:port (empty: off)', nullable: true },
      },
    },
    snapshotter: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: {
        socket: { type: 'string', pattern: '^(|/.*)$', description: 'an absolute path (empty: off)', nullable: true },
      },
    },
  },
};

// Loading ajv and compiling the schemas is a large part of a short command's start-up: only commands that read a configuration file pay it.
let ajvInstance: import('ajv').default | undefined;
function ajv(): import('ajv').default {
  if (!ajvInstance) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only when a file is read
    const Ajv = (require('ajv') as typeof import('ajv')).default;
    ajvInstance = new Ajv({ allErrors: true, discriminator: true, verbose: true });
  }
  return ajvInstance;
}

let validators: { config: ValidateFunction<FileConfig>; registries: ValidateFunction<RegistriesConfig> } | undefined;
function validatorsOf(): NonNullable<typeof validators> {
  validators ??= { config: ajv().compile(schema), registries: ajv().compile(registriesSchema) };
  return validators;
}

/** A checker for `schema`, compiled at its first use: a document's problems, each naming its key (none: valid). */
export function schemaChecker(schema: SchemaObject): (doc: unknown) => string[] {
  let validate: ValidateFunction | undefined;
  return (doc) => {
    validate ??= ajv().compile(schema);
    return validate(doc) ? [] : schemaProblems(validate.errors);
  };
}

/** Each schema error as `<where>: <what is wrong>`; `where` names the key (by default its JSON pointer). */
function schemaProblems(
  errors: ErrorObject[] | null | undefined,
  name: (pointer: string) => string = (pointer) => pointer || '/',
): string[] {
  return (errors ?? []).map((e) => {
    const where = name(e.instancePath);
    if (e.keyword === 'additionalProperties')
      return `${where}: unknown key ${JSON.stringify(e.params.additionalProperty)}`;
    if (e.keyword === 'enum')
      return `${where}: must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    // A pattern's `description` says in words what the pattern means.
    const description = (e.parentSchema as { description?: string } | undefined)?.description;
    if (e.keyword === 'pattern' && description) return `${where}: must be ${description}`;
    if (e.keyword === 'required') return `${where}: missing key ${JSON.stringify(e.params.missingProperty)}`;
    return `${where}: ${e.message}`;
  });
}

function readJson(file: string, required: boolean): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read: ${(err as Error).message}`, { path: file });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InputError(`not JSON: ${(err as Error).message}`, { path: file });
  }
}

/** Reads and checks a config file; a missing file at the default path means the defaults. */
export function loadConfig(file: string, required: boolean): Config {
  const doc = readJson(file, required);
  if (doc === undefined) return structuredClone(DEFAULTS);
  return overridden(DEFAULTS, doc, { path: file });
}

/**
 * `base` with `settings` laid over it, checked against the file's schema: command-line flags go
 * through the same checks as the file. `name` turns a key's JSON pointer into what the user typed
 * (a flag, with its value) for the error.
 */
export function overridden(
  base: Config,
  settings: unknown,
  context: ErrorContext,
  name?: (pointer: string) => string,
): Config {
  const validate = validatorsOf().config;
  if (!validate(settings))
    throw new InputError(`invalid configuration: ${schemaProblems(validate.errors, name).join('; ')}`, context);
  const c = settings as FileConfig;
  const semantic = checkRegistries(c.registries ?? {}).map((p) => `/registries${p}`);
  if (semantic.length) throw new InputError(`invalid configuration: ${semantic.join('; ')}`, context);
  return {
    ...base,
    ...c,
    fetch: { ...base.fetch, ...c.fetch },
    registries: { ...base.registries, ...c.registries },
    metrics: { ...base.metrics, ...c.metrics },
    snapshotter: { ...base.snapshotter, ...c.snapshotter },
  } as Config;
}

/**
 * A registries configuration file (`--registries-config`): the same object as the daemon
 * configuration's `registries`. Errors name the key, as JSON pointers from the file's top.
 */
export function loadRegistriesFile(file: string): RegistriesConfig {
  const doc = readJson(file, true);
  const validateRegistries = validatorsOf().registries;
  if (!validateRegistries(doc))
    throw new InputError(`invalid registries configuration: ${schemaProblems(validateRegistries.errors).join('; ')}`, {
      path: file,
    });
  const problems = checkRegistries(doc);
  if (problems.length) throw new InputError(`invalid registries configuration: ${problems.join('; ')}`, { path: file });
  return doc;
}

/** The registry flags of `convert` and `inspect`. */
export interface RegistryFlags {
  plainHttp?: string[];
  insecure?: string[];
  registriesConfig?: string;
}

/** The `--registries-config` file (if any) with the `--plain-http`/`--insecure` hosts added to its lists. */
export function registriesFromFlags(flags: RegistryFlags): RegistriesConfig {
  const base = flags.registriesConfig ? loadRegistriesFile(flags.registriesConfig) : {};
  const extra = checkRegistries({ plainHttp: flags.plainHttp, insecure: flags.insecure });
  if (extra.length) throw new InputError(`invalid registry flags: ${extra.join('; ')}`);
  return {
    ...base,
    plainHttp: [...(base.plainHttp ?? []), ...(flags.plainHttp ?? [])],
    insecure: [...(base.insecure ?? []), ...(flags.insecure ?? [])],
  };
}
