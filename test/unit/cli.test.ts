// The command line itself: version, how it answers a command it does not know, and how it reads
// arguments after an option.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { runCli } from '../lib/harness';

const run = (...args: string[]) => runCli(args);

describe('erofs-ondemand', () => {
  it('prints the version of its package with --version and -V', () => {
    const { version } = JSON.parse(
      fs.readFileSync(path.resolve(__dirname, '..', '..', '..', 'package.json'), 'utf8'),
    ) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = run(flag);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout, `${version}\n`);
    }
  });

  it('refuses an unknown command with exit 2 and its usage', () => {
    const r = run('frobnicate');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown command 'frobnicate'/);
    assert.match(r.stderr, /Usage: erofs-ondemand/);
  });

  it('takes the arguments after --plain-http HOST as arguments, not as more hosts', () => {
    const missing = path.join(os.tmpdir(), `erofs-ondemand-no-such-layout-${process.pid}`);
    const r = run('convert', '--plain-http', '127.0.0.1:5000', `oci:${missing}`, `oci:${missing}-out`);
    assert.equal(r.status, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /Usage:/);
    assert.match(r.stderr, new RegExp(`not an OCI image layout: .*${missing}/index\\.json`));
  });
});
