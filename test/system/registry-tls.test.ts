// Registries with a private CA: Debian's docker-registry serving TLS on 127.0.0.1 with a certificate
// signed by a CA made here with openssl. Without the CA a pull fails saying so; with `ca` (upstream
// or mirror) or `insecure` it works.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HostClient } from '../../src/oci/host-client';
import { hostEndpoints, type RegistriesConfig } from '../../src/oci/hosts';
import { readAll } from '../../src/oci/image-io';
import { RegistryClient } from '../../src/oci/registry';
import { hostPlatform, type ImageManifest } from '../../src/oci/types';
import { rejectsWith } from '../lib/assertions';
import { cleanup, tempDir } from '../lib/image';
import { captureLogs } from '../lib/log-capture';
import { freePort, startRegistry, type RegistryServer } from '../lib/registry-server';
import { pushSmallImage, smallImage } from '../lib/small-image';
import { makeTestCerts, type TestCerts } from '../lib/tls-certs';
import { runCli } from '../lib/harness';

const NOT_TRUSTED =
  /the TLS certificate of https:\/\/127\.0\.0\.1:\d+ does not verify: .*certificate.* \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\); trust its CA with "ca" in the registries configuration, or skip verification with "insecure"/;

function quoted(s: string): RegExp {
  return new RegExp(JSON.stringify(s).replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
}

describe('registries behind a private CA', { timeout: 180_000 }, () => {
  const img = smallImage();
  const layer = (JSON.parse(img.manifest.toString()) as ImageManifest).layers[0];
  let work: string;
  let certs: TestCerts;
  let secure: RegistryServer;
  let plain: RegistryServer;
  const clients: HostClient[] = [];

  const client = (host: string, config: RegistriesConfig) => {
    const c = new HostClient(host, hostEndpoints(host, config), {
      retryBaseMs: 20,
      timeoutMs: 10_000,
      credentials: null,
    });
    clients.push(c);
    return c;
  };
  const pull = async (c: HostClient) => {
    assert.equal((await c.resolveManifest('app', 'v1', hostPlatform())).digest, img.digest);
    assert.deepEqual(await readAll(await c.getBlob('app', layer.digest, layer.size)), img.layer);
  };
  const cli = (...args: string[]) => runCli(args, { env: { EROFS_ONDEMAND_LOG_LEVEL: 'error' } });
  const writeConfig = (config: RegistriesConfig) => {
    const file = path.join(work, `registries-${Math.random().toString(36).slice(2)}.json`);
    fs.writeFileSync(file, JSON.stringify(config));
    return file;
  };

  before(async () => {
    work = tempDir('tls');
    certs = makeTestCerts(path.join(work, 'certs'));
    [secure, plain] = await Promise.all([
      startRegistry({ tls: { certificate: certs.certificate, key: certs.key } }),
      startRegistry(),
    ]);
    assert.match(secure.url, /^https:/);
    const seed = new RegistryClient(secure.host, { ca: fs.readFileSync(certs.ca, 'utf8'), credentials: null });
    const seedPlain = new RegistryClient(plain.host, { plainHttp: true, credentials: null });
    try {
      await pushSmallImage(seed, 'app', 'v1', img);
      await pushSmallImage(seedPlain, 'app', 'v1', img);
    } finally {
      await Promise.all([seed.close(), seedPlain.close()]);
    }
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([secure?.stop(), plain?.stop()]);
    cleanup(work);
  });

  it('without the CA a pull fails with an error about the certificate, naming the registry', async () => {
    const c = client(secure.host, { hosts: { [secure.host]: { plainHttp: false } } });
    await rejectsWith(() => c.getManifest('app', 'v1'), NOT_TRUSTED, quoted(secure.host), quoted('app'));
  });

  it('with the CA as `ca` of the host, TLS verifies and the pull works', async () => {
    await pull(client(secure.host, { hosts: { [secure.host]: { ca: certs.ca } } }));
  });

  it('with `insecure` (or the old insecure list) the certificate is not verified and the pull works', async () => {
    await pull(client(secure.host, { hosts: { [secure.host]: { insecure: true } } }));
    await pull(client(secure.host, { insecure: [secure.host] }));
  });

  it('a TLS mirror is trusted through its own `ca`; without it the mirror is passed over, the warning naming the certificate', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    await pull(client(dead, { hosts: { [dead]: { mirrors: [{ url: secure.url, ca: certs.ca }] } } }));
    // Without the mirror's CA: the upstream (plain HTTP, holding the image too) serves instead.
    const logs = captureLogs();
    try {
      await pull(client(plain.host, { hosts: { [plain.host]: { mirrors: [{ url: secure.url }] } } }));
      const warn = logs.records.find((r) => r.level === 'warn');
      assert.equal(warn?.endpoint, `${secure.url}/v2 (mirror)`);
      assert.match(String(warn?.error), NOT_TRUSTED);
    } finally {
      logs.stop();
    }
    const only = client(dead, { hosts: { [dead]: { mirrors: [{ url: secure.url }] } } });
    await rejectsWith(
      () => only.getManifest('app', 'v1'),
      /ECONNREFUSED/,
      /endpoints tried before: https:\/\/127\.0\.0\.1:\d+\/v2 \(mirror\): get manifest: the TLS certificate/,
    );
  });

  it('the CLI: convert and inspect trust the CA given in --registries-config; without it they exit 1 naming the certificate', () => {
    const trusted = writeConfig({ hosts: { [secure.host]: { ca: certs.ca } } });
    const untrusted = writeConfig({ hosts: { [secure.host]: { plainHttp: false } } });
    const converted = cli(
      'convert',
      '--json',
      '--registries-config',
      trusted,
      `${secure.host}/app:v1`,
      `${secure.host}/lazy/app:v1`,
    );
    assert.equal(converted.status, 0, converted.stderr);
    const inspected = cli('inspect', '--json', '--registries-config', trusted, `${secure.host}/app:v1`);
    assert.equal(inspected.status, 0, inspected.stderr);
    assert.equal(JSON.parse(inspected.stdout).inodes.file, 2);
    for (const args of [
      ['convert', '--registries-config', untrusted, `${secure.host}/app:v1`, `${secure.host}/lazy/other:v1`],
      ['inspect', '--registries-config', untrusted, `${secure.host}/lazy/app:v1`],
    ]) {
      const r = cli(...args);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, NOT_TRUSTED);
      assert.match(r.stderr, quoted(secure.host));
    }
  });
});
