// TarReader over a stream of large buffers, as gunzip yields them.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TarReader } from '../src/tar/reader';
import { makeTar } from './lib/tar-writer';

async function* inOneBuffer(data: Buffer): AsyncIterable<Buffer> {
  const big = Buffer.alloc(4 << 20);
  data.copy(big);
  yield big.subarray(0, data.length);
}

describe('TarReader', () => {
  it('hands out names, link targets and PAX values that do not pin the input buffer', async () => {
    const tar = makeTar([
      { name: 'link', type: '2', linkname: 'target' },
      { name: 'file', body: 'data', pax: { 'SCHILY.xattr.user.k': 'value' } },
    ]);
    const reader = new TarReader(inOneBuffer(tar));
    const link = (await reader.next())!;
    assert.equal(link.linkname.toString(), 'target');
    const file = (await reader.next())!;
    assert.equal(file.xattrs[0].value.toString(), 'value');
    assert.equal(Buffer.concat(await reader.readBody(4)).toString(), 'data');
    assert.equal(await reader.next(), null);
    // The tree keeps these for the whole conversion: a subarray would keep the 4 MiB input alive.
    for (const b of [link.name, link.linkname, file.name, file.xattrs[0].value]) assert.ok(b.buffer.byteLength < 64 << 10);
  });
});
