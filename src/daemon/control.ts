// The control socket: a root-only unix socket speaking one JSON object per line each way.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { schemaChecker } from '../config';
import { InputError } from '../errors';
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

/** Requests are a few names and paths: a longer line is refused and its connection closed. */
export const MAX_REQUEST_BYTES = 64 * 1024;

/** Paths the daemon acts on are absolute: a relative one would mean the daemon's working directory. */
const absolutePath = { type: 'string', maxLength: 4096, pattern: '^/', description: 'an absolute path' };
/** A mount point (absolute) or an image reference; never a relative path. */
const mountOrImage = {
  type: 'string',
  maxLength: 4096,
  pattern: '^[^.]',
  description: 'a mount point (an absolute path) or an image reference',
};
const text = { type: 'string', minLength: 1, maxLength: 4096 };

/** The fields of each request: all required but `gc`'s `maxBytes`. */
const REQUEST_FIELDS: Record<ControlRequest['op'], Record<string, object>> = {
  mount: { ref: text, target: absolutePath },
  umount: { target: absolutePath },
  status: {},
  fsck: { target: mountOrImage },
  prefetch: { target: mountOrImage },
  gc: { maxBytes: { type: 'integer', minimum: 0 } },
  trace: { target: absolutePath, action: { enum: ['show', 'end'] } },
  'trace-push': { target: absolutePath },
};

const checkRequest = schemaChecker({
  type: 'object',
  required: ['op'],
  discriminator: { propertyName: 'op' },
  oneOf: Object.entries(REQUEST_FIELDS).map(([op, fields]) => ({
    properties: { op: { const: op }, ...fields },
    required: op === 'gc' ? [] : Object.keys(fields),
    additionalProperties: false,
  })),
});

/** A request line, checked as flags are: a field of the wrong type or range is refused, naming it. */
export function parseControlRequest(line: string): ControlRequest {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (err) {
    throw new InputError(`control request is not JSON: ${(err as Error).message}`);
  }
  const op = (doc as { op?: unknown } | null)?.op;
  if (typeof op !== 'string' || !Object.hasOwn(REQUEST_FIELDS, op))
    throw new InputError(`unknown control request ${JSON.stringify(op)}`);
  const problems = checkRequest(doc);
  if (problems.length) throw new InputError(`invalid ${op} request: ${problems.join('; ')}`);
  return doc as ControlRequest;
}

export type ControlResponse = { ok: true; result?: unknown } | { ok: false; error: string };

export type ControlHandler = (req: ControlRequest) => Promise<unknown>;

/** Whether something accepts connections on the socket: a daemon serving it, not a file one left behind. */
export function answering(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/** Makes way for a socket of this daemon (`what`: control, snapshotter): a file a daemon left behind goes; never one a running daemon serves. */
export async function claimSocket(socketPath: string, what: string): Promise<void> {
  if (await answering(socketPath)) throw new Error(`${what} socket ${socketPath} is served by another daemon`);
  try {
    fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o700 });
    fs.rmSync(socketPath, { force: true });
  } catch (err) {
    throw new Error(`${what} socket ${socketPath}: ${(err as Error).message}`);
  }
}

/** Serves the socket, replacing a file a daemon left behind; never one a running daemon serves. */
export async function serveControl(socketPath: string, handle: ControlHandler): Promise<net.Server> {
  await claimSocket(socketPath, 'control');
  const server = net.createServer((conn) => {
    let buf = Buffer.alloc(0);
    conn.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      for (let nl = buf.indexOf(0x0a); nl !== -1; nl = buf.indexOf(0x0a)) {
        const line = buf.subarray(0, nl).toString('utf8');
        buf = buf.subarray(nl + 1);
        void answer(line).then((res) => conn.write(`${JSON.stringify(res)}\n`));
      }
      if (buf.length > MAX_REQUEST_BYTES) {
        log.warn('control request too long: connection closed', { bytes: buf.length, limit: MAX_REQUEST_BYTES });
        conn.removeAllListeners('data');
        buf = Buffer.alloc(0);
        const res: ControlResponse = { ok: false, error: `control request longer than ${MAX_REQUEST_BYTES} bytes` };
        conn.end(`${JSON.stringify(res)}\n`, () => conn.destroy());
      }
    });
    conn.on('error', () => undefined);
  });
  const answer = async (line: string): Promise<ControlResponse> => {
    try {
      return { ok: true, result: await handle(parseControlRequest(line)) };
    } catch (err) {
      log.warn('control request failed', { request: line.slice(0, 500), error: (err as Error).message });
      return { ok: false, error: (err as Error).message };
    }
  };
  return new Promise((resolve, reject) => {
    // umask while binding so the socket is never, even briefly, open to others.
    const old = process.umask(0o177);
    server.once('error', (err) => {
      process.umask(old);
      reject(new Error(`control socket ${socketPath}: ${err.message}`));
    });
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
