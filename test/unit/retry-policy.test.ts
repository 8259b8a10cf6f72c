// The registry layer's one retry policy (src/oci/retry.ts), on its own and as requests meet it:
// fake registries on 127.0.0.1 in this process answer as each test scripts them.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import { InputError } from '../../src/errors';
import { log } from '../../src/log';
import { sha256Digest } from '../../src/oci/digest';
import { HostClient } from '../../src/oci/host-client';
import { hostEndpoints } from '../../src/oci/hosts';
import { RegistryClient } from '../../src/oci/registry';
import {
  DEFAULT_RETRY_POLICY,
  forPriority,
  once,
  retryDelay,
  TransientError,
  withRetries,
  type RetryPolicy,
} from '../../src/oci/retry';

const BLOB = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
const DIGEST = sha256Digest(BLOB);
const FAST: RetryPolicy = { attempts: 4, baseMs: 1, maxDelayMs: 5 };

/** How a fake registry answers one request: a status (with headers), the range asked for, a dropped connection, or nothing ever. */
type Answer = { status: number; headers?: Record<string, string> } | 'range' | 'reset' | 'stall';

interface FakeRegistry {
  host: string;
  url: string;
  /** Answers for the next requests, in order; when they run out, `otherwise`. */
  script: Answer[];
  otherwise: Answer;
  requests: number;
  close(): Promise<void>;
}

async function fakeRegistry(): Promise<FakeRegistry> {
  const fake = { script: [] as Answer[], otherwise: 'range' as Answer, requests: 0 } as FakeRegistry;
  const server = http.createServer((req, res) => {
    fake.requests++;
    const answer = fake.script.shift() ?? fake.otherwise;
    if (answer === 'reset') return void req.socket.destroy();
    if (answer === 'stall') return;
    if (answer !== 'range')
      return void res.writeHead(answer.status, { 'content-length': '0', ...answer.headers }).end();
    const m = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range));
    if (!m) return void res.writeHead(200, { 'content-length': String(BLOB.length) }).end(BLOB);
    const [start, end] = [Number(m[1]), Number(m[2])];
    res
      .writeHead(206, {
        'content-range': `bytes ${start}-${end}/${BLOB.length}`,
        'content-length': String(end - start + 1),
      })
      .end(BLOB.subarray(start, end + 1));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  fake.host = `127.0.0.1:${port}`;
  fake.url = `http://${fake.host}`;
  fake.close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return fake;
}

const savedLevel = log.level;
// The retries log warnings by design; they are not what these tests look at.
before(() => {
  log.level = 'error';
});
after(() => {
  log.level = savedLevel;
});

describe('retry policy', () => {
  it('gives a prefetch fewer attempts than a demand read, and never more than the policy', () => {
    assert.equal(forPriority(DEFAULT_RETRY_POLICY, 'demand').attempts, 4);
    assert.equal(forPriority(DEFAULT_RETRY_POLICY).attempts, 4);
    assert.equal(forPriority(DEFAULT_RETRY_POLICY, 'prefetch').attempts, 2);
    assert.equal(forPriority(once(DEFAULT_RETRY_POLICY), 'prefetch').attempts, 1);
    assert.equal(once(DEFAULT_RETRY_POLICY).attempts, 1);
  });

  it('caps a Retry-After and backs off exponentially, with jitter, below the cap', () => {
    const policy: RetryPolicy = { attempts: 8, baseMs: 100, maxDelayMs: 1000 };
    assert.equal(retryDelay(policy, 1, 3_600_000), 1000);
    assert.equal(retryDelay(policy, 1, 250), 250);
    assert.equal(retryDelay(policy, 1, 0), 0);
    for (let i = 0; i < 50; i++) {
      const first = retryDelay(policy, 1);
      assert.ok(first >= 50 && first <= 100, `first wait ${first}`);
      const third = retryDelay(policy, 3);
      assert.ok(third >= 200 && third <= 400, `third wait ${third}`);
      const late = retryDelay(policy, 10);
      assert.ok(late >= 500 && late <= 1000, `tenth wait ${late}`);
    }
  });

  it('retries transient failures only, and says how many attempts it made', async () => {
    const job = { op: 'test op', ctx: { registry: 'r.example' } };
    let calls = 0;
    await assert.rejects(
      withRetries(FAST, job, async () => {
        calls++;
        throw new InputError('not found', job.ctx);
      }),
      (err: Error) => !(err instanceof TransientError) && /not found/.test(err.message),
    );
    assert.equal(calls, 1, 'a non-transient failure is not retried');

    calls = 0;
    const lasts: boolean[] = [];
    await assert.rejects(
      withRetries({ ...FAST, attempts: 3 }, job, async (_n, last) => {
        calls++;
        lasts.push(last);
        throw new TransientError('test op: registry answered 503', job.ctx, { status: 503 });
      }),
      (err: Error) =>
        !(err instanceof TransientError) &&
        /registry "r\.example": test op: registry answered 503 \(after 3 attempts\)$/.test(err.message),
    );
    assert.equal(calls, 3);
    assert.deepEqual(lasts, [false, false, true]);

    calls = 0;
    const got = await withRetries(FAST, job, async (n) => {
      calls++;
      if (n < 3) throw new TransientError('busy', job.ctx);
      return 'done';
    });
    assert.equal(got, 'done');
    assert.equal(calls, 3);
  });

  it('leaves the transient failure of a single attempt transient, for the caller to fall back or start over', async () => {
    const job = { op: 'test op', ctx: {} };
    await assert.rejects(
      withRetries(once(FAST), job, async () => {
        throw new TransientError('busy', job.ctx, { status: 503 });
      }),
      (err: Error) => err instanceof TransientError && err.message === 'busy',
    );
  });
});

describe('retry policy as requests meet it', () => {
  let reg: FakeRegistry;
  let mirror: FakeRegistry;
  const clients: { close(): Promise<void> }[] = [];

  before(async () => {
    reg = await fakeRegistry();
    mirror = await fakeRegistry();
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
    for (const fake of [reg, mirror]) {
      fake.script = [];
      fake.otherwise = 'range';
      fake.requests = 0;
    }
  });

  after(async () => {
    await Promise.all([reg.close(), mirror.close()]);
  });

  const client = (opts: ConstructorParameters<typeof RegistryClient>[1] = {}) => {
    const c = new RegistryClient(reg.host, {
      plainHttp: true,
      credentials: null,
      retryBaseMs: 1,
      timeoutMs: 5_000,
      ...opts,
    });
    clients.push(c);
    return c;
  };

  it('retries a demand read more than a prefetch', async () => {
    reg.otherwise = { status: 503 };
    await assert.rejects(
      client().getBlobRange('app', DIGEST, 0, 9, { priority: 'demand' }),
      /get blob range: registry answered 503 \(after 4 attempts\)/,
    );
    assert.equal(reg.requests, 4);
    reg.requests = 0;
    await assert.rejects(
      client().getBlobRange('app', DIGEST, 0, 9, { priority: 'prefetch' }),
      /get blob range: registry answered 503 \(after 2 attempts\)/,
    );
    assert.equal(reg.requests, 2);
  });

  it('gets a demand read through a busy spell a prefetch gives up on', async () => {
    reg.script = [{ status: 503 }, { status: 502 }];
    assert.deepEqual(await client().getBlobRange('app', DIGEST, 3, 7), BLOB.subarray(3, 8));
    assert.equal(reg.requests, 3);
    reg.requests = 0;
    reg.script = [{ status: 503 }, { status: 502 }];
    await assert.rejects(
      client().getBlobRange('app', DIGEST, 3, 7, { priority: 'prefetch' }),
      /registry answered 502 \(after 2 attempts\)/,
    );
    assert.equal(reg.requests, 2);
  });

  it('waits as long as Retry-After asks, up to the cap', async () => {
    reg.script = [{ status: 429, headers: { 'retry-after': '3600' } }];
    const t0 = Date.now();
    assert.deepEqual(await client({ maxRetryDelayMs: 200 }).getBlobRange('app', DIGEST, 0, 3), BLOB.subarray(0, 4));
    const waited = Date.now() - t0;
    assert.ok(waited >= 190 && waited < 3000, `waited ${waited} ms`);
    assert.equal(reg.requests, 2);
  });

  it('sends a request that failed for good once', async () => {
    reg.otherwise = { status: 400 };
    await assert.rejects(
      client().getBlobRange('app', DIGEST, 0, 9),
      (err: Error) => /get blob range: registry answered 400$/.test(err.message) && !/attempts/.test(err.message),
    );
    assert.equal(reg.requests, 1);
    reg.requests = 0;
    reg.otherwise = { status: 404 };
    await assert.rejects(client().getBlobRange('app', DIGEST, 0, 9), /blob unknown \(404\)/);
    assert.equal(reg.requests, 1);
  });

  it('ends a request that has a time budget when it is spent, a stalled attempt and the waits included', async () => {
    reg.otherwise = 'stall';
    const t0 = Date.now();
    await assert.rejects(
      client().getBlobRange('app', DIGEST, 0, 9, { budgetMs: 300 }),
      /get blob range: .*\(UND_ERR_HEADERS_TIMEOUT\) \(after 1 attempt in 0.3 s\)/,
    );
    assert.ok(Date.now() - t0 < 2000, `gave up after ${Date.now() - t0} ms, not after the 5 s request timeout`);
    reg.otherwise = { status: 503 };
    reg.requests = 0;
    await assert.rejects(
      client({ retryBaseMs: 200 }).getBlobRange('app', DIGEST, 0, 9, { budgetMs: 300 }),
      /registry answered 503 \(after [12] attempts? in 0.3 s\)/,
    );
    assert.ok(reg.requests < 4, `${reg.requests} attempts: no wait begins past the budget`);
    reg.otherwise = 'range';
    assert.deepEqual(await client().getBlobRange('app', DIGEST, 0, 9, { budgetMs: 300 }), BLOB.subarray(0, 10));
  });

  it('retries a dropped connection', async () => {
    reg.script = ['reset'];
    assert.deepEqual(await client().getBlobRange('app', DIGEST, 0, 9), BLOB.subarray(0, 10));
    assert.equal(reg.requests, 2);
  });

  it('gives a mirror the upstream follows one attempt, and the upstream its full policy', async () => {
    mirror.otherwise = { status: 503 };
    reg.script = [{ status: 503 }, { status: 503 }];
    const host = new HostClient(
      reg.host,
      hostEndpoints(reg.host, { hosts: { [reg.host]: { mirrors: [{ url: mirror.url }] } } }),
      {
        retryBaseMs: 1,
        timeoutMs: 5_000,
        credentials: null,
      },
    );
    clients.push(host);
    assert.deepEqual(await host.getBlobRange('app', DIGEST, 10, 19), BLOB.subarray(10, 20));
    assert.equal(mirror.requests, 1, 'one attempt at the mirror');
    assert.equal(reg.requests, 3, 'the upstream retried');
  });

  it('carries the priority of a range read through the host client to each endpoint', async () => {
    reg.otherwise = { status: 503 };
    const host = new HostClient(reg.host, hostEndpoints(reg.host, {}), {
      retryBaseMs: 1,
      timeoutMs: 5_000,
      credentials: null,
    });
    clients.push(host);
    await assert.rejects(host.getBlobRange('app', DIGEST, 0, 4, { priority: 'prefetch' }), /\(after 2 attempts\)/);
    assert.equal(reg.requests, 2);
    reg.requests = 0;
    await assert.rejects(host.getBlobRange('app', DIGEST, 0, 4), /\(after 4 attempts\)/);
    assert.equal(reg.requests, 4);
  });

  it('gives the last endpoint, a mirror too, the full policy', async () => {
    mirror.script = [{ status: 503 }];
    const host = new HostClient(
      reg.host,
      hostEndpoints(reg.host, { hosts: { [reg.host]: { mirrors: [{ url: mirror.url }], fallbackToUpstream: false } } }),
      {
        retryBaseMs: 1,
        timeoutMs: 5_000,
        credentials: null,
      },
    );
    clients.push(host);
    assert.deepEqual(await host.getBlobRange('app', DIGEST, 0, 4), BLOB.subarray(0, 5));
    assert.equal(mirror.requests, 2);
    assert.equal(reg.requests, 0);
  });
});
