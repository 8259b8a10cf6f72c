// The project logger, in a process of its own so that what it loads can be seen: records below the
// level are dropped without loading winston; the others are JSON lines on stderr with their fields.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

const LOG = path.resolve(__dirname, '..', '..', 'src', 'log.js');

function run(script: string, level?: string): { stderr: string; loaded: boolean } {
  const code = `const { log } = require(${JSON.stringify(LOG)}); ${script};
    process.stdout.write(String(Object.keys(require.cache).some((f) => f.includes('/node_modules/winston/'))));`;
  const env = { ...process.env };
  delete env.EROFS_ONDEMAND_LOG_LEVEL;
  if (level) env.EROFS_ONDEMAND_LOG_LEVEL = level;
  const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', env });
  assert.equal(r.status, 0, r.stderr);
  return { stderr: r.stderr, loaded: r.stdout === 'true' };
}

function records(stderr: string): Array<Record<string, unknown>> {
  return stderr
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}

describe('logger', () => {
  it('drops records below the level without loading winston', () => {
    const r = run("log.debug('hidden', { a: 1 }); log.info('hidden too')", 'warn');
    assert.equal(r.stderr, '');
    assert.equal(r.loaded, false);
  });

  it('writes records at or above the level as JSON lines with their fields', () => {
    const r = run("log.debug('hidden'); log.info('shown', { image: 'x:1' }); log.error('bad', { path: '/a' })");
    assert.equal(r.loaded, true);
    const recs = records(r.stderr);
    assert.deepEqual(
      recs.map((x) => [x.level, x.message, x.image ?? x.path]),
      [
        ['info', 'shown', 'x:1'],
        ['error', 'bad', '/a'],
      ],
    );
    assert.match(String(recs[0].timestamp), /^\d{4}-\d\d-\d\dT/);
  });

  it('applies a level set before and after winston is loaded', () => {
    const r = run(
      "log.level = 'debug'; log.debug('one'); log.level = 'error'; log.warn('dropped'); log.error('two')",
      'warn',
    );
    assert.deepEqual(
      records(r.stderr).map((x) => x.message),
      ['one', 'two'],
    );
  });

  it('chooses the level per record with log()', () => {
    const r = run("log.log('warn', 'w'); log.log('debug', 'd')", 'info');
    assert.deepEqual(
      records(r.stderr).map((x) => `${x.level}:${x.message}`),
      ['warn:w'],
    );
  });
});
