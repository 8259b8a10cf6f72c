// Registry authentication: WWW-Authenticate parsing, the token flow, and real registries behind
// htpasswd (Basic) and token (Bearer) auth, credentials from the config file or a credential helper.
// Secrets never reach messages or logs.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { after, afterEach, before, describe, it } from 'node:test';
import winston from 'winston';
import { log } from '../../src/log';
import {
  basicAuthorization,
  mergeScopes,
  parseWwwAuthenticate,
  redact,
  RegistryAuth,
  type TokenFetch,
} from '../../src/oci/auth';
import { sha256Digest } from '../../src/oci/digest';
import { readAll } from '../../src/oci/image-io';
import { RegistryClient, type RegistryClientOptions } from '../../src/oci/registry';
import { parseRetryAfter } from '../../src/oci/retry';
import { MediaType } from '../../src/oci/types';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { pushSmallImage, smallImage } from '../lib/small-image';
import { startTokenServer, type TokenServer } from '../lib/token-server';
import { rejectsWith } from '../lib/assertions';

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-auth-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeDockerConfig(dir: string, auths: Record<string, object>): string {
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ auths }));
  return dir;
}

function b64(s: string): string {
  return Buffer.from(s).toString('base64');
}

function assertNoSecrets(text: string, secrets: string[]): void {
  for (const s of secrets) assert.ok(!text.includes(s), `a secret appears in: ${text}`);
}

/** Every log line written while the suites run, at debug level. */
const logged: string[] = [];
const capture = new winston.transports.Stream({
  stream: new Writable({
    write(chunk, _enc, done) {
      logged.push(String(chunk));
      done();
    },
  }),
});

describe('WWW-Authenticate parsing', () => {
  const cases: [string, ReturnType<typeof parseWwwAuthenticate>][] = [
    ['Basic realm="Registry Realm"', [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]],
    [
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"',
      [
        {
          scheme: 'bearer',
          params: {
            realm: 'https://auth.docker.io/token',
            service: 'registry.docker.io',
            scope: 'repository:library/ubuntu:pull',
          },
        },
      ],
    ],
    [
      'Bearer realm="http://127.0.0.1:1/token", service="svc", scope="repository:a:pull,push repository:b:pull", error="insufficient_scope"',
      [
        {
          scheme: 'bearer',
          params: {
            realm: 'http://127.0.0.1:1/token',
            service: 'svc',
            scope: 'repository:a:pull,push repository:b:pull',
            error: 'insufficient_scope',
          },
        },
      ],
    ],
    [
      'Basic realm="one", Bearer realm="two",service="s"',
      [
        { scheme: 'basic', params: { realm: 'one' } },
        { scheme: 'bearer', params: { realm: 'two', service: 's' } },
      ],
    ],
    ['BEARER Realm="a\\"b\\\\c"', [{ scheme: 'bearer', params: { realm: 'a"b\\c' } }]],
    [
      'Bearer realm=https://x.example/token,service=svc',
      [{ scheme: 'bearer', params: { realm: 'https://x.example/token', service: 'svc' } }],
    ],
    ['Negotiate', [{ scheme: 'negotiate', params: {} }]],
    ['', []],
  ];
  for (const [value, want] of cases)
    it(`parses ${JSON.stringify(value)}`, () => assert.deepEqual(parseWwwAuthenticate(value), want));

  it('merges scopes per resource', () => {
    assert.deepEqual(
      mergeScopes(['repository:a:pull', 'repository:a:push,pull', 'repository:b:pull', 'registry:catalog:*']),
      ['repository:a:pull,push', 'repository:b:pull', 'registry:catalog:*'],
    );
  });

  it('parses Retry-After as seconds or an HTTP date', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 10_000);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:00 GMT', Date.parse('Wed, 21 Oct 2015 07:29:00 GMT')), 0);
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRetryAfter(undefined), undefined);
  });

  it('redacts secrets', () => {
    assert.equal(redact('user pw s3cret and s3cret', ['s3cret', undefined, '']), 'user pw *** and ***');
  });
});

describe('token flow (RegistryAuth)', () => {
  const ctx = { registry: 'r.example', repository: 'a/b' };
  const challenge = 'Bearer realm="https://auth.example/token",service="r.example",scope="repository:a/b:pull"';

  function fakeTokenServer(answers: (n: number) => { status: number; body: object | string }) {
    const calls: { url: URL; headers: Record<string, string> }[] = [];
    const fetch: TokenFetch = async (url, headers) => {
      calls.push({ url, headers });
      const a = answers(calls.length);
      return { status: a.status, body: Buffer.from(typeof a.body === 'string' ? a.body : JSON.stringify(a.body)) };
    };
    return { calls, fetch };
  }

  it('fetches a token for the challenged scopes, with Basic credentials, and caches it until it expires', async () => {
    let now = 1_000_000;
    const server = fakeTokenServer((n) => ({ status: 200, body: { token: `tok-${n}`, expires_in: 120 } }));
    const auth = new RegistryAuth('r.example', { username: 'u', password: 'pw' }, server.fetch, () => now);
    assert.equal(await auth.authorization(['repository:a/b:pull'], ctx), undefined, 'anonymous until challenged');
    await auth.challenge(challenge, ['repository:a/b:pull'], ctx);
    assert.equal(server.calls.length, 1);
    const { url, headers } = server.calls[0];
    assert.equal(url.origin + url.pathname, 'https://auth.example/token');
    assert.equal(url.searchParams.get('service'), 'r.example');
    assert.deepEqual(url.searchParams.getAll('scope'), ['repository:a/b:pull']);
    assert.equal(headers.authorization, basicAuthorization({ username: 'u', password: 'pw' }));
    assert.equal(await auth.authorization(['repository:a/b:pull'], ctx), 'Bearer tok-1');
    now += 100_000;
    assert.equal(await auth.authorization(['repository:a/b:pull'], ctx), 'Bearer tok-1', 'still valid');
    now += 15_000;
    const [x, y] = await Promise.all([
      auth.authorization(['repository:a/b:pull'], ctx),
      auth.authorization(['repository:a/b:pull'], ctx),
    ]);
    assert.equal(x, 'Bearer tok-2', 'renewed before it expires');
    assert.equal(y, 'Bearer tok-2');
    assert.equal(server.calls.length, 2, 'one renewal for concurrent requests');
    // Another scope is another token.
    assert.equal(await auth.authorization(['repository:c:pull'], ctx), 'Bearer tok-3');
  });

  it('accepts access_token and defaults the lifetime to 60 s', async () => {
    let now = 0;
    const server = fakeTokenServer(() => ({ status: 200, body: { access_token: 'oauth-tok' } }));
    const auth = new RegistryAuth('r.example', undefined, server.fetch, () => now);
    await auth.challenge(challenge, ['repository:a/b:pull'], ctx);
    assert.equal(server.calls[0].headers.authorization, undefined, 'anonymous token request');
    assert.equal(await auth.authorization(['repository:a/b:pull'], ctx), 'Bearer oauth-tok');
    now = 59_000;
    await auth.authorization(['repository:a/b:pull'], ctx);
    assert.equal(server.calls.length, 2);
  });

  it('fails clearly, without secrets, when the token server refuses or answers nonsense', async () => {
    const secrets = ['hunter2-pw', b64('u:hunter2-pw')];
    for (const [answer, why] of [
      [{ status: 401, body: { details: 'hunter2-pw' } }, /token server refused the credentials \(401\)/],
      [{ status: 500, body: 'hunter2-pw' }, /token server answered 500/],
      [{ status: 200, body: 'not json hunter2-pw' }, /not JSON/],
      [{ status: 200, body: { nothing: true } }, /without a token/],
    ] as const) {
      const auth = new RegistryAuth(
        'r.example',
        { username: 'u', password: 'hunter2-pw' },
        fakeTokenServer(() => answer).fetch,
      );
      const err = await rejectsWith(
        () => auth.challenge(challenge, ['repository:a/b:pull'], ctx),
        why,
        /registry "r\.example"/,
        /repository "a\/b"/,
        /realm "https:\/\/auth\.example\/token"/,
      );
      assertNoSecrets(err.message, secrets);
    }
  });

  it('refuses Basic challenges without credentials and unknown schemes', async () => {
    const auth = new RegistryAuth('r.example', undefined, fakeTokenServer(() => ({ status: 500, body: '' })).fetch);
    await rejectsWith(
      () => auth.challenge('Basic realm="x"', [], ctx),
      /requires authentication \(Basic\) and there are no credentials/,
    );
    await rejectsWith(() => auth.challenge('Negotiate', [], ctx), /unsupported challenge \(negotiate\)/);
    await rejectsWith(() => auth.challenge(undefined, [], ctx), /no WWW-Authenticate challenge/);
  });
});

describe('registries with authentication', { timeout: 180_000 }, () => {
  const clients: RegistryClient[] = [];
  const client = (host: string, opts: RegistryClientOptions = {}) => {
    const c = new RegistryClient(host, { plainHttp: true, retryBaseMs: 20, timeoutMs: 10_000, ...opts });
    clients.push(c);
    return c;
  };
  const savedDockerConfig = process.env.DOCKER_CONFIG;
  const savedLevel = log.level;

  before(() => {
    log.add(capture);
    log.level = 'debug';
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    if (savedDockerConfig === undefined) delete process.env.DOCKER_CONFIG;
    else process.env.DOCKER_CONFIG = savedDockerConfig;
  });
  after(() => {
    log.remove(capture);
    log.level = savedLevel;
  });

  async function pushAndPull(c: RegistryClient, repo: string): Promise<void> {
    const layer = randomBytes(3000);
    const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
    for (const b of [layer, config])
      assert.equal(await c.pushBlob(repo, sha256Digest(b), b.length, () => Readable.from([b])), 'uploaded');
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociManifest,
        config: { mediaType: MediaType.ociConfig, digest: sha256Digest(config), size: config.length },
        layers: [{ mediaType: MediaType.ociLayerGzip, digest: sha256Digest(layer), size: layer.length }],
      }),
    );
    const digest = await c.putManifest(repo, 'v1', manifest, MediaType.ociManifest);
    const got = await c.getManifest(repo, 'v1');
    assert.deepEqual(got.raw, manifest);
    assert.equal(got.digest, digest);
    assert.deepEqual(await readAll(await c.getBlob(repo, sha256Digest(layer), layer.length)), layer);
  }

  describe('Basic (htpasswd)', () => {
    const PASSWORD = 'correct-horse-7f3a';
    let reg: RegistryServer;
    let proxy: FaultProxy;
    let storage: http.Server;
    const storageAuthHeaders: (string | undefined)[] = [];

    before(async () => {
      reg = await startRegistry({ auth: 'htpasswd', users: { alice: PASSWORD } });
      proxy = await startFaultProxy(reg.host);
      // Blob storage a registry redirects to: another origin, which must not see the registry's credentials.
      storage = http.createServer((req, res) => {
        storageAuthHeaders.push(req.headers.authorization);
        const body = Buffer.from(
          decodeURIComponent(new URL(req.url ?? '/', 'http://x').searchParams.get('data') ?? ''),
          'base64',
        );
        res.writeHead(200, { 'content-length': String(body.length) }).end(body);
      });
      await new Promise<void>((resolve) => storage.listen(0, '127.0.0.1', resolve));
    });
    after(async () => {
      storage?.closeAllConnections();
      await new Promise((resolve) => storage?.close(resolve));
      await proxy?.stop();
      await reg?.stop();
    });

    it('pushes and pulls with credentials from $DOCKER_CONFIG/config.json', async (t) => {
      process.env.DOCKER_CONFIG = writeDockerConfig(tempDir(t), {
        [`http://${proxy.host}`]: { auth: b64(`alice:${PASSWORD}`) },
      });
      proxy.reset();
      await pushAndPull(client(proxy.host), 'basic/app');
      const first = proxy.requests[0];
      assert.equal(first.status, 401, 'the first request goes out anonymously');
      assert.ok(!first.authorized);
      assert.ok(
        proxy.requests.slice(1).every((r) => r.authorized && r.status !== 401),
        'then every request carries the credentials',
      );
    });

    it('also takes username/password entries keyed by bare host', async (t) => {
      process.env.DOCKER_CONFIG = writeDockerConfig(tempDir(t), {
        [proxy.host]: { username: 'alice', password: PASSWORD },
      });
      const c = client(proxy.host);
      assert.equal((await c.getManifest('basic/app', 'v1')).mediaType, MediaType.ociManifest);
    });

    it('fails a wrong password naming registry, repository and operation, not the password', async (t) => {
      const wrong = 'wrong-pw-91c2';
      process.env.DOCKER_CONFIG = writeDockerConfig(tempDir(t), { [proxy.host]: { auth: b64(`alice:${wrong}`) } });
      const c = client(proxy.host);
      const err = await rejectsWith(
        () => c.getManifest('basic/app', 'v1'),
        /get manifest: unauthorized \(401\) with credentials/,
        new RegExp(`registry "${proxy.host}"`),
        /repository "basic\/app"/,
        /reference "v1"/,
      );
      assertNoSecrets(err.message, [wrong, b64(`alice:${wrong}`), 'alice']);
      const d = sha256Digest(Buffer.from('x'));
      const pushErr = await rejectsWith(
        () => c.pushBlob('basic/app', d, 1, () => Readable.from([Buffer.from('x')])),
        /head blob: unauthorized \(401\)/,
        /digest "sha256:/,
      );
      assertNoSecrets(pushErr.message, [wrong, b64(`alice:${wrong}`)]);
    });

    it('says there are no credentials when the registry asks for them', async (t) => {
      process.env.DOCKER_CONFIG = tempDir(t);
      await rejectsWith(
        () => client(proxy.host).getManifest('basic/app', 'v1'),
        /requires authentication \(Basic\) and there are no credentials/,
        /repository "basic\/app"/,
      );
    });

    it('keeps credentials from storage it is redirected to', async () => {
      const c = client(proxy.host, { credentials: { username: 'alice', password: PASSWORD } });
      const b = randomBytes(999);
      const d = sha256Digest(b);
      await c.pushBlob('basic/redirect', d, b.length, () => Readable.from([b]));
      const { port } = storage.address() as AddressInfo;
      proxy.add({
        method: 'GET',
        path: /\/blobs\/sha256:/,
        fault: {
          kind: 'respond',
          respond: (_req, res) =>
            res
              .writeHead(307, {
                location: `http://127.0.0.1:${port}/blob?data=${encodeURIComponent(b.toString('base64'))}`,
              })
              .end(),
        },
      });
      storageAuthHeaders.length = 0;
      assert.deepEqual(await readAll(await c.getBlob('basic/redirect', d, b.length)), b);
      assert.deepEqual(storageAuthHeaders, [undefined]);
    });

    it('never logs the password or the Authorization value', () => {
      assert.ok(logged.length > 0, 'debug logging was on');
      assertNoSecrets(logged.join('\n'), [PASSWORD, b64(`alice:${PASSWORD}`), 'wrong-pw-91c2']);
    });
  });

  describe('Bearer (token server trusted by the registry)', () => {
    const PASSWORD = 'token-pw-5d1e';
    let tokens: TokenServer;
    let reg: RegistryServer;
    const creds = { username: 'bob', password: PASSWORD };

    before(async () => {
      tokens = await startTokenServer({ service: 'erofs-test-registry', users: { bob: PASSWORD } });
      reg = await startRegistry({
        auth: {
          token: {
            realm: tokens.realm,
            service: tokens.service,
            issuer: tokens.issuer,
            rootCertBundle: tokens.certFile,
          },
        },
      });
    });
    after(async () => {
      await reg?.stop();
      await tokens?.stop();
    });
    afterEach(() => {
      tokens.settings.expiresIn = undefined;
      tokens.settings.field = undefined;
      tokens.settings.requireLogin = undefined;
      tokens.settings.grantNothing = undefined;
    });

    it('pushes and pulls with tokens fetched with Basic credentials, one token per scope', async () => {
      tokens.requests.length = 0;
      const c = client(reg.host, { credentials: creds });
      await pushAndPull(c, 'bearer/app');
      assert.ok(tokens.requests.length >= 1);
      assert.ok(tokens.requests.every((r) => r.user === 'bob' && r.service === 'erofs-test-registry'));
      assert.deepEqual(tokens.requests[0].scopes, ['repository:bearer/app:pull,push']);
      const count = tokens.requests.length;
      await c.getManifest('bearer/app', 'v1');
      await c.headManifest('bearer/app', 'v1');
      assert.equal(tokens.requests.length, count, 'cached tokens are reused');
    });

    it('renews an expired token', async () => {
      tokens.settings.expiresIn = 1;
      const c = client(reg.host, { credentials: creds });
      tokens.requests.length = 0;
      await c.getManifest('bearer/app', 'v1');
      assert.equal(tokens.requests.length, 1);
      await c.getManifest('bearer/app', 'v1');
      assert.equal(tokens.requests.length, 1);
      await sleep(1100);
      await c.getManifest('bearer/app', 'v1');
      assert.equal(tokens.requests.length, 2);
    });

    it('accepts tokens in access_token', async () => {
      tokens.settings.field = 'access_token';
      assert.equal(
        (await client(reg.host, { credentials: creds }).getManifest('bearer/app', 'v1')).mediaType,
        MediaType.ociManifest,
      );
    });

    it('mounts across repositories with a token for both', async () => {
      const c = client(reg.host, { credentials: creds });
      const b = randomBytes(2048);
      const d = sha256Digest(b);
      assert.equal(await c.pushBlob('bearer/src', d, b.length, () => Readable.from([b])), 'uploaded');
      tokens.requests.length = 0;
      assert.equal(
        await c.pushBlob('bearer/dst', d, b.length, () => Readable.from([b]), { mountFrom: 'bearer/src' }),
        'mounted',
      );
      assert.ok(
        tokens.requests.some(
          (r) =>
            r.scopes.includes('repository:bearer/dst:pull,push') && r.scopes.includes('repository:bearer/src:pull'),
        ),
      );
    });

    it('gets anonymous tokens when there are no credentials, and says so when they are refused', async () => {
      tokens.requests.length = 0;
      assert.equal(
        (await client(reg.host, { credentials: null }).getManifest('bearer/app', 'v1')).mediaType,
        MediaType.ociManifest,
      );
      assert.equal(tokens.requests[0].user, undefined);
      tokens.settings.requireLogin = true;
      await rejectsWith(
        () => client(reg.host, { credentials: null }).getManifest('bearer/app', 'v1'),
        /token server refused an anonymous token \(401\); log in first/,
        /repository "bearer\/app"/,
      );
    });

    it('fails a wrong password without the password in the message', async () => {
      const wrong = 'not-the-token-pw';
      const err = await rejectsWith(
        () => client(reg.host, { credentials: { username: 'bob', password: wrong } }).getManifest('bearer/app', 'v1'),
        /token server refused the credentials \(401\)/,
        new RegExp(`registry "${reg.host}"`),
        /repository "bearer\/app"/,
        /reference "v1"/,
      );
      assertNoSecrets(err.message, [wrong, b64(`bob:${wrong}`)]);
    });

    it('fails when the registry refuses the token it asked for (a second 401)', async () => {
      tokens.settings.grantNothing = true;
      const d = sha256Digest(Buffer.from('q'));
      const c = client(reg.host, { credentials: creds });
      await rejectsWith(
        () => c.headBlob('bearer/app', d),
        /head blob: unauthorized \(401\) with credentials/,
        new RegExp(`registry "${reg.host}"`),
        /repository "bearer\/app"/,
        /digest "sha256:/,
      );
    });

    it('exchanges an identity token from a credential helper (username <token>) by OAuth2 POST', async (t) => {
      const REFRESH = 'refresh-7c1d9a';
      tokens.settings.refreshTokens = { [REFRESH]: 'bob' };
      t.after(() => (tokens.settings.refreshTokens = undefined));
      const dir = tempDir(t);
      fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ credHelpers: { [reg.host]: 'idtoken' } }));
      fs.writeFileSync(
        path.join(dir, 'docker-credential-idtoken'),
        `#!/bin/sh\nprintf '{"ServerURL":"%s","Username":"<token>","Secret":"${REFRESH}"}' "$(cat)"\n`,
        { mode: 0o755 },
      );
      const savedPath = process.env.PATH;
      process.env.DOCKER_CONFIG = dir;
      process.env.PATH = `${dir}:${savedPath}`;
      t.after(() => (process.env.PATH = savedPath));
      tokens.requests.length = 0;
      assert.equal((await client(reg.host).getManifest('bearer/app', 'v1')).mediaType, MediaType.ociManifest);
      assert.deepEqual(
        tokens.requests.map((r) => [r.grant, r.user, r.service]),
        [['refresh_token', 'bob', 'erofs-test-registry']],
      );
      assert.deepEqual(tokens.requests[0].scopes, ['repository:bearer/app:pull']);
      tokens.settings.refreshTokens = {};
      const err = await rejectsWith(
        () => client(reg.host).getManifest('bearer/app', 'v1'),
        /the token server refused the identity token \(401\)/,
        new RegExp(`registry "${reg.host}"`),
      );
      assertNoSecrets(err.message, [REFRESH]);
    });

    it('never logs the password or a token', () => {
      const text = logged.join('\n');
      assertNoSecrets(text, [PASSWORD, b64(`bob:${PASSWORD}`), 'refresh-7c1d9a']);
      // Tokens are JWTs: base64url JSON objects start with "eyJ".
      assert.doesNotMatch(text, /eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+\./);
    });
  });
});

describe('a lazy mount whose registry credentials come from a credential helper only', { timeout: 180_000 }, () => {
  const PASSWORD = 'helper-pw-3b8e';
  const img = smallImage();
  let reg: RegistryServer;
  let work: string;
  let lazy: string;
  const daemons: Daemon[] = [];
  const mounted: string[] = [];

  /** A docker config dir naming `config`, with `docker-credential-test` answering alice for the registry. */
  function helperEnv(name: string, config: object): NodeJS.ProcessEnv {
    const dir = path.join(work, name);
    const bin = path.join(dir, 'bin');
    fs.mkdirSync(bin, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    fs.writeFileSync(
      path.join(bin, 'docker-credential-test'),
      [
        '#!/bin/sh',
        'url=$(cat)',
        `echo "$url" >> '${path.join(dir, 'calls')}'`,
        `[ "$url" = '${reg.host}' ] || { echo "credentials not found in native keychain"; exit 1; }`,
        `printf '{"ServerURL":"%s","Username":"alice","Secret":"${PASSWORD}"}' "$url"`,
      ].join('\n') + '\n',
      { mode: 0o755 },
    );
    return { DOCKER_CONFIG: dir, PATH: `${bin}:${process.env.PATH}`, XDG_CACHE_HOME: work };
  }

  async function daemonWith(name: string, env: NodeJS.ProcessEnv): Promise<string> {
    const socket = path.join(work, `${name}.sock`);
    daemons.push(
      await startDaemon({
        cacheDir: path.join(work, `cache-${name}`),
        socket,
        flags: ['--transport', 'fanotify', '--metrics-address', ''],
        env,
      }),
    );
    return socket;
  }

  before(async () => {
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-auth-mount-'));
    reg = await startRegistry({ auth: 'htpasswd', users: { alice: PASSWORD } });
    const pusher = new RegistryClient(reg.host, {
      plainHttp: true,
      credentials: { username: 'alice', password: PASSWORD },
    });
    await pushSmallImage(pusher, 'app', '1', img);
    await pusher.close();
    lazy = `${reg.host}/lazy/app:1`;
    const convert = await runCliAsync(['convert', '-q', `${reg.host}/app:1`, lazy], {
      env: helperEnv('convert', { credHelpers: { [reg.host]: 'test' } }),
    });
    assert.equal(convert.status, 0, convert.stderr);
  });
  after(async () => {
    for (const mnt of mounted.reverse()) execFileSync('umount', ['-l', mnt]);
    for (const d of daemons) await d.stop();
    await reg?.stop();
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('mounts and reads every byte, the daemon asking the helper named by credsStore', async () => {
    const env = helperEnv('daemon', { auths: { [reg.host]: {} }, credsStore: 'test' });
    const socket = await daemonWith('ok', env);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    const r = await runCliAsync(['mount', '--socket', socket, lazy, mnt]);
    assert.equal(r.status, 0, r.stderr);
    mounted.push(mnt);
    assert.equal(fs.readFileSync(path.join(mnt, 'app', 'hello.txt'), 'utf8'), 'hello through a mirror\n');
    assert.deepEqual(
      fs.readFileSync(path.join(mnt, 'app', 'data.bin')),
      img.payload,
      'cache misses fetched with credentials',
    );
    const calls = fs.readFileSync(path.join(env.DOCKER_CONFIG!, 'calls'), 'utf8').split('\n').filter(Boolean);
    assert.ok(calls.length >= 1 && calls.every((c) => c === reg.host), calls.join(', '));
    assertNoSecrets(daemons[0].log, [PASSWORD, b64(`alice:${PASSWORD}`)]);
    const u = await runCliAsync(['umount', '--socket', socket, mnt]);
    assert.equal(u.status, 0, u.stderr);
    mounted.pop();
  });

  it('fails the mount naming the helper and the registry when the helper is not installed', async () => {
    const env = helperEnv('absent', { credHelpers: { [reg.host]: 'absent' } });
    const socket = await daemonWith('absent', env);
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    const r = await runCliAsync(['mount', '--socket', socket, lazy, mnt]);
    assert.notEqual(r.status, 0);
    assert.match(
      r.stderr,
      /credential helper docker-credential-absent \(credHelpers\[".*"\] in .*config\.json\) is not on PATH/,
    );
    assert.match(r.stderr, new RegExp(`registry "${reg.host}"`));
    const daemon = daemons[daemons.length - 1];
    assert.ok(daemon.running, 'the daemon carries on');
    const s = await runCliAsync(['status', '--json', '--socket', socket]);
    assert.equal(s.status, 0, s.stderr);
  });
});
