// Credentials from docker's config.json, as docker/cli's configfile resolves them: a registry's
// `credHelpers` entry, else `credsStore`, names a `docker-credential-<name>` program whose answer is
// final (its "not found" means no credentials; `auths` is then not consulted); with neither, the
// `auths` entry. Helpers speak docker-credential-helpers' protocol: `get`, the server URL on stdin,
// `{"ServerURL","Username","Secret"}` on stdout, the username `<token>` marking an identity token.
// Secrets never reach messages or log lines; a helper's own output is quoted only from a failure.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { InputError } from '../errors';
import { log } from '../log';

export interface Credentials {
  username: string;
  password: string;
  /**
   * An OAuth2 refresh token (docker's "identity token"): exchanged at a Bearer token server instead of
   * the username and password, which are then empty.
   */
  identityToken?: string;
}

/** Where docker keeps Docker Hub's credentials, whatever host the image names. */
export const DOCKER_HUB_SERVER = 'https://index.docker.io/v1/';
const DOCKER_HUB_HOSTS = ['registry-1.docker.io', 'index.docker.io', 'docker.io'];

/** Bound on what a helper may write before it is killed. */
export const MAX_HELPER_OUTPUT = 64 << 10;
/** How long a helper may take before it is killed. */
export const HELPER_TIMEOUT_MS = 30_000;
/** What docker-credential-helpers' programs print when they hold nothing for the server. */
const NOT_FOUND = /^credentials not found/i;
/** The username with which a helper hands out an identity token. */
const TOKEN_USERNAME = '<token>';

/** `host[:port]` of a config.json `auths` key, which may be a URL (`https://index.docker.io/v1/`). */
function authKeyHost(key: string): string {
  return key
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')
    .replace(/\/.*$/, '')
    .toLowerCase();
}

function isDockerHub(host: string): boolean {
  return DOCKER_HUB_HOSTS.includes(host);
}

function sameRegistry(a: string, b: string): boolean {
  return a === b || (isDockerHub(a) && isDockerHub(b));
}

export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(env.DOCKER_CONFIG || path.join(env.HOME || os.homedir(), '.docker'), 'config.json');
}

interface DockerConfigAuth {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

interface DockerConfig {
  auths?: Record<string, DockerConfigAuth>;
  credsStore?: string;
  credHelpers?: Record<string, string>;
}

export interface LookupOptions {
  /** Where DOCKER_CONFIG, HOME and the helpers' PATH come from (default: this process's environment). */
  env?: NodeJS.ProcessEnv;
  /** The config file (default: dockerConfigPath(env)). */
  file?: string;
}

/**
 * The credentials docker's config.json gives `host` (`host[:port]`, as image references name it), or
 * undefined: from the credential helper the file names for it, else from its `auths` entry.
 */
export async function lookupDockerCredentials(
  host: string,
  opts: LookupOptions = {},
): Promise<Credentials | undefined> {
  const env = opts.env ?? process.env;
  const file = opts.file ?? dockerConfigPath(env);
  const config = readDockerConfig(file);
  if (!config) return undefined;
  const wanted = host.toLowerCase();
  const helper = helperFor(config, wanted);
  if (helper)
    return runCredentialHelper(helper.name, serverUrl(wanted), { env, host, origin: `${helper.from} in ${file}` });
  return fromAuths(config, wanted, host, file);
}

/** The parsed config file, or undefined when there is none. */
function readDockerConfig(file: string): DockerConfig | undefined {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new InputError(`cannot read docker config: ${(err as Error).message}`, { path: file });
  }
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (err) {
    // The JSON parser's message can quote the text around the error, which may be a secret.
    throw new InputError('docker config is not valid JSON', { path: file }, { cause: (err as Error).name });
  }
  if (config === null || typeof config !== 'object' || Array.isArray(config))
    throw new InputError('docker config is not a JSON object', { path: file });
  return config as DockerConfig;
}

/** What docker names the registry to a helper: Docker Hub by its index URL, any other by `host[:port]`. */
function serverUrl(host: string): string {
  return isDockerHub(host) ? DOCKER_HUB_SERVER : host;
}

/** `credHelpers[host]` (keyed as docker keys it, or by a URL of the host), else `credsStore`. */
function helperFor(config: DockerConfig, host: string): { name: string; from: string } | undefined {
  const helpers = config.credHelpers && typeof config.credHelpers === 'object' ? config.credHelpers : {};
  const keys = Object.keys(helpers);
  const key =
    keys.find((k) => k === serverUrl(host) || k.toLowerCase() === host) ??
    keys.find((k) => sameRegistry(authKeyHost(k), host));
  if (key !== undefined && typeof helpers[key] === 'string' && helpers[key])
    return { name: helpers[key], from: `credHelpers[${JSON.stringify(key)}]` };
  if (typeof config.credsStore === 'string' && config.credsStore)
    return { name: config.credsStore, from: 'credsStore' };
  return undefined;
}

function fromAuths(config: DockerConfig, wanted: string, host: string, file: string): Credentials | undefined {
  const entries = Object.entries(config.auths ?? {}).filter(([key]) => sameRegistry(authKeyHost(key), wanted));
  // An exact host match wins over a Docker Hub alias.
  entries.sort(([a], [b]) => Number(authKeyHost(b) === wanted) - Number(authKeyHost(a) === wanted));
  for (const [, entry] of entries) {
    if (typeof entry?.identitytoken === 'string' && entry.identitytoken)
      return { username: '', password: '', identityToken: entry.identitytoken };
    if (typeof entry?.auth === 'string' && entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon <= 0)
        throw new InputError(`docker config entry for ${host} has an "auth" that is not base64 of user:password`, {
          path: file,
        });
      return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
    if (typeof entry?.username === 'string' && typeof entry.password === 'string')
      return { username: entry.username, password: entry.password };
  }
  return undefined;
}

export interface HelperOptions {
  env?: NodeJS.ProcessEnv;
  /** The registry, for messages. */
  host: string;
  /** Where the helper was named (`credsStore in /root/.docker/config.json`), for messages. */
  origin: string;
  timeoutMs?: number;
}

/**
 * Runs `docker-credential-<name> get` for `server`: its credentials, or undefined when it holds none.
 * A helper that is missing, fails, hangs, says too much or answers nonsense is an InputError naming
 * the program and the registry.
 */
export async function runCredentialHelper(
  name: string,
  server: string,
  opts: HelperOptions,
): Promise<Credentials | undefined> {
  const program = `docker-credential-${name}`;
  const ctx = { registry: opts.host, helper: program };
  if (name.includes('/') || name.includes('\0'))
    throw new InputError(`${opts.origin} names "${name}", which is not a helper name (it holds a "/")`, ctx);
  const timeoutMs = opts.timeoutMs ?? HELPER_TIMEOUT_MS;
  const result = await new Promise<{ stdout: string; stderr: string; err: (Error & Record<string, unknown>) | null }>(
    (resolve) => {
      const child = execFile(
        program,
        ['get'],
        {
          env: opts.env ?? process.env,
          timeout: timeoutMs,
          // A helper stuck in the cloud's API may ignore SIGTERM.
          killSignal: 'SIGKILL',
          maxBuffer: MAX_HELPER_OUTPUT,
          encoding: 'utf8',
        },
        (err, stdout, stderr) => resolve({ stdout, stderr, err: err as (Error & Record<string, unknown>) | null }),
      );
      // A helper that exits without reading its input makes the write fail; its exit says what happened.
      child.stdin?.on('error', () => {});
      child.stdin?.end(server);
    },
  );
  const { err, stdout, stderr } = result;
  if (err) {
    if (err.code === 'ENOENT')
      throw new InputError(
        `credential helper ${program} (${opts.origin}) is not on PATH; install it or change the docker config`,
        ctx,
      );
    if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER')
      throw new InputError(`credential helper ${program} wrote more than ${MAX_HELPER_OUTPUT} bytes`, ctx);
    // Only the timeout kills it here (the output bound was checked above).
    if (err.killed)
      throw new InputError(`credential helper ${program} did not answer within ${timeoutMs / 1000} s`, ctx);
    if (err.signal) throw new InputError(`credential helper ${program} was killed by ${String(err.signal)}`, ctx);
    if (NOT_FOUND.test(stdout.trim())) {
      log.debug('the credential helper holds no credentials for the registry', ctx);
      return undefined;
    }
    // A failing helper prints its reason (on stdout, by the protocol); the first line says enough.
    const reason = firstLine(stdout) || firstLine(stderr);
    throw new InputError(
      `credential helper ${program} failed (exit ${String(err.code)})${reason ? `: ${reason}` : ''}`,
      ctx,
    );
  }
  let doc: { Username?: unknown; Secret?: unknown };
  try {
    doc = JSON.parse(stdout);
  } catch {
    throw new InputError(`credential helper ${program} answered with something that is not JSON`, ctx);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new InputError(`credential helper ${program} answered with JSON that is not an object`, ctx);
  if (doc.Secret !== undefined && typeof doc.Secret !== 'string')
    throw new InputError(`credential helper ${program} answered with a "Secret" that is not a string`, ctx);
  const username = typeof doc.Username === 'string' ? doc.Username : '';
  const secret = doc.Secret ?? '';
  if (!secret) return undefined;
  if (username === TOKEN_USERNAME) return { username: '', password: '', identityToken: secret };
  return { username, password: secret };
}

function firstLine(text: string): string {
  const line = text.trim().split('\n')[0]?.trim() ?? '';
  return line.length > 200 ? `${line.slice(0, 200)}...` : line;
}
