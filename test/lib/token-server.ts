// A registry token server for tests (the distribution token spec): on 127.0.0.1, it hands out RS256
// JWTs signed by a key whose self-signed certificate (made with openssl) is both in the JWS `x5c`
// header and in the registry's rootcertbundle, granting whatever scopes are asked for.
import { execFileSync } from 'node:child_process';
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

export interface TokenServerOptions {
  service: string;
  issuer?: string;
  /** Users allowed to get tokens; anonymous requests get tokens too unless `requireLogin`. */
  users?: Record<string, string>;
  /** OAuth2 refresh tokens (docker's identity tokens) and the user each stands for, POSTed as a form. */
  refreshTokens?: Record<string, string>;
  requireLogin?: boolean;
  expiresIn?: number;
  /** Tokens that grant no access at all (the registry then refuses them). */
  grantNothing?: boolean;
  /** The JSON field holding the token (`token` by default, `access_token` as OAuth2 servers do). */
  field?: 'token' | 'access_token';
}

export interface TokenRequest {
  /** The Basic user (or the refresh token's), or undefined for anonymous. */
  user: string | undefined;
  /** How the client authenticated. */
  grant: 'basic' | 'refresh_token' | 'anonymous';
  service: string | null;
  scopes: string[];
}

export interface TokenServer {
  /** Read on every request: tests may change them between requests. */
  settings: TokenServerOptions;
  realm: string;
  issuer: string;
  service: string;
  certFile: string;
  requests: TokenRequest[];
  stop(): Promise<void>;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function jwt(key: KeyObject, certDer: Buffer, claims: object): string {
  const head = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] }));
  const body = b64url(JSON.stringify(claims));
  const signature = sign('sha256', Buffer.from(`${head}.${body}`), key);
  return `${head}.${body}.${b64url(signature)}`;
}

/** `repository:name:pull,push` -> the token's access claim entry. */
function accessOf(scope: string): { type: string; name: string; actions: string[] } | null {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first) return null;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope
      .slice(last + 1)
      .split(',')
      .filter(Boolean),
  };
}

export async function startTokenServer(opts: TokenServerOptions): Promise<TokenServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-token-'));
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      '/CN=erofs-ondemand test token issuer',
    ],
    {
      stdio: 'ignore',
    },
  );
  const key = createPrivateKey(fs.readFileSync(keyFile));
  const certDer = new X509Certificate(fs.readFileSync(certFile)).raw;
  const issuer = opts.issuer ?? 'erofs-ondemand-test-issuer';
  const requests: TokenRequest[] = [];
  const settings = { ...opts };

  const server = http.createServer((req, res) => {
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => answer(req, res, new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
      return;
    }
    answer(req, res, null);
  });

  /** Answers a GET (query parameters, Basic credentials) or a POSTed OAuth2 refresh-token form. */
  function answer(req: http.IncomingMessage, res: http.ServerResponse, form: URLSearchParams | null): void {
    const opts = settings;
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const params = form ?? url.searchParams;
    let user: string | undefined;
    let grant: TokenRequest['grant'] = 'anonymous';
    if (form) {
      const known = opts.refreshTokens?.[form.get('refresh_token') ?? ''];
      if (form.get('grant_type') !== 'refresh_token' || known === undefined) {
        res
          .writeHead(401, { 'content-type': 'application/json' })
          .end(JSON.stringify({ details: 'bad refresh token' }));
        return;
      }
      user = known;
      grant = 'refresh_token';
    }
    const authz = req.headers.authorization;
    if (authz?.startsWith('Basic ')) {
      const decoded = Buffer.from(authz.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      const [u, p] = [decoded.slice(0, colon), decoded.slice(colon + 1)];
      if (opts.users?.[u] !== p) {
        res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'bad credentials' }));
        return;
      }
      user = u;
      grant = 'basic';
    }
    const scopes = params
      .getAll('scope')
      .flatMap((s) => s.split(' '))
      .filter(Boolean);
    requests.push({ user, grant, service: params.get('service'), scopes });
    if (url.pathname !== '/token') {
      res.writeHead(404).end();
      return;
    }
    if (opts.requireLogin && !user) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ details: 'login required' }));
      return;
    }
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = opts.expiresIn ?? 300;
    const token = jwt(key, certDer, {
      iss: issuer,
      sub: user ?? '',
      aud: opts.service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access: opts.grantNothing ? [] : scopes.map(accessOf).filter(Boolean),
    });
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(
        JSON.stringify({ [opts.field ?? 'token']: token, expires_in: expiresIn, issued_at: new Date().toISOString() }),
      );
  }
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    settings,
    realm: `http://127.0.0.1:${port}/token`,
    issuer,
    service: settings.service,
    certFile,
    requests,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
