// Registry host configuration: which endpoints a host's requests go to, in what order, with what
// TLS; and configuration files whose mistakes are reported naming the key.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { loadConfig, loadRegistriesFile, registriesFromFlags } from '../../src/config';
import { InputError } from '../../src/errors';
import { hostEndpoints, type RegistriesConfig } from '../../src/oci/hosts';
import { cleanup, tempDir } from '../lib/image';
import { makeTestCerts } from '../lib/tls-certs';
import { runCli } from '../lib/harness';

const work = tempDir('registry-hosts');
after(() => cleanup(work));
const certs = makeTestCerts(path.join(work, 'certs'));

function summary(host: string, config: RegistriesConfig) {
  const { upstream, pull } = hostEndpoints(host, config);
  const show = (e: typeof upstream) => ({
    api: e.api,
    mirror: e.mirror,
    capabilities: [...e.capabilities].sort(),
    ca: e.ca,
    insecure: e.insecure,
    ns: e.namespace,
  });
  return { upstream: show(upstream), pull: pull.map(show) };
}

let files = 0;
function writeJson(doc: unknown): string {
  const file = path.join(work, `config-${files++}.json`);
  fs.writeFileSync(file, JSON.stringify(doc));
  return file;
}

function configError(doc: unknown): string {
  try {
    loadConfig(writeJson(doc), true);
  } catch (err) {
    assert.ok(err instanceof InputError, String(err));
    return err.message;
  }
  assert.fail('the configuration was accepted');
}

describe('registry host endpoints', () => {
  it('tries mirrors in order, then the upstream; mirrors get /v2 and learn the upstream as ns', () => {
    const s = summary('registry.example.com:5000', {
      hosts: {
        'registry.example.com:5000': {
          mirrors: [
            { url: 'http://127.0.0.1:5001' },
            { url: 'https://cache.example.com/prefix/', capabilities: ['pull'], ca: certs.ca },
            { url: 'https://p2p.local:65001/v2' },
          ],
        },
      },
    });
    assert.deepEqual(s.upstream, {
      api: 'https://registry.example.com:5000/v2',
      mirror: false,
      capabilities: ['pull', 'resolve'],
      ca: undefined,
      insecure: false,
      ns: undefined,
    });
    assert.deepEqual(
      s.pull.map((e) => [e.api, e.mirror, e.capabilities.join(','), e.ns]),
      [
        ['http://127.0.0.1:5001/v2', true, 'pull,resolve', 'registry.example.com:5000'],
        ['https://cache.example.com/prefix/v2', true, 'pull', 'registry.example.com:5000'],
        ['https://p2p.local:65001/v2', true, 'pull,resolve', 'registry.example.com:5000'],
        ['https://registry.example.com:5000/v2', false, 'pull,resolve', undefined],
      ],
    );
    assert.equal(s.pull[1].ca, certs.ca);
  });

  it('uses the url path as it is with overridePath', () => {
    const s = summary('r.example.com', {
      hosts: { 'r.example.com': { mirrors: [{ url: 'https://m.example.com/api/r', overridePath: true }] } },
    });
    assert.equal(s.pull[0].api, 'https://m.example.com/api/r');
  });

  it('uses the "*" entry for hosts without their own, and Docker Hub\'s aliases as one host', () => {
    const config: RegistriesConfig = {
      hosts: {
        '*': { mirrors: [{ url: 'http://127.0.0.1:6000' }] },
        'docker.io': { mirrors: [{ url: 'http://127.0.0.1:7000' }] },
      },
    };
    assert.deepEqual(
      summary('quay.io', config).pull.map((e) => e.api),
      ['http://127.0.0.1:6000/v2', 'https://quay.io/v2'],
    );
    const hub = summary('registry-1.docker.io', config);
    assert.deepEqual(
      hub.pull.map((e) => e.api),
      ['http://127.0.0.1:7000/v2', 'https://registry-1.docker.io/v2'],
    );
    assert.equal(hub.pull[0].ns, 'docker.io', 'Docker Hub is docker.io to mirrors, as containerd says it');
  });

  it('leaves the upstream out of pulls with fallbackToUpstream false, but keeps it for pushes', () => {
    const s = summary('r.example.com', {
      hosts: { 'r.example.com': { mirrors: [{ url: 'http://127.0.0.1:5001' }], fallbackToUpstream: false } },
    });
    assert.deepEqual(
      s.pull.map((e) => e.api),
      ['http://127.0.0.1:5001/v2'],
    );
    assert.equal(s.upstream.api, 'https://r.example.com/v2');
  });

  it('speaks plain HTTP to loopback hosts unless TLS is asked for; the old lists still work', () => {
    assert.equal(summary('127.0.0.1:5000', {}).upstream.api, 'http://127.0.0.1:5000/v2');
    assert.equal(summary('localhost:5000', {}).upstream.api, 'http://localhost:5000/v2');
    assert.deepEqual(summary('127.0.0.1:5000', { hosts: { '127.0.0.1:5000': { ca: certs.ca } } }).upstream, {
      api: 'https://127.0.0.1:5000/v2',
      mirror: false,
      capabilities: ['pull', 'resolve'],
      ca: certs.ca,
      insecure: false,
      ns: undefined,
    });
    assert.equal(
      summary('127.0.0.1:5000', { hosts: { '127.0.0.1:5000': { plainHttp: false } } }).upstream.api,
      'https://127.0.0.1:5000/v2',
    );
    const legacy = summary('127.0.0.1:5000', { insecure: ['127.0.0.1:5000'] }).upstream;
    assert.equal(legacy.api, 'https://127.0.0.1:5000/v2');
    assert.equal(legacy.insecure, true);
    assert.equal(summary('r.example.com', { plainHttp: ['r.example.com'] }).upstream.api, 'http://r.example.com/v2');
    assert.equal(summary('r.example.com', { hosts: { 'r.example.com': { insecure: true } } }).upstream.insecure, true);
  });
});

describe('registries configuration files', () => {
  it('accepts the example daemon configuration and a full registries object', () => {
    const example = loadConfig(path.resolve(__dirname, '..', '..', '..', 'systemd', 'config.example.json'), true);
    assert.ok(Object.keys(example.registries.hosts ?? {}).length > 0, 'the example shows a mirror');
    const c = loadConfig(
      writeJson({
        registries: {
          plainHttp: ['old.example.com'],
          hosts: {
            'registry.example.com:5000': {
              mirrors: [
                {
                  url: 'http://127.0.0.1:5001',
                  capabilities: ['pull', 'resolve'],
                  ca: certs.ca,
                  insecure: false,
                  overridePath: false,
                },
              ],
              ca: certs.ca,
              insecure: false,
              plainHttp: false,
              fallbackToUpstream: true,
            },
            '*': { mirrors: [{ url: 'https://cache.example.com' }] },
          },
        },
      }),
      true,
    );
    assert.equal(c.registries.hosts?.['registry.example.com:5000'].mirrors?.[0].url, 'http://127.0.0.1:5001');
    assert.deepEqual(c.registries.plainHttp, ['old.example.com']);
    assert.deepEqual(c.registries.insecure, [], 'defaults fill what the file leaves out');
  });

  it('names the key of each mistake', () => {
    const host = (entry: unknown) => ({ registries: { hosts: { 'registry.example.com:5000': entry } } });
    const at = '/registries/hosts/registry.example.com:5000';
    assert.match(
      configError(host({ mirrors: [{ uri: 'http://x' }] })),
      new RegExp(`${at}/mirrors/0: unknown key "uri"`),
    );
    assert.match(
      configError(host({ mirrors: [{ uri: 'http://x' }] })),
      new RegExp(`${at}/mirrors/0: missing key "url"`),
    );
    assert.match(
      configError(host({ mirrors: [{ url: 'http://x', capabilities: ['pull', 'push'] }] })),
      new RegExp(`${at}/mirrors/0/capabilities/1: must be one of "pull", "resolve"`),
    );
    assert.match(configError(host({ mirror: [] })), new RegExp(`${at}: unknown key "mirror"`));
    assert.match(configError(host({ insecure: 'yes' })), new RegExp(`${at}/insecure: must be boolean`));
    assert.match(
      configError(host({ mirrors: [{ url: 'ftp://x' }] })),
      new RegExp(`${at}/mirrors/0/url: "ftp://x" is not an http:// or https:// URL`),
    );
    assert.match(
      configError(host({ mirrors: [{ url: 'not a url' }] })),
      new RegExp(`${at}/mirrors/0/url: "not a url" is not a URL`),
    );
    const withCreds = configError(host({ mirrors: [{ url: 'http://user:s3cret@mirror:5000' }] }));
    assert.match(withCreds, new RegExp(`${at}/mirrors/0/url: .* holds credentials`));
    assert.match(
      configError(host({ ca: '/nonexistent/ca.pem' })),
      new RegExp(`${at}/ca: cannot read "/nonexistent/ca.pem": ENOENT`),
    );
    assert.match(
      configError(host({ mirrors: [{ url: 'https://m', ca: certs.key }] })),
      new RegExp(`${at}/mirrors/0/ca: ".*server.key" holds no PEM certificate`),
    );
    assert.match(
      configError(host({ fallbackToUpstream: false })),
      new RegExp(`${at}/fallbackToUpstream: false leaves no endpoint to pull from`),
    );
    assert.match(
      configError(host({ plainHttp: true, ca: certs.ca })),
      new RegExp(`${at}/plainHttp: plain HTTP has no TLS`),
    );
    assert.match(
      configError({ registries: { hosts: { 'not a host': {} } } }),
      /\/registries\/hosts\/not a host: "not a host" is not a registry host\[:port\]/,
    );
    assert.match(
      configError({ registries: { hosts: { 'docker.io': {}, 'registry-1.docker.io': {} } } }),
      /\/registries\/hosts\/registry-1.docker.io: the same registry as "docker.io"/,
    );
    assert.match(
      configError({ registries: { plainHttp: ['http://x'] } }),
      /\/registries\/plainHttp\/0: "http:\/\/x" is not a registry host/,
    );
    assert.match(configError({ registries: { mirrors: [] } }), /\/registries: unknown key "mirrors"/);
  });

  it("reads --registries-config files with keys named from the file's top, and adds the host flags", () => {
    const good = writeJson({
      hosts: { 'r.example.com': { mirrors: [{ url: 'http://127.0.0.1:5001' }] } },
      insecure: ['a.example.com'],
    });
    assert.deepEqual(
      registriesFromFlags({ registriesConfig: good, insecure: ['b.example.com'], plainHttp: ['c.example.com'] }),
      {
        hosts: { 'r.example.com': { mirrors: [{ url: 'http://127.0.0.1:5001' }] } },
        insecure: ['a.example.com', 'b.example.com'],
        plainHttp: ['c.example.com'],
      },
    );
    assert.throws(
      () =>
        loadRegistriesFile(
          writeJson({
            hosts: { 'r.example.com': { mirrors: [{ url: 'http://m', capabilities: ['resolve', 'write'] }] } },
          }),
        ),
      (err: Error) => {
        assert.match(
          err.message,
          /invalid registries configuration: \/hosts\/r.example.com\/mirrors\/0\/capabilities\/1: must be one of "pull", "resolve"/,
        );
        return true;
      },
    );
  });

  it('the CLI reports a bad --registries-config naming the file and the key, before any request', () => {
    const bad = writeJson({
      hosts: { 'r.example.com': { mirrors: [{ url: 'http://127.0.0.1:5001', overridepath: true }] } },
    });
    for (const args of [
      ['convert', '--registries-config', bad, 'r.example.com/app:1', `oci:${work}/out:1`],
      ['inspect', '--registries-config', bad, 'r.example.com/app:1'],
    ]) {
      const r = runCli(args);
      assert.equal(r.status, 1, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `path "${bad}": invalid registries configuration: /hosts/r.example.com/mirrors/0: unknown key "overridepath"`,
        ),
      );
    }
  });
});
