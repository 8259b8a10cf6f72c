// A blob pushed while it is still being written: one PATCH whose body follows the file as it grows,
// the commit names the digest at the end; a blob the registry has already cancels the session; a registry that refuses
// the streamed parts still gets the finished file. Against Debian's docker-registry on 127.0.0.1.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { readAll } from '../../src/oci/image-io';
import { RegistryClient } from '../../src/oci/registry';
import { StreamedBlobPush } from '../../src/oci/streamed-push';
import { MediaType, type Descriptor } from '../../src/oci/types';
import { until } from '../lib/assertions';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { captureLogs } from '../lib/log-capture';
import { startRegistry, type RegistryServer } from '../lib/registry-server';

const PART = 64 << 10;

function descriptorOf(data: Buffer): Descriptor {
  return {
    mediaType: MediaType.ociLayerTar,
    digest: `sha256:${createHash('sha256').update(data).digest('hex')}`,
    size: data.length,
  };
}

describe('streamed blob push', () => {
  let registry: RegistryServer;
  let proxy: FaultProxy;
  let client: RegistryClient;
  let dir: string;

  before(async () => {
    registry = await startRegistry();
    proxy = await startFaultProxy(registry.host);
    client = new RegistryClient(proxy.host, { plainHttp: true, credentials: null, retries: 1 });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'streamed-push-'));
  });
  after(async () => {
    await client?.close();
    await Promise.all([proxy?.stop(), registry?.stop()]);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('uploads the file while it grows and commits the finished blob', async () => {
    proxy.reset();
    const data = randomBytes(5 * PART + 1234);
    const file = path.join(dir, 'grow.blob');
    const fd = fs.openSync(file, 'w');
    const push = new StreamedBlobPush(client, 'stream/a', file, PART);
    fs.writeSync(fd, data, 0, 3 * PART, 0);
    push.written(3 * PART);
    // Three reads are out before the writer has even finished: the upload follows the file.
    const patch = () => proxy.requests.find((r) => r.method === 'PATCH');
    await until(() => (patch()?.bytesIn ?? 0) >= 3 * PART, 'the written bytes to reach the registry', 5_000);
    assert.equal(patch()!.status, 0, 'the PATCH is still open');
    assert.equal(proxy.requests.filter((r) => r.method === 'PUT').length, 0);
    fs.writeSync(fd, data, 3 * PART, data.length - 3 * PART, 3 * PART);
    fs.closeSync(fd);
    push.written(data.length);
    const desc = descriptorOf(data);
    assert.equal(await push.finish(desc), 'uploaded');
    const patches = proxy.requests.filter((r) => r.method === 'PATCH');
    assert.equal(patches.length, 1, 'one streamed PATCH');
    assert.equal(patches[0].status, 202);
    assert.equal(patches[0].bytesIn, data.length);
    const stored = await readAll(await client.getBlob('stream/a', desc.digest, desc.size));
    assert.ok(stored.equals(data));
  });

  it('cancels the session when the finished blob is there already', async () => {
    const data = randomBytes(3 * PART);
    const file = path.join(dir, 'again.blob');
    fs.writeFileSync(file, data);
    const desc = descriptorOf(data);
    const first = new StreamedBlobPush(client, 'stream/b', file, PART);
    first.written(data.length);
    assert.equal(await first.finish(desc), 'uploaded');
    proxy.reset();
    const second = new StreamedBlobPush(client, 'stream/b', file, PART);
    second.written(data.length);
    await until(() => proxy.requests.some((r) => r.method === 'PATCH'), 'a PATCH', 5_000);
    assert.equal(await second.finish(desc), 'exists');
    assert.equal(proxy.requests.filter((r) => r.method === 'PUT').length, 0, 'nothing committed');
    assert.equal(
      proxy.requests.filter((r) => r.method === 'DELETE' && r.status === 204).length,
      1,
      'the session was cancelled',
    );
  });

  it('uploads the finished file the ordinary way when the registry refuses streamed parts', async () => {
    proxy.reset();
    proxy.add({
      method: 'PATCH',
      path: /\/stream\/c\/blobs\/uploads\//,
      times: 1,
      fault: { kind: 'status', status: 500 },
    });
    const logs = captureLogs();
    try {
      const data = randomBytes(4 * PART + 7);
      const file = path.join(dir, 'refused.blob');
      fs.writeFileSync(file, data);
      const push = new StreamedBlobPush(client, 'stream/c', file, PART);
      push.written(data.length);
      const desc = descriptorOf(data);
      assert.equal(await push.finish(desc), 'uploaded');
      const stored = await readAll(await client.getBlob('stream/c', desc.digest, desc.size));
      assert.ok(stored.equals(data));
      assert.ok(
        logs.records.some((r) => r.level === 'warn' && /streamed blob upload failed/.test(String(r.message))),
        logs.text(),
      );
    } finally {
      logs.stop();
    }
  });

  it('abandoning before any part leaves no session behind, and after parts cancels it', async () => {
    const file = path.join(dir, 'abandon.blob');
    fs.writeFileSync(file, randomBytes(2 * PART));
    proxy.reset();
    const idle = new StreamedBlobPush(client, 'stream/d', file, PART);
    idle.written(PART - 1);
    await idle.abandon();
    assert.equal(proxy.requests.length, 0);
    const busy = new StreamedBlobPush(client, 'stream/d', file, PART);
    busy.written(2 * PART);
    await until(() => proxy.requests.some((r) => r.method === 'PATCH' && r.bytesIn >= PART), 'a PATCH', 5_000);
    await busy.abandon();
    assert.equal(proxy.requests.filter((r) => r.method === 'DELETE').length, 1);
    assert.equal(proxy.requests.filter((r) => r.method === 'PUT').length, 0);
  });
});
