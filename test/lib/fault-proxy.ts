// An HTTP proxy on 127.0.0.1 in front of a test registry that records every request and, on the
// requests a fault matches, answers with an error status, resets the connection, drops Range,
// flips a byte of the body, holds the request (a stalled registry), or answers by itself.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault =
  | { kind: 'status'; status: number; headers?: Record<string, string>; body?: string }
  | { kind: 'reset' }
  | { kind: 'ignore-range' }
  /** Every byte of the body flipped: whatever chunks a Range GET holds, each fails its check. */
  | { kind: 'corrupt' }
  /** Holds the request `ms` milliseconds, then forwards it; without `ms`, until the proxy stops. */
  | { kind: 'stall'; ms?: number }
  | { kind: 'respond'; respond: (req: http.IncomingMessage, res: http.ServerResponse) => void };

export interface FaultRule {
  method?: string;
  path: RegExp;
  /** How many matching requests get the fault (default 1). */
  times?: number;
  /** The share of matching requests that get the fault (default 1); the others go on to later rules. */
  probability?: number;
  fault: Fault;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  /** The status sent back, or 'reset'. */
  status: number | 'reset';
  /** Whether the request carried an Authorization header. */
  authorized: boolean;
  /** Request body bytes received so far (a streamed upload grows while it goes on). */
  bytesIn: number;
  /** Request body bytes of all requests received before this one started. */
  bytesInBefore: number;
  /** Request body bytes of all requests received by the time this response was sent in full. */
  bytesInAtFinish?: number;
  /** performance.now() when the request arrived, and when its response was sent in full. */
  startedAt: number;
  finishedAt?: number;
}

export interface FaultProxy {
  host: string;
  url: string;
  requests: ProxiedRequest[];
  add(rule: FaultRule): void;
  /** Requests a stall holds now (their client has not given up). */
  held(): number;
  /** Forgets recorded requests and unused faults. */
  reset(): void;
  stop(): Promise<void>;
}

export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const [targetHost, targetPort] = target.split(':');
  let rules: (FaultRule & { left: number })[] = [];
  const requests: ProxiedRequest[] = [];
  let bytesIn = 0;
  const agent = new http.Agent({ keepAlive: true });
  const stalled = new Set<http.ServerResponse>();

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const record: ProxiedRequest = {
      method,
      path: url,
      status: 0,
      authorized: req.headers.authorization !== undefined,
      bytesIn: 0,
      bytesInBefore: bytesIn,
      startedAt: performance.now(),
    };
    requests.push(record);
    res.on('finish', () => {
      record.bytesInAtFinish = bytesIn;
      record.finishedAt = performance.now();
    });
    req.on('data', (b: Buffer) => {
      record.bytesIn += b.length;
      bytesIn += b.length;
    });
    const rule = rules.find(
      (r) =>
        r.left > 0 &&
        (!r.method || r.method === method) &&
        r.path.test(url) &&
        (r.probability === undefined || Math.random() < r.probability),
    );
    if (rule) rule.left--;
    const fault = rule?.fault;

    if (fault?.kind === 'reset') {
      record.status = 'reset';
      req.socket.resetAndDestroy();
      return;
    }
    if (fault?.kind === 'status') {
      record.status = fault.status;
      req.resume();
      req.on('end', () =>
        res
          .writeHead(fault.status, { 'content-type': 'application/json', ...fault.headers })
          .end(fault.body ?? '{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'),
      );
      return;
    }
    if (fault?.kind === 'respond') {
      res.on('finish', () => (record.status = res.statusCode));
      fault.respond(req, res);
      return;
    }

    const forward = () => {
      const headers = { ...req.headers };
      if (fault?.kind === 'ignore-range') delete headers.range;
      // The Host header stays the proxy's: the registry builds its Location URLs from it.
      const upstream = http.request(
        { host: targetHost, port: Number(targetPort), method, path: url, headers, agent },
        (up) => {
          record.status = up.statusCode ?? 0;
          res.writeHead(up.statusCode ?? 502, up.headers);
          if (fault?.kind === 'corrupt') {
            up.on('data', (b: Buffer) => res.write(Buffer.from(b).map((x) => x ^ 0xff)));
            up.on('end', () => res.end());
          } else {
            up.pipe(res);
          }
        },
      );
      upstream.on('error', () => res.destroy());
      req.pipe(upstream);
    };
    if (fault?.kind === 'stall') {
      // Held: the request body is buffered by the socket until the stall ends.
      stalled.add(res);
      const timer = fault.ms === undefined ? undefined : setTimeout(() => (stalled.delete(res), forward()), fault.ms);
      res.on('close', () => {
        clearTimeout(timer);
        stalled.delete(res);
      });
      return;
    }
    forward();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    requests,
    add: (rule) => rules.push({ ...rule, left: rule.times ?? 1 }),
    held: () => stalled.size,
    reset: () => {
      requests.length = 0;
      rules = [];
    },
    stop: async () => {
      for (const res of stalled) res.destroy();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}
