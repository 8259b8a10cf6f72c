// Credentials from docker's config.json: `auths` entries, credential helpers (docker-credential-*
// programs, here small shell scripts on PATH) and which of them wins, and RegistryAuth looking them
// up only when a registry asks. Secrets never reach messages.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { InputError } from '../../src/errors';
import { CREDENTIALS_REUSE_MS, RegistryAuth, type TokenFetch } from '../../src/oci/auth';
import {
  DOCKER_HUB_SERVER,
  lookupDockerCredentials,
  MAX_HELPER_OUTPUT,
  runCredentialHelper,
  type Credentials,
} from '../../src/oci/docker-credentials';
import { rejectsWith } from '../lib/assertions';

function tempDir(t: { after(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-creds-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function writeConfig(dir: string, config: object): string {
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

function writeDockerConfig(dir: string, auths: Record<string, object>): string {
  return writeConfig(dir, { auths });
}

function b64(s: string): string {
  return Buffer.from(s).toString('base64');
}

function assertNoSecrets(text: string, secrets: string[]): void {
  for (const s of secrets) assert.ok(!text.includes(s), `a secret appears in: ${text}`);
}

/**
 * A `docker-credential-<name>` shell script in `dir/bin`: `body` runs with the server URL the
 * program was given in $url; every run appends that URL to `dir/<name>.calls`.
 */
function helper(dir: string, name: string, body: string): void {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin, { recursive: true });
  const script = path.join(bin, `docker-credential-${name}`);
  const calls = path.join(dir, `${name}.calls`);
  fs.writeFileSync(
    script,
    `#!/bin/sh\n[ "$1" = get ] || { echo "unexpected arguments: $*"; exit 3; }\nurl=$(cat)\necho "$url" >> '${calls}'\n${body}\n`,
    { mode: 0o755 },
  );
}

function calls(dir: string, name: string): string[] {
  try {
    return fs
      .readFileSync(path.join(dir, `${name}.calls`), 'utf8')
      .split('\n')
      .filter(Boolean);
  } catch {
    return [];
  }
}

/** The environment a lookup in `dir` sees: its config, and its helpers first on PATH. */
function envOf(dir: string): NodeJS.ProcessEnv {
  return { DOCKER_CONFIG: dir, PATH: `${path.join(dir, 'bin')}:${process.env.PATH}` };
}

/** The protocol's answer; `user` and `secret` may use $url. */
const answer = (user: string, secret: string) =>
  `printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "$url" "${user}" "${secret}"`;

describe('docker config auths', () => {
  it('reads auth (base64 user:pass, a ":" in the password), with or without a scheme in the key', async (t) => {
    const dir = writeDockerConfig(tempDir(t), {
      'https://reg.example:5000': { auth: b64('alice:pa:ss') },
      'http://other.example/v2/': { username: 'bob', password: 'pw' },
      'plain.example': { auth: b64('carol:x') },
    });
    const env = { DOCKER_CONFIG: dir };
    assert.deepEqual(await lookupDockerCredentials('reg.example:5000', { env }), {
      username: 'alice',
      password: 'pa:ss',
    });
    assert.deepEqual(await lookupDockerCredentials('other.example', { env }), { username: 'bob', password: 'pw' });
    assert.deepEqual(await lookupDockerCredentials('PLAIN.example', { env }), { username: 'carol', password: 'x' });
    assert.equal(await lookupDockerCredentials('reg.example', { env }), undefined, 'the port is part of the host');
    assert.equal(await lookupDockerCredentials('nowhere.example', { env }), undefined);
  });

  it("matches Docker Hub's aliases, preferring the exact host", async (t) => {
    const dir = writeDockerConfig(tempDir(t), { [DOCKER_HUB_SERVER]: { auth: b64('hub:one') } });
    const env = { DOCKER_CONFIG: dir };
    assert.deepEqual(await lookupDockerCredentials('registry-1.docker.io', { env }), {
      username: 'hub',
      password: 'one',
    });
    writeDockerConfig(dir, {
      [DOCKER_HUB_SERVER]: { auth: b64('hub:one') },
      'registry-1.docker.io': { auth: b64('hub:two') },
    });
    assert.deepEqual(await lookupDockerCredentials('registry-1.docker.io', { env }), {
      username: 'hub',
      password: 'two',
    });
  });

  it('reads an identity token', async (t) => {
    const dir = writeDockerConfig(tempDir(t), { 'id.example': { identitytoken: 'refresh-xyz' } });
    assert.deepEqual(await lookupDockerCredentials('id.example', { env: { DOCKER_CONFIG: dir } }), {
      username: '',
      password: '',
      identityToken: 'refresh-xyz',
    });
  });

  it('falls back to ~/.docker/config.json and to nothing', async (t) => {
    const home = tempDir(t);
    assert.equal(await lookupDockerCredentials('h.example', { env: { HOME: home } }), undefined);
    fs.mkdirSync(path.join(home, '.docker'));
    writeDockerConfig(path.join(home, '.docker'), { 'h.example': { auth: b64('u:p') } });
    assert.deepEqual(await lookupDockerCredentials('h.example', { env: { HOME: home } }), {
      username: 'u',
      password: 'p',
    });
  });

  it('reports a broken config without quoting it', async (t) => {
    const dir = tempDir(t);
    const env = { DOCKER_CONFIG: dir };
    fs.writeFileSync(path.join(dir, 'config.json'), '{"auths": {"h": {"auth": "c2VjcmV0LXBhc3N3b3Jk"');
    const err = await rejectsWith(() => lookupDockerCredentials('h', { env }), /docker config is not valid JSON/);
    assert.match(err.message, /config\.json/);
    assertNoSecrets(err.message, ['c2VjcmV0LXBhc3N3b3Jk']);
    writeDockerConfig(dir, { h: { auth: b64('no-colon') } });
    await rejectsWith(() => lookupDockerCredentials('h', { env }), /not base64 of user:password/);
    fs.writeFileSync(path.join(dir, 'config.json'), '["x"]');
    await rejectsWith(() => lookupDockerCredentials('h', { env }), /docker config is not a JSON object/);
  });
});

describe('credential helpers', () => {
  it('runs credsStore with the server URL on stdin, and Docker Hub under its index URL', async (t) => {
    const dir = writeConfig(tempDir(t), { credsStore: 'xyz' });
    helper(dir, 'xyz', answer('user-$url', 'secret-$url'));
    const env = envOf(dir);
    assert.deepEqual(await lookupDockerCredentials('reg.example:5000', { env }), {
      username: 'user-reg.example:5000',
      password: 'secret-reg.example:5000',
    });
    assert.deepEqual(await lookupDockerCredentials('registry-1.docker.io', { env }), {
      username: `user-${DOCKER_HUB_SERVER}`,
      password: `secret-${DOCKER_HUB_SERVER}`,
    });
    assert.deepEqual(calls(dir, 'xyz'), ['reg.example:5000', DOCKER_HUB_SERVER]);
  });

  it('prefers credHelpers[host] to credsStore, and either to auths, whose secrets a helper overrides', async (t) => {
    const dir = writeConfig(tempDir(t), {
      auths: {
        'ecr.example': { auth: b64('file:ecr') },
        'store.example': { auth: b64('file:store') },
        'file.example': { auth: b64('file:file') },
      },
      credsStore: 'store',
      credHelpers: { 'ecr.example': 'ecr', 'https://gcr.example': 'gcr', 'empty.example': '' },
    });
    helper(dir, 'ecr', answer('AWS', 'ecr-pw'));
    helper(dir, 'gcr', answer('oauth2accesstoken', 'gcr-pw'));
    helper(
      dir,
      'store',
      'case "$url" in store.example|empty.example) ;; *) echo "credentials not found in native keychain"; exit 1;; esac\n' +
        answer('s', 'store-pw'),
    );
    const env = envOf(dir);
    const get = (host: string) => lookupDockerCredentials(host, { env });
    assert.deepEqual(await get('ecr.example'), { username: 'AWS', password: 'ecr-pw' });
    assert.deepEqual(await get('gcr.example'), { username: 'oauth2accesstoken', password: 'gcr-pw' });
    assert.deepEqual(await get('store.example'), { username: 's', password: 'store-pw' });
    assert.deepEqual(
      await get('empty.example'),
      { username: 's', password: 'store-pw' },
      'an empty entry names no helper',
    );
    // docker/cli: with a helper configured, its answer is final; "not found" is no credentials at all.
    assert.equal(await get('file.example'), undefined);
    assert.deepEqual(calls(dir, 'ecr'), ['ecr.example']);
    assert.deepEqual(calls(dir, 'gcr'), ['gcr.example']);
    assert.deepEqual(calls(dir, 'store'), ['store.example', 'empty.example', 'file.example']);
  });

  it('takes the <token> username as an identity token, and an empty secret as no credentials', async (t) => {
    const dir = writeConfig(tempDir(t), { credsStore: 'xyz' });
    helper(
      dir,
      'xyz',
      'case "$url" in tok.example) ' + answer('<token>', 'refresh-1') + ';; *) ' + answer('', '') + ';; esac',
    );
    const env = envOf(dir);
    assert.deepEqual(await lookupDockerCredentials('tok.example', { env }), {
      username: '',
      password: '',
      identityToken: 'refresh-1',
    });
    assert.equal(await lookupDockerCredentials('none.example', { env }), undefined);
  });

  it('names the helper, the registry and the config when the helper is not on PATH', async (t) => {
    const dir = writeConfig(tempDir(t), { credHelpers: { 'reg.example': 'absent' } });
    const err = await rejectsWith(
      () => lookupDockerCredentials('reg.example', { env: envOf(dir) }),
      /credential helper docker-credential-absent \(credHelpers\["reg\.example"\] in .*config\.json\) is not on PATH/,
      /registry "reg\.example"/,
    );
    assert.ok(err instanceof InputError);
    writeConfig(dir, { credsStore: '../../bin/sh' });
    await rejectsWith(
      () => lookupDockerCredentials('reg.example', { env: envOf(dir) }),
      /credsStore in .* names "\.\.\/\.\.\/bin\/sh", which is not a helper name/,
    );
  });

  it('reports a failing, hanging, talkative or confused helper without its secrets', async (t) => {
    const dir = tempDir(t);
    const env = envOf(dir);
    const run = (name: string, timeoutMs?: number) =>
      runCredentialHelper(name, 'reg.example', { env, host: 'reg.example', origin: 'credsStore', timeoutMs });
    helper(dir, 'fails', 'echo "error getting credentials: keychain locked"; exit 1');
    helper(dir, 'quiet', 'echo "no D-Bus session" >&2; exit 4');
    helper(dir, 'hangs', 'trap "" TERM; exec sleep 30'); // deaf to SIGTERM
    helper(dir, 'talks', `head -c ${MAX_HELPER_OUTPUT + 1} /dev/zero | tr '\\0' x`);
    helper(dir, 'garbled', 'echo "{\\"Secret\\": hunter2-secret"');
    helper(dir, 'numeric', 'echo \'{"Username":"u","Secret":7}\'');
    await rejectsWith(
      () => run('fails'),
      /credential helper docker-credential-fails failed \(exit 1\): error getting credentials: keychain locked/,
      /registry "reg\.example"/,
      /helper "docker-credential-fails"/,
    );
    await rejectsWith(() => run('quiet'), /docker-credential-quiet failed \(exit 4\): no D-Bus session/);
    const started = Date.now();
    await rejectsWith(() => run('hangs', 300), /docker-credential-hangs did not answer within 0\.3 s/);
    assert.ok(Date.now() - started < 10_000, 'the helper was killed at its timeout');
    await rejectsWith(
      () => run('talks'),
      new RegExp(`docker-credential-talks wrote more than ${MAX_HELPER_OUTPUT} bytes`),
    );
    const garbled = await rejectsWith(
      () => run('garbled'),
      /docker-credential-garbled answered with something that is not JSON/,
    );
    assertNoSecrets(garbled.message, ['hunter2-secret']);
    await rejectsWith(() => run('numeric'), /"Secret" that is not a string/);
  });
});

describe('RegistryAuth looking credentials up', () => {
  const ctx = { registry: 'r.example', repository: 'a/b' };
  const bearer = 'Bearer realm="https://auth.example/token",service="r.example",scope="repository:a/b:pull"';

  function tokenServer() {
    const requests: { url: URL; headers: Record<string, string>; form?: string }[] = [];
    const fetch: TokenFetch = async (url, headers, form) => {
      requests.push({ url, headers, form });
      return { status: 200, body: Buffer.from(JSON.stringify({ token: `tok-${requests.length}`, expires_in: 3600 })) };
    };
    return { requests, fetch };
  }

  function counted(results: (() => Credentials | undefined)[]) {
    let n = 0;
    const lookup = async () => {
      const i = Math.min(n++, results.length - 1);
      await new Promise((r) => setTimeout(r, 5));
      return results[i]();
    };
    return { lookup, count: () => n };
  }

  it('looks up nothing until challenged, then once for concurrent requests, and again after a while', async () => {
    let now = 0;
    const { lookup, count } = counted([
      () => ({ username: 'u', password: 'one' }),
      () => ({ username: 'u', password: 'two' }),
    ]);
    const auth = new RegistryAuth('r.example', lookup, tokenServer().fetch, () => now);
    assert.equal(await auth.authorization([], ctx), undefined);
    assert.equal(count(), 0, 'an anonymous registry never runs a helper');
    await Promise.all([1, 2, 3].map(() => auth.challenge('Basic realm="r"', [], ctx)));
    assert.equal(count(), 1);
    assert.equal(await auth.authorization([], ctx), `Basic ${b64('u:one')}`);
    now += CREDENTIALS_REUSE_MS + 1;
    assert.equal(await auth.authorization([], ctx), `Basic ${b64('u:two')}`);
    assert.equal(count(), 2);
    assert.equal(auth.redact(`x one two ${b64('u:two')}`), 'x *** *** ***');
  });

  it('keeps credentials that worked when looking them up again fails', async () => {
    let now = 0;
    const { lookup, count } = counted([
      () => ({ username: 'u', password: 'one' }),
      () => {
        throw new InputError('credential helper docker-credential-x failed (exit 1)', { registry: 'r.example' });
      },
    ]);
    const auth = new RegistryAuth('r.example', lookup, tokenServer().fetch, () => now);
    await auth.challenge('Basic realm="r"', [], ctx);
    now += CREDENTIALS_REUSE_MS + 1;
    assert.equal(await auth.authorization([], ctx), `Basic ${b64('u:one')}`);
    assert.equal(await auth.authorization([], ctx), `Basic ${b64('u:one')}`);
    assert.equal(count(), 2, 'asked again only after another reuse period');
  });

  it('fails a challenge with the helper error and the request context', async () => {
    const auth = new RegistryAuth(
      'r.example',
      async () => {
        throw new InputError('credential helper docker-credential-x is not on PATH', { registry: 'r.example' });
      },
      tokenServer().fetch,
    );
    await rejectsWith(
      () => auth.challenge(bearer, ['repository:a/b:pull'], ctx),
      /docker-credential-x is not on PATH/,
      /repository "a\/b"/,
    );
  });

  it('exchanges an identity token with an OAuth2 refresh-token POST, never as Basic', async () => {
    const server = tokenServer();
    const auth = new RegistryAuth(
      'r.example',
      async () => ({ username: '', password: '', identityToken: 'refresh-abc' }),
      server.fetch,
    );
    await auth.challenge(bearer, ['repository:a/b:pull'], ctx);
    const [req] = server.requests;
    assert.equal(req.url.toString(), 'https://auth.example/token');
    assert.equal(req.headers.authorization, undefined);
    assert.equal(req.headers['content-type'], 'application/x-www-form-urlencoded');
    const form = new URLSearchParams(req.form);
    assert.equal(form.get('grant_type'), 'refresh_token');
    assert.equal(form.get('refresh_token'), 'refresh-abc');
    assert.equal(form.get('service'), 'r.example');
    assert.equal(form.get('scope'), 'repository:a/b:pull');
    assert.ok(form.get('client_id'));
    assert.equal(await auth.authorization(['repository:a/b:pull'], ctx), 'Bearer tok-1');
    assert.equal(auth.redact('refresh-abc'), '***');
    const basic = new RegistryAuth(
      'r.example',
      async () => ({ username: '', password: '', identityToken: 't' }),
      server.fetch,
    );
    await rejectsWith(() => basic.challenge('Basic realm="r"', [], ctx), /holds only an identity token/);
  });
});
