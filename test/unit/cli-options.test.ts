// How the command line parses its options, without running a command: each command's action is
// replaced by one that records what it was given.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Command } from 'commander';
import { program } from '../../src/cli/main';

/** Parses `args` with the named command's action replaced: what the action would have received. */
async function parsed(args: string[]): Promise<{ args: unknown[]; opts: Record<string, unknown> }> {
  const cli = program();
  const cmd = cli.commands.find((c) => c.name() === args[0]);
  assert.ok(cmd, `no command ${args[0]}`);
  let got: { args: unknown[]; opts: Record<string, unknown> } | undefined;
  cmd.action((...a: unknown[]) => {
    const opts = (a.at(-1) as Command).opts();
    got = { args: a.slice(0, -2), opts };
  });
  await cli.parseAsync(args, { from: 'user' });
  assert.ok(got, 'the action ran');
  return got;
}

describe('registry host options', () => {
  it('take one host each, so the arguments after them stay arguments', async () => {
    const r = await parsed(['convert', '--plain-http', '127.0.0.1:5000', 'oci:a', 'oci:b']);
    assert.deepEqual(r.args, ['oci:a', 'oci:b']);
    assert.deepEqual(r.opts.plainHttp, ['127.0.0.1:5000']);
  });

  for (const command of [['convert', 'oci:a', 'oci:b'], ['inspect', 'bootstrap.erofs'], ['daemon']]) {
    it(`are repeatable on ${command[0]}, each value collected in order`, async () => {
      const r = await parsed([
        command[0],
        '--plain-http',
        'a:5000',
        '--insecure',
        'c',
        '--plain-http',
        'b:5000',
        ...command.slice(1),
      ]);
      assert.deepEqual(r.args, command.slice(1));
      assert.deepEqual(r.opts.plainHttp, ['a:5000', 'b:5000']);
      assert.deepEqual(r.opts.insecure, ['c']);
    });
  }

  it("are absent when not given, so the daemon keeps its configuration file's lists", async () => {
    const r = await parsed(['daemon']);
    assert.equal(r.opts.plainHttp, undefined);
    assert.equal(r.opts.insecure, undefined);
  });
});
