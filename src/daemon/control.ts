// The control socket: a root-only unix socket speaking one JSON object per line each way.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { log } from '../log';

export { DEFAULT_SOCKET } from '../defaults';

export type ControlRequest =
  | { op: 'mount'; ref: string; target: string }
  | { op: 'umount'; target: string }
  | { op: 'status' }
  | { op: 'fsck'; target: string }
  | { op: 'prefetch'; target: string }
  | { op: 'gc'; maxBytes?: number }
  /** The access trace of the mount at `target`: shown (recording or not), or its window closed. */
  | { op: 'trace'; target: string; action: 'show' | 'end' }
  /** Closes the mount's trace window and pushes the trace to the registry. */
  | { op: 'trace-push'; target: string };

export type ControlResponse = { ok: true; result?: unknown } | { ok: false; error: string };

export type ControlHandler = (req: ControlRequest) => Promise<unknown>;

export function serveControl(socketPath: string, handle: ControlHandler): Promise<net.Server> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
  fs.rmSync(socketPath, { force: true });
  const server = net.createServer((conn) => {
    let buf = '';
    conn.on('data', (d) => {
      buf += d.toString('utf8');
      for (let nl = buf.indexOf('\n'); nl !== -1; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        void answer(line).then((res) => conn.write(`${JSON.stringify(res)}\n`));
      }
    });
    conn.on('error', () => undefined);
  });
  const answer = async (line: string): Promise<ControlResponse> => {
    try {
      const req = JSON.parse(line) as ControlRequest;
      return { ok: true, result: await handle(req) };
    } catch (err) {
      log.warn('control request failed', { request: line.slice(0, 500), error: (err as Error).message });
      return { ok: false, error: (err as Error).message };
    }
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    // umask while binding so the socket is never, even briefly, open to others.
    const old = process.umask(0o177);
    server.listen(socketPath, () => {
      process.umask(old);
      fs.chmodSync(socketPath, 0o600);
      resolve(server);
    });
  });
}

export function callControl(socketPath: string, req: ControlRequest, timeoutMs = 600_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const conn = net.createConnection(socketPath);
    let buf = '';
    let settled = false;
    const settle = (fn: () => void): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.destroy();
      fn();
    };
    const timer = setTimeout(
      () => settle(() => reject(new Error(`no answer from the daemon at ${socketPath} within ${timeoutMs / 1000} s`))),
      timeoutMs,
    );
    conn.on('connect', () => conn.write(`${JSON.stringify(req)}\n`));
    conn.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl === -1) return;
      let res: ControlResponse;
      try {
        res = JSON.parse(buf.slice(0, nl)) as ControlResponse;
      } catch {
        settle(() =>
          reject(
            new Error(
              `the daemon at ${socketPath} answered with something that is not JSON: ${JSON.stringify(buf.slice(0, Math.min(nl, 200)))}`,
            ),
          ),
        );
        return;
      }
      settle(() => (res.ok ? resolve(res.result) : reject(new Error(res.error))));
    });
    conn.on('error', (err) =>
      settle(() => reject(new Error(`cannot reach the daemon at ${socketPath}: ${err.message}`))),
    );
    // A daemon that exits (or is killed) while it works on the request closes the connection unanswered.
    conn.on('close', () =>
      settle(() =>
        reject(
          new Error(`the daemon at ${socketPath} closed the connection before answering (did it stop? see its log)`),
        ),
      ),
    );
  });
}
