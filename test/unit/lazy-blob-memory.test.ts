// What a mounted blob keeps alive: its decoded chunk table, not the bytes fetched to decode it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Annotation } from '../../src/convert/lazy-image';
import { openLazyBlob } from '../../src/daemon/image-store';
import type { HostClient } from '../../src/oci/host-client';
import { makeFakeBlob } from '../lib/fake-blob';

describe('openLazyBlob', () => {
  it('lets the chunk table bytes it fetched go once they are decoded', async () => {
    const blob = await makeFakeBlob({ chunkSize: 4096, size: 64 * 4096 });
    const served: Array<WeakRef<Buffer>> = [];
    const client = {
      getBlobRange: async (_repo: string, _digest: string, start: number, end: number) => {
        const data = Buffer.from(blob.bytes.subarray(start, end + 1));
        served.push(new WeakRef(data));
        return data;
      },
    } as unknown as HostClient;
    const { remote, index } = await openLazyBlob('image', client, 'repo', {
      mediaType: 'application/octet-stream',
      digest: blob.digest,
      size: blob.bytes.length,
      annotations: {
        [Annotation.tableOffset]: String(blob.expectedTable.offset),
        [Annotation.tableDigest]: blob.expectedTable.digest,
      },
    });
    assert.equal(index.chunks.length, 64);
    assert.equal(served.length, 1);
    // A WeakRef's target lives until the end of the job that made it.
    await new Promise((resolve) => setImmediate(resolve));
    v8.setFlagsFromString('--expose-gc');
    (vm.runInNewContext('gc') as () => void)();
    assert.equal(served[0].deref(), undefined, 'the fetched table bytes are still reachable');
    assert.equal(remote.digest, blob.digest);
  });
});
