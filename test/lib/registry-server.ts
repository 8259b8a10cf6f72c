// A real registry for tests: Debian's docker-registry (distribution 2.8) on 127.0.0.1, storing in a
// temp dir, optionally behind htpasswd (Basic) or token (Bearer) authentication, optionally on TLS.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export interface TokenAuthConfig {
  realm: string;
  service: string;
  issuer: string;
  rootCertBundle: string;
}

export interface StartRegistryOptions {
  auth?: 'htpasswd' | { token: TokenAuthConfig };
  /** htpasswd users (default { user: 'pass' }). */
  users?: Record<string, string>;
  /** Location headers relative to the request (distribution's http.relativeurls). */
  relativeUrls?: boolean;
  /** Serve HTTPS with this certificate and key (PEM files). */
  tls?: { certificate: string; key: string };
}

export interface RegistryServer {
  /** `127.0.0.1:port` */
  host: string;
  /** `http://` or, with TLS, `https://` and the host. */
  url: string;
  dir: string;
  /** The docker-registry process (benchmarks read its CPU time from /proc). */
  pid: number;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function yamlString(s: string): string {
  return JSON.stringify(s);
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RegistryServer> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'erofs-registry-'));
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const lines = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${yamlString(path.join(dir, 'data'))}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: ${host}`,
    `  relativeurls: ${opts.relativeUrls ? 'true' : 'false'}`,
  ];
  if (opts.tls)
    lines.push(
      '  tls:',
      `    certificate: ${yamlString(opts.tls.certificate)}`,
      `    key: ${yamlString(opts.tls.key)}`,
    );
  if (opts.auth === 'htpasswd') {
    const file = path.join(dir, 'htpasswd');
    const users = opts.users ?? { user: 'pass' };
    fs.writeFileSync(
      file,
      Object.entries(users)
        .map(([u, p]) => execFileSync('htpasswd', ['-Bbn', u, p], { encoding: 'utf8' }).trim())
        .join('\n') + '\n',
    );
    lines.push('auth:', '  htpasswd:', '    realm: test-realm', `    path: ${yamlString(file)}`);
  } else if (opts.auth) {
    const t = opts.auth.token;
    lines.push(
      'auth:',
      '  token:',
      `    realm: ${yamlString(t.realm)}`,
      `    service: ${yamlString(t.service)}`,
      `    issuer: ${yamlString(t.issuer)}`,
      `    rootcertbundle: ${yamlString(t.rootCertBundle)}`,
    );
  }
  const config = path.join(dir, 'config.yml');
  fs.writeFileSync(config, lines.join('\n') + '\n');

  let output = '';
  const child: ChildProcess = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-8000)));
  child.stderr!.on('data', (b: Buffer) => (output = (output + b.toString()).slice(-8000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`docker-registry exited with ${child.exitCode} before answering:\n${output}`);
    }
    try {
      const status = opts.tls
        ? await httpsStatus(`https://${host}/v2/`)
        : await fetch(`http://${host}/v2/`, { signal: AbortSignal.timeout(1000) }).then(
            async (r) => (await r.arrayBuffer(), r.status),
          );
      if (status === 200 || status === 401) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`docker-registry did not answer GET /v2/ within 15 s:\n${output}`);
    }
    await sleep(50);
  }
  return { host, url: `${opts.tls ? 'https' : 'http'}://${host}`, dir, pid: child.pid!, stop };
}

/** Bytes the registry stores: its blob files (each digest once, whichever repositories list it). */
export function storedBytes(registry: RegistryServer): number {
  const root = path.join(registry.dir, 'data', 'docker', 'registry', 'v2', 'blobs');
  if (!fs.existsSync(root)) return 0;
  let total = 0;
  for (const entry of fs.readdirSync(root, { recursive: true, withFileTypes: true }))
    if (entry.isFile() && entry.name === 'data') total += fs.statSync(path.join(entry.parentPath, entry.name)).size;
  return total;
}

/** The status of a GET over TLS, the certificate not verified: is the server up yet? */
function httpsStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { rejectUnauthorized: false, timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}
