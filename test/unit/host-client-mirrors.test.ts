// Range reads through a registry host's mirrors, against registries faked in this process (HTTP on
// 127.0.0.1): a mirror that fails, lies or cannot be reached is passed over for the upstream, and
// what a caller gets is verified bytes or an error, never a mirror's wrong bytes.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { HostClient } from '../../src/oci/host-client';
import { hostEndpoints, type HostConfig } from '../../src/oci/hosts';
import { ChunkFetcher, type RemoteBlob } from '../../src/storage/chunk-fetcher';
import { makeFakeBlob, type FakeBlob, fetchChunkBytes } from '../lib/fake-blob';
import { captureLogs, type LogCapture } from '../lib/log-capture';
import { freePort } from '../lib/registry-server';

const REPO = 'lazy/app';

type Behaviour = 'honest' | 'error500' | 'corrupt';

interface FakeRegistry {
  host: string;
  url: string;
  /** Range GETs of the blob it was asked for. */
  ranges: string[];
  close(): Promise<void>;
}

/** Serves one blob's ranges at /v2/REPO/blobs/DIGEST (any query, as mirrors get `?ns=`), as `behaviour` says. */
async function fakeRegistry(blob: FakeBlob, behaviour: Behaviour): Promise<FakeRegistry> {
  const ranges: string[] = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/v2/') return void res.writeHead(200).end('{}');
    if (req.method !== 'GET' || url.pathname !== `/v2/${REPO}/blobs/${blob.digest}`)
      return void res.writeHead(404).end();
    const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
    if (!m) return void res.writeHead(400).end();
    ranges.push(`${m[1]}-${m[2]}`);
    if (behaviour === 'error500') return void res.writeHead(500).end('internal error');
    const [start, end] = [Number(m[1]), Number(m[2])];
    const data = Buffer.from(blob.bytes.subarray(start, end + 1));
    if (behaviour === 'corrupt') data[data.length >> 1] ^= 0xff;
    res.writeHead(206, {
      'content-type': 'application/octet-stream',
      'content-length': data.length,
      'content-range': `bytes ${start}-${end}/${blob.bytes.length}`,
    });
    res.end(data);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    ranges,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('HostClient range reads through mirrors', () => {
  let blob: FakeBlob;
  let upstream: FakeRegistry;
  let failing: FakeRegistry;
  let liar: FakeRegistry;
  let unreachable: string;
  let logs: LogCapture;
  const clients: HostClient[] = [];

  before(async () => {
    blob = await makeFakeBlob({ chunkSize: 16 << 10, size: 6 * (16 << 10) });
    [upstream, failing, liar] = await Promise.all([
      fakeRegistry(blob, 'honest'),
      fakeRegistry(blob, 'error500'),
      fakeRegistry(blob, 'corrupt'),
    ]);
    unreachable = `http://127.0.0.1:${await freePort()}`;
    logs = captureLogs();
  });
  after(async () => {
    logs.stop();
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all([upstream, failing, liar].map((r) => r?.close()));
  });

  const client = (config: HostConfig) => {
    const c = new HostClient(upstream.host, hostEndpoints(upstream.host, { hosts: { [upstream.host]: config } }), {
      retryBaseMs: 1,
      timeoutMs: 5_000,
      credentials: null,
    });
    clients.push(c);
    return c;
  };

  /** What the daemon reads chunks through: the host client's range reads, checked by the fetcher. */
  const remote = (c: HostClient): RemoteBlob => ({
    digest: blob.digest,
    what: `blob ${blob.digest}`,
    read: (offset, length, verify) => c.getBlobRange(REPO, blob.digest, offset, offset + length - 1, { verify }),
  });

  const counts = () => [upstream, failing, liar].map((r) => r.ranges.length);

  it('passes over a mirror that answers 500 and reads from the upstream', async () => {
    const before = counts();
    const c = client({ mirrors: [{ url: failing.url }] });
    const data = await c.getBlobRange(REPO, blob.digest, 100, 4195);
    assert.ok(data.equals(blob.bytes.subarray(100, 4196)));
    const [up, fail] = counts().map((n, i) => n - before[i]);
    assert.ok(fail >= 1, 'the mirror was asked first');
    assert.equal(up, 1);
  });

  it('passes over a mirror that cannot be reached and reads from the upstream', async () => {
    const before = counts();
    const c = client({ mirrors: [{ url: unreachable }] });
    const data = await c.getBlobRange(REPO, blob.digest, 0, blob.bytes.length - 1);
    assert.ok(data.equals(blob.bytes));
    assert.equal(counts()[0] - before[0], 1);
    assert.ok(
      logs.records.some((r) => r.level === 'warn' && JSON.stringify(r).includes(unreachable)),
      'the unreachable mirror was tried, and said so',
    );
  });

  it('passes over a mirror whose chunks fail verification, takes them verified from the upstream, and does not ask it again for that blob', async () => {
    const before = counts();
    const c = client({ mirrors: [{ url: liar.url }] });
    const fetcher = new ChunkFetcher({ maxGap: 0 });
    const got = await fetchChunkBytes(fetcher, remote(c), blob.chunks.slice(0, 3));
    got.forEach((b, i) => assert.ok(b.equals(blob.chunkData(blob.chunks[i])), `chunk ${i}`));
    assert.equal(liar.ranges.length - before[2], 1);
    assert.equal(upstream.ranges.length - before[0], 1);
    assert.ok(fetcher.stats.verifyFailures >= 1);
    const again = await fetchChunkBytes(fetcher, remote(c), blob.chunks.slice(3, 5));
    again.forEach((b, i) => assert.ok(b.equals(blob.chunkData(blob.chunks[3 + i])), `chunk ${3 + i}`));
    assert.equal(liar.ranges.length - before[2], 1, 'the lying mirror is not asked again for this blob');
    assert.equal(upstream.ranges.length - before[0], 2);
  });

  it('tries the mirrors in order, each failing its own way, then the upstream', async () => {
    const before = counts();
    const c = client({ mirrors: [{ url: failing.url }, { url: liar.url }, { url: unreachable }] });
    const [chunk] = await fetchChunkBytes(new ChunkFetcher(), remote(c), [blob.chunks[5]]);
    assert.ok(chunk.equals(blob.chunkData(blob.chunks[5])));
    const [up, fail, lie] = counts().map((n, i) => n - before[i]);
    assert.deepEqual([up >= 1, fail >= 1, lie], [true, true, 1]);
  });

  it('without the upstream to fall back to, a lying mirror gives an error, never its bytes', async () => {
    const before = counts();
    const c = client({ mirrors: [{ url: liar.url }], fallbackToUpstream: false });
    await assert.rejects(
      fetchChunkBytes(new ChunkFetcher(), remote(c), [blob.chunks[2]]),
      /chunk at \d+: (sha256 .* does not match|zstd)/,
    );
    assert.equal(counts()[0] - before[0], 0, 'the upstream was not asked');
  });
});
