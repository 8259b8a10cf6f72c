// Registry authentication: WWW-Authenticate challenges, the Bearer token flow (distribution's token
// spec, and OAuth2's refresh-token grant for identity tokens), with credentials looked up when a
// registry first asks for them (./docker-credentials). Secrets stay in this module's objects: messages
// and log lines name hosts, realms and scopes, never usernames, passwords or tokens.
import { InputError, type ErrorContext } from '../errors';
import { log } from '../log';
import type { Credentials } from './docker-credentials';

export interface Challenge {
  /** Lowercased: `basic`, `bearer`, ... */
  scheme: string;
  /** Parameter names lowercased, values unquoted. */
  params: Record<string, string>;
}

/** Finds the credentials for a registry when it first asks for them (a credential helper may run). */
export type CredentialLookup = () => Promise<Credentials | undefined>;

/**
 * How long credentials that were looked up are used before they are looked up again, so that the
 * short-lived passwords cloud registries' helpers hand out are renewed while the daemon runs.
 */
export const CREDENTIALS_REUSE_MS = 5 * 60_000;

export function basicAuthorization(c: Pick<Credentials, 'username' | 'password'>): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, 'utf8').toString('base64')}`;
}

/** Parses a WWW-Authenticate value (RFC 7235): one or more challenges, each `scheme k=v, k="v", ...`. */
export function parseWwwAuthenticate(value: string): Challenge[] {
  const challenges: Challenge[] = [];
  let i = 0;
  const n = value.length;
  const skipSpace = () => {
    while (i < n && (value[i] === ' ' || value[i] === '\t')) i++;
  };
  const token = () => {
    const m = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(value.slice(i));
    if (!m) return '';
    i += m[0].length;
    return m[0];
  };
  while (i < n) {
    skipSpace();
    if (value[i] === ',') {
      i++;
      continue;
    }
    const scheme = token();
    if (!scheme) break;
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: {} };
    challenges.push(challenge);
    for (;;) {
      skipSpace();
      const start = i;
      const name = token();
      skipSpace();
      if (!name || value[i] !== '=') {
        // Not `name=`: the next challenge's scheme. (token68 forms are not used by registries.)
        i = start;
        break;
      }
      i++;
      skipSpace();
      let v = '';
      if (value[i] === '"') {
        i++;
        while (i < n && value[i] !== '"') {
          if (value[i] === '\\' && i + 1 < n) i++;
          v += value[i++];
        }
        i++;
      } else {
        // Unquoted values should be tokens; realms are sometimes sent as bare URLs all the same.
        v = /^[^,\s]*/.exec(value.slice(i))![0];
        i += v.length;
      }
      challenge.params[name.toLowerCase()] = v;
      skipSpace();
      if (value[i] === ',') {
        i++;
        continue;
      }
      break;
    }
  }
  return challenges;
}

/** Replaces every occurrence of the secrets in `text` with `***`. */
export function redact(text: string, secrets: Iterable<string | undefined>): string {
  let out = text;
  for (const s of secrets) if (s && s.length >= 3) out = out.split(s).join('***');
  return out;
}

/** A realm URL for messages: no userinfo, no query. */
export function printableUrl(url: string | URL): string {
  try {
    const u = new URL(url.toString());
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

/** A token endpoint's answer; `body` is null when it ran past the bound on a token's size. */
export interface TokenResponse {
  status: number;
  body: Buffer | null;
}

/**
 * Fetches a token endpoint URL (GET, or POST with a form `body`): the registry client's transport,
 * with its TLS settings and retries.
 */
export type TokenFetch = (url: URL, headers: Record<string, string>, body?: string) => Promise<TokenResponse>;

interface CachedToken {
  token: string;
  expiresAt: number;
}

interface BearerParams {
  realm: string;
  service?: string;
}

/** The token spec's default lifetime when `expires_in` is absent. */
const DEFAULT_TOKEN_SECONDS = 60;
/** The client an identity token's OAuth2 request names. */
const OAUTH_CLIENT_ID = 'erofs-ondemand';
/** Bound on a token endpoint's answer that is read. */
export const MAX_TOKEN_BYTES = 1 << 20;

/**
 * How one registry host wants requests authenticated, learned from its first 401, and the tokens it
 * handed out (per set of scopes, until they expire).
 */
export class RegistryAuth {
  private scheme: 'none' | 'basic' | 'bearer' = 'none';
  private bearer: BearerParams | null = null;
  private readonly tokens = new Map<string, CachedToken>();
  private readonly inflight = new Map<string, Promise<CachedToken>>();
  private readonly secrets = new Set<string>();
  private readonly lookup: CredentialLookup | null;
  /** The credentials in use and until when; null before the first lookup. */
  private known: { credentials: Credentials | undefined; until: number } | null = null;
  private pendingLookup: Promise<Credentials | undefined> | null = null;

  /** `credentials`: fixed ones, none, or how to look them up when the registry asks for them. */
  constructor(
    readonly host: string,
    credentials: Credentials | undefined | CredentialLookup,
    private readonly fetchToken: TokenFetch,
    private readonly now: () => number = Date.now,
  ) {
    if (typeof credentials === 'function') {
      this.lookup = credentials;
    } else {
      this.lookup = null;
      this.keep(credentials, Infinity);
    }
  }

  /** Whether the credentials last looked up (or given) hold anything. */
  get hasCredentials(): boolean {
    return this.known?.credentials !== undefined;
  }

  /** Removes anything secret this object knows from a text bound for a message or a log line. */
  redact(text: string): string {
    return redact(text, this.secrets);
  }

  /**
   * The Authorization value for a request needing `scopes` (e.g. `repository:a/b:pull`), once the
   * registry has asked for authentication; an expired token is renewed first.
   */
  async authorization(scopes: string[], ctx: ErrorContext): Promise<string | undefined> {
    if (this.scheme === 'basic') {
      const credentials = await this.credentials(ctx);
      return credentials?.username ? basicAuthorization(credentials) : undefined;
    }
    if (this.scheme !== 'bearer') return undefined;
    const key = scopeKey(scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > this.now()) return `Bearer ${cached.token}`;
    return `Bearer ${(await this.token(key, scopes, ctx)).token}`;
  }

  /**
   * Answers a 401's WWW-Authenticate. Afterwards `authorization(scopes)` gives the value to retry with.
   * Fails when the registry wants credentials that there are none of, or the token server refuses.
   */
  async challenge(header: string | string[] | undefined, scopes: string[], ctx: ErrorContext): Promise<void> {
    const value = Array.isArray(header) ? header.join(', ') : header;
    const challenges = value ? parseWwwAuthenticate(value) : [];
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm);
    const basic = challenges.find((c) => c.scheme === 'basic');
    if (bearer) {
      this.scheme = 'bearer';
      this.bearer = { realm: bearer.params.realm, service: bearer.params.service };
      // The challenge names every scope the refused request needed (a mount also needs pull on the
      // source repository): ask for those as well as ours, and keep the token under our key.
      const wanted = mergeScopes([...scopes, ...(bearer.params.scope ?? '').split(' ').filter(Boolean)]);
      const key = scopeKey(scopes);
      this.tokens.delete(key);
      await this.token(key, wanted, ctx);
      return;
    }
    if (basic) {
      const credentials = await this.credentials(ctx);
      if (!credentials)
        throw new InputError(
          'the registry requires authentication (Basic) and there are no credentials for it in the docker config',
          ctx,
        );
      if (!credentials.username)
        throw new InputError(
          'the registry requires authentication (Basic) and the docker config holds only an identity token for it',
          ctx,
        );
      this.scheme = 'basic';
      return;
    }
    const schemes = challenges.map((c) => c.scheme).join(', ');
    throw new InputError(
      `the registry answered 401 with ${value ? `an unsupported challenge (${schemes || 'unparsable'})` : 'no WWW-Authenticate challenge'}`,
      ctx,
    );
  }

  /** The credentials to use now: looked up again once CREDENTIALS_REUSE_MS have passed, one lookup at a time. */
  private credentials(ctx: ErrorContext): Promise<Credentials | undefined> {
    if (this.known && this.known.until > this.now()) return Promise.resolve(this.known.credentials);
    if (!this.pendingLookup) {
      const previous = this.known;
      this.pendingLookup = this.lookup!()
        .then(
          (credentials) => {
            this.keep(credentials, this.now() + CREDENTIALS_REUSE_MS);
            return credentials;
          },
          (err: unknown) => {
            // Credentials that worked may well still work: a failing helper does not fail every request.
            if (!previous?.credentials) throw err;
            log.warn('cannot look the registry credentials up again; using the previous ones', {
              registry: this.host,
              error: (err as Error).message,
            });
            this.known = { credentials: previous.credentials, until: this.now() + CREDENTIALS_REUSE_MS };
            return previous.credentials;
          },
        )
        .finally(() => (this.pendingLookup = null));
    }
    return this.pendingLookup.catch((err) => {
      throw InputError.wrap(err, ctx);
    });
  }

  private keep(credentials: Credentials | undefined, until: number): void {
    this.known = { credentials, until };
    if (credentials?.username) {
      this.secrets.add(credentials.password);
      this.secrets.add(basicAuthorization(credentials).slice('Basic '.length));
    }
    if (credentials?.identityToken) this.secrets.add(credentials.identityToken);
  }

  private token(key: string, scopes: string[], ctx: ErrorContext): Promise<CachedToken> {
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.requestToken(scopes, ctx).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending.then((t) => {
      this.tokens.set(key, t);
      return t;
    });
  }

  private async requestToken(scopes: string[], ctx: ErrorContext): Promise<CachedToken> {
    const { realm, service } = this.bearer!;
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new InputError('the registry names a Bearer realm that is not a URL', ctx);
    }
    const where = { ...ctx, realm: printableUrl(url) };
    const credentials = await this.credentials(ctx);
    const headers: Record<string, string> = { accept: 'application/json' };
    let form: string | undefined;
    if (credentials?.identityToken) {
      // An identity token is an OAuth2 refresh token: POSTed as a form (what docker and containerd do).
      const params = new URLSearchParams({
        grant_type: 'refresh_token',
        refresh_token: credentials.identityToken,
        client_id: OAUTH_CLIENT_ID,
      });
      if (service) params.set('service', service);
      if (scopes.length) params.set('scope', scopes.join(' '));
      form = params.toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else {
      if (service) url.searchParams.set('service', service);
      for (const scope of scopes) url.searchParams.append('scope', scope);
      if (credentials) headers.authorization = basicAuthorization(credentials);
    }
    log.debug('requesting a registry token', {
      ...where,
      scopes: scopes.join(' '),
      withCredentials: credentials !== undefined,
      identityToken: form !== undefined,
    });
    const res = await this.fetchToken(url, headers, form);
    if (res.status === 401 || res.status === 403) {
      throw new InputError(
        credentials
          ? `the token server refused the ${form ? 'identity token' : 'credentials'} (${res.status})`
          : `the token server refused an anonymous token (${res.status}); log in first`,
        where,
      );
    }
    if (res.status !== 200) throw new InputError(`the token server answered ${res.status}`, where);
    if (res.body === null)
      throw new InputError(`the token server answered with more than ${MAX_TOKEN_BYTES} bytes`, where);
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(res.body.toString('utf8'));
    } catch {
      throw new InputError('the token server answered with something that is not JSON', where);
    }
    const token =
      typeof doc.token === 'string' && doc.token
        ? doc.token
        : typeof doc.access_token === 'string'
          ? doc.access_token
          : '';
    if (!token) throw new InputError('the token server answered without a token', where);
    this.secrets.add(token);
    const seconds = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : DEFAULT_TOKEN_SECONDS;
    // Renew a little early so that a token does not expire between being attached and being checked.
    const margin = Math.min(10_000, seconds * 100);
    return { token, expiresAt: this.now() + seconds * 1000 - margin };
  }
}

/** Scopes with the actions on one resource united: `repository:a:pull` and `repository:a:push` -> `repository:a:pull,push`. */
export function mergeScopes(scopes: string[]): string[] {
  const actions = new Map<string, Set<string>>();
  const other: string[] = [];
  for (const scope of scopes) {
    const last = scope.lastIndexOf(':');
    if (last <= 0 || scope.indexOf(':') === last) {
      other.push(scope);
      continue;
    }
    const resource = scope.slice(0, last);
    if (!actions.has(resource)) actions.set(resource, new Set());
    for (const a of scope.slice(last + 1).split(',')) if (a) actions.get(resource)!.add(a);
  }
  const merged = [...actions].map(([resource, set]) => `${resource}:${[...set].sort().join(',')}`);
  return [...new Set([...merged, ...other])];
}

function scopeKey(scopes: string[]): string {
  return [...scopes].sort().join(' ');
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}
