// The daemon as a systemd service: the unit file, the configuration file and its checks, readiness
// and stopping through sd_notify, reload on SIGHUP.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { until } from '../lib/assertions';
import { CLI, runCli } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const work = tempDir('service');
after(() => cleanup(work));

/** A NOTIFY_SOCKET listener (python3: Node has no unix datagram sockets) printing one line per message. */
function notifyListener(socket: string): { proc: ChildProcess; messages: string[]; ready: Promise<void> } {
  const proc = spawn('python3', [
    '-u',
    '-c',
    `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(${JSON.stringify(socket)})
print("LISTENING", flush=True)
while True:
    print(s.recv(4096).decode().replace("\\n", "|"), flush=True)
`,
  ]);
  const messages: string[] = [];
  let resolveReady: () => void;
  const ready = new Promise<void>((r) => (resolveReady = r));
  let buf = '';
  proc.stdout!.on('data', (d) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line === 'LISTENING') resolveReady();
      else messages.push(line);
    }
  });
  return { proc, messages, ready };
}

describe('systemd service', () => {
  it('ships a unit file that systemd-analyze accepts', () => {
    const r = spawnSync('systemd-analyze', ['verify', path.join(ROOT, 'systemd', 'erofs-ondemand.service')], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.match(fs.readFileSync(path.join(ROOT, 'systemd', 'erofs-ondemand.service'), 'utf8'), /^Type=notify$/m);
  });

  it('refuses a configuration with an unknown key or a wrong type, naming the file and key', () => {
    const file = path.join(work, 'bad.json');
    fs.writeFileSync(file, JSON.stringify({ cacheDir: work, prefetch: 'lots', cachedir: '/typo' }));
    const r = runCli(['daemon', '--config', file]);
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      new RegExp(`path "${file}": invalid configuration: .*unknown key "cachedir".*/prefetch: must be integer`),
    );
  });

  it('notifies READY and STOPPING, and reloads the log level on SIGHUP', async () => {
    const notifySocket = path.join(work, 'notify.sock');
    const listener = notifyListener(notifySocket);
    await listener.ready;
    const config = path.join(work, 'config.json');
    const control = path.join(work, 'control.sock');
    fs.writeFileSync(config, JSON.stringify({ cacheDir: path.join(work, 'cache'), socket: control, logLevel: 'info' }));
    const daemon = spawn(process.execPath, [CLI, 'daemon', '--config', config], {
      env: { ...process.env, NOTIFY_SOCKET: notifySocket },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    daemon.stderr!.on('data', (d) => (stderr += d));
    try {
      await until(
        () => listener.messages.some((m) => m.startsWith('READY=1')),
        `READY=1 sent (log: ${stderr})`,
        10_000,
      );
      assert.ok(fs.existsSync(control), 'the socket exists once READY is sent');
      fs.writeFileSync(
        config,
        JSON.stringify({ cacheDir: path.join(work, 'cache'), socket: control, logLevel: 'debug', prefetch: 3 }),
      );
      daemon.kill('SIGHUP');
      await until(() => /configuration reloaded/.test(stderr), 'reload logged', 10_000);
      assert.match(stderr, /"logLevel":"debug"/);
      assert.match(stderr, /"needsRestart":\["prefetch"\]/);
      const exited = new Promise<number | null>((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      assert.equal(await exited, 0);
      await until(() => listener.messages.includes('STOPPING=1'), 'STOPPING=1 sent', 10_000);
    } finally {
      if (daemon.exitCode === null) daemon.kill('SIGKILL');
      listener.proc.kill();
    }
  });
});
