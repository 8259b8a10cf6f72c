// The control socket's requests: checked as flags are (type, range, absolute paths) before the
// daemon acts on them, bounded in size, and sent by the CLI with paths made absolute.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  callControl,
  MAX_REQUEST_BYTES,
  parseControlRequest,
  serveControl,
  type ControlRequest,
} from '../../src/daemon/control';
import { runCliAsync } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

const work = tempDir('control');
after(() => cleanup(work));

describe('control requests', () => {
  const refused: Array<[unknown, RegExp]> = [
    [{ op: 'gc', maxBytes: 'abc' }, /invalid gc request: \/maxBytes: must be integer/],
    [{ op: 'gc', maxBytes: -1 }, /invalid gc request: \/maxBytes: must be >= 0/],
    [{ op: 'gc', maxBytes: 1.5 }, /invalid gc request: \/maxBytes: must be integer/],
    [{ op: 'mount', ref: 'r', target: 'mnt' }, /invalid mount request: \/target: must be an absolute path/],
    [{ op: 'mount', target: '/mnt' }, /invalid mount request: \/: missing key "ref"/],
    [{ op: 'umount', target: 7 }, /invalid umount request: \/target: must be string/],
    [{ op: 'fsck', target: './mnt' }, /invalid fsck request: \/target: must be a mount point \(an absolute path\)/],
    [{ op: 'prefetch', target: '' }, /invalid prefetch request: \/target: must be a mount point/],
    [{ op: 'trace', target: '/mnt', action: 'drop' }, /invalid trace request: \/action: must be one of "show", "end"/],
    [{ op: 'status', all: true }, /invalid status request: \/: unknown key "all"/],
    [{ op: 'format' }, /unknown control request "format"/],
    [[], /unknown control request undefined/],
  ];
  for (const [req, message] of refused) {
    it(`refuses ${JSON.stringify(req)}, naming the field`, () =>
      assert.throws(() => parseControlRequest(JSON.stringify(req)), message));
  }

  it('refuses a line that is not JSON', () => assert.throws(() => parseControlRequest('{op'), /not JSON/));

  it('takes every request the CLI sends', () => {
    const sent: ControlRequest[] = [
      { op: 'mount', ref: 'localhost:5000/lazy/a:1', target: '/mnt/a' },
      { op: 'umount', target: '/mnt/a' },
      { op: 'status' },
      { op: 'fsck', target: '/mnt/a' },
      { op: 'fsck', target: 'localhost:5000/lazy/a:1' },
      { op: 'prefetch', target: '/mnt/a' },
      { op: 'gc' },
      { op: 'gc', maxBytes: 0 },
      { op: 'trace', target: '/mnt/a', action: 'end' },
      { op: 'trace-push', target: '/mnt/a' },
    ];
    for (const req of sent) assert.deepEqual(parseControlRequest(JSON.stringify(req)), req);
  });
});

describe('the control socket', () => {
  const socket = path.join(work, 'control.sock');
  const handled: ControlRequest[] = [];
  let server: net.Server;
  before(async () => {
    server = await serveControl(socket, async (req) => {
      handled.push(req);
      if (req.op === 'fsck') return { chunks: 0, bad: [] };
      if (req.op === 'prefetch') return { fetched: 0 };
      if (req.op === 'mount') return { digest: 'sha256:0' };
      if (req.op === 'trace') return { trace: {}, summary: {}, ended: null };
      return null;
    });
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('answers an invalid request with an error and never hands it to the daemon', async () => {
    handled.length = 0;
    await assert.rejects(
      callControl(socket, { op: 'gc', maxBytes: 'abc' } as unknown as ControlRequest),
      /maxBytes: must be integer/,
    );
    assert.deepEqual(handled, []);
  });

  it('refuses a request line longer than the bound and closes the connection without reading the rest', async () => {
    handled.length = 0;
    const total = 64 * 1024 * 1024;
    const { answer, sent } = await new Promise<{ answer: string; sent: number }>((resolve) => {
      const conn = net.createConnection(socket);
      let answer = '';
      let sent = 0;
      const piece = Buffer.alloc(1024 * 1024, 'a');
      const pump = (): void => {
        while (sent < total && !conn.destroyed) {
          sent += piece.length;
          if (!conn.write(piece)) return void conn.once('drain', pump);
        }
      };
      conn.on('connect', pump);
      conn.on('data', (d) => (answer += d));
      conn.on('error', () => undefined);
      conn.on('close', () => resolve({ answer, sent }));
    });
    assert.ok(sent < total, `the daemon read all ${total} bytes`);
    assert.ok(sent <= MAX_REQUEST_BYTES + 16 * 1024 * 1024, `sent ${sent}`);
    const res = JSON.parse(answer.split('\n')[0]) as { ok: boolean; error: string };
    assert.equal(res.ok, false);
    assert.match(res.error, new RegExp(`longer than ${MAX_REQUEST_BYTES} bytes`));
    assert.deepEqual(handled, []);
  });

  it('still answers after refusing a long line', async () => {
    assert.equal(await callControl(socket, { op: 'status' }), null);
  });

  it('gets the same absolute path from mount, fsck, prefetch and trace show given a relative one', async () => {
    fs.mkdirSync(path.join(work, 'mnt'));
    handled.length = 0;
    for (const args of [
      ['mount', 'some/image:1', 'mnt'],
      ['fsck', 'mnt'],
      ['prefetch', 'mnt'],
      ['prefetch', './mnt/'],
      ['trace', 'show', '--json', 'mnt'],
    ]) {
      const r = await runCliAsync([...args, '--socket', socket], { cwd: work });
      assert.equal(r.status, 0, r.stderr);
    }
    const expected = path.join(work, 'mnt');
    assert.deepEqual(
      handled.map((r) => ('target' in r ? r.target : undefined)),
      [expected, expected, expected, expected, expected],
    );
  });

  it('sends an argument that names no directory here as an image reference', async () => {
    handled.length = 0;
    const r = await runCliAsync(['fsck', 'localhost:5000/lazy/a:1', '--socket', socket], { cwd: work });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(handled, [{ op: 'fsck', target: 'localhost:5000/lazy/a:1' }]);
  });
});
