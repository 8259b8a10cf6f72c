// The daemon's configuration file (default /etc/erofs-ondemand/config.json), checked against a
// JSON schema so that a typo is an error naming the key, not a silently ignored setting.
import fs from 'node:fs';
import Ajv, { type JSONSchemaType } from 'ajv';
import { InputError } from './errors';
import { FUSE_BACKINGS, type FuseBacking } from './transport/fuse-backing';
import { TRANSPORT_NAMES, type TransportName } from './transport/transport';

export const DEFAULT_CONFIG = '/etc/erofs-ondemand/config.json';
export const DEFAULT_SOCKET = '/run/erofs-ondemand/control.sock';

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
  logLevel: 'error' | 'warn' | 'info' | 'debug';
  fetch: { concurrency: number };
  registries: { plainHttp: string[]; insecure: string[] };
  /** Prometheus metrics on host:port; empty: off. */
  metrics: { address: string };
}

export const DEFAULTS: Config = {
  cacheDir: '/var/lib/erofs-ondemand',
  cacheMaxBytes: 0,
  socket: DEFAULT_SOCKET,
  prefetch: 0,
  transport: 'auto',
  fuseBacking: 'auto',
  logLevel: 'info',
  fetch: { concurrency: 8 },
  registries: { plainHttp: [], insecure: [] },
  metrics: { address: '127.0.0.1:9543' },
};

type FileConfig = Partial<Omit<Config, 'fetch' | 'registries' | 'metrics'>> & {
  fetch?: Partial<Config['fetch']>;
  registries?: Partial<Config['registries']>;
  metrics?: Partial<Config['metrics']>;
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
    logLevel: { type: 'string', enum: ['error', 'warn', 'info', 'debug'], nullable: true },
    fetch: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: { concurrency: { type: 'integer', minimum: 1, maximum: 256, nullable: true } },
    },
    registries: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: {
        plainHttp: { type: 'array', items: { type: 'string' }, nullable: true },
        insecure: { type: 'array', items: { type: 'string' }, nullable: true },
      },
    },
    metrics: {
      type: 'object',
      nullable: true,
      additionalProperties: false,
      properties: { address: { type: 'string', pattern: '^(|.+:[0-9]+)$', nullable: true } },
    },
  },
};

const validate = new Ajv({ allErrors: true }).compile(schema);

/** Reads and checks a config file; a missing file at the default path means the defaults. */
export function loadConfig(file: string, required: boolean): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return structuredClone(DEFAULTS);
    throw new InputError(`cannot read: ${(err as Error).message}`, { path: file });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new InputError(`not JSON: ${(err as Error).message}`, { path: file });
  }
  if (!validate(doc)) {
    const problems = (validate.errors ?? []).map((e) => {
      const where = e.instancePath || '/';
      return e.keyword === 'additionalProperties' ? `${where}: unknown key ${JSON.stringify(e.params.additionalProperty)}` : `${where}: ${e.message}`;
    });
    throw new InputError(`invalid configuration: ${problems.join('; ')}`, { path: file });
  }
  const c = doc as FileConfig;
  return {
    ...DEFAULTS,
    ...c,
    fetch: { ...DEFAULTS.fetch, ...c.fetch },
    registries: { ...DEFAULTS.registries, ...c.registries },
    metrics: { ...DEFAULTS.metrics, ...c.metrics },
  } as Config;
}
