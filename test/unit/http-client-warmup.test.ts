// The daemon's warm-up of its HTTP client at start: one request to a throwaway loopback server, which
// must leave nothing behind that keeps a process alive (a listening socket, a kept-alive connection).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { it } from 'node:test';

it('makes its request and leaves nothing open: the process exits on its own', () => {
  const module = path.resolve(__dirname, '../../src/oci/http-client');
  const script = `require(${JSON.stringify(module)}).preloadHttpClient().then(() => process.stdout.write('warmed'))`;
  // A handle left open would keep the child alive until the timeout kills it (and execFileSync throws).
  const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(out, 'warmed');
});
