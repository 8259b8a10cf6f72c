// The daemon's settings: command-line flags pass the configuration file's schema, so a value the
// file may not hold cannot come in by a flag either; errors name the flag and its value.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { effectiveConfig, type DaemonFlags } from '../../src/cli/daemon';
import { InputError } from '../../src/errors';
import { runCli } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

const work = tempDir('daemon-config');
after(() => cleanup(work));

let files = 0;
function configFile(doc: unknown): string {
  const file = path.join(work, `config-${files++}.json`);
  fs.writeFileSync(file, JSON.stringify(doc));
  return file;
}

function refusal(flags: Partial<DaemonFlags>, file: unknown = {}): string {
  try {
    effectiveConfig({ config: configFile(file), ...flags }, true);
  } catch (err) {
    assert.ok(err instanceof InputError, String(err));
    return err.message;
  }
  assert.fail(`accepted ${JSON.stringify(flags)}`);
}

describe('daemon flags', () => {
  const refused: Array<[Partial<DaemonFlags>, RegExp]> = [
    [{ concurrency: '0' }, /--concurrency "0": must be >= 1/],
    [{ concurrency: 'abc' }, /--concurrency "abc": must be integer/],
    [{ concurrency: '1.5' }, /--concurrency "1.5": must be integer/],
    [{ prefetch: '-3' }, /--prefetch "-3": must be >= 0/],
    [{ readTimeout: '-1' }, /--read-timeout "-1": must be >= 0/],
    [{ readTimeout: '3000000' }, /--read-timeout "3000000": must be <= /],
    [{ readAhead: 'lots' }, /--read-ahead: cannot parse size "lots"/],
    [{ readAhead: '2G' }, /--read-ahead "2G": must be <= /],
    [{ cacheMaxBytes: '-1' }, /--cache-max-bytes: cannot parse size "-1"/],
    [{ metricsAddress: 'localhost' }, /--metrics-address "localhost": must be host:port/],
    [{ cacheDir: '' }, /--cache-dir "": must NOT have fewer than 1 characters/],
    [{ socket: '' }, /--socket "": must NOT have fewer than 1 characters/],
    [{ plainHttp: ['a/b'] }, /\/registries\/plainHttp\/0: "a\/b" is not a registry host/],
    [{ fdKeeper: 'docker' }, /--fd-keeper "docker": must be one of "auto", "holder", "systemd", "none"/],
  ];
  for (const [flags, message] of refused) {
    it(`refuses ${JSON.stringify(flags)}, naming the flag`, () => assert.match(refusal(flags), message));
  }

  it('override the file; what no flag gives stays as the file has it', () => {
    const c = effectiveConfig(
      {
        config: configFile({
          prefetch: 2,
          fetch: { concurrency: 4, readTimeoutSeconds: 30 },
          metrics: { address: '' },
        }),
        concurrency: '16',
        readAhead: '1M',
      },
      true,
    );
    assert.equal(c.prefetch, 2);
    assert.deepEqual(c.fetch, { concurrency: 16, readTimeoutSeconds: 30, readAheadKiB: 1024 });
    assert.equal(c.metrics.address, '');
  });

  it("--registries-config replaces the file's registries, --plain-http its list", () => {
    const registries = configFile({ insecure: ['b.example.com'] });
    const c = effectiveConfig(
      {
        config: configFile({ registries: { hosts: { '*': { mirrors: [{ url: 'http://127.0.0.1:5001' }] } } } }),
        registriesConfig: registries,
        plainHttp: ['a.example.com'],
      },
      true,
    );
    assert.deepEqual(c.registries, { plainHttp: ['a.example.com'], insecure: ['b.example.com'], hosts: {} });
  });

  it('a refused flag stops `daemon` before it touches anything: exit 1, the flag named, no cache directory', () => {
    const cacheDir = path.join(work, 'cache');
    const r = runCli(
      [
        'daemon',
        '--config',
        configFile({}),
        '--cache-dir',
        cacheDir,
        '--socket',
        path.join(work, 'daemon.sock'),
        '--concurrency',
        '0',
      ],
      { timeout: 20_000 },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /--concurrency "0": must be >= 1/);
    assert.equal(fs.existsSync(cacheDir), false);
    assert.equal(fs.existsSync(path.join(work, 'daemon.sock')), false);
  });
});
