// What a layer's tar may make the reader hold: PAX headers and GNU long names are read whole, so
// their sum (one entry's own and every global PAX header) is bounded, however they are split up.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { TarReader } from '../../src/tar/reader';
import { makeTar, metadataEntry } from '../lib/tar-writer';

/** A PAX body of `bytes` (about) in records of distinct keys, so that merging them keeps every one. */
function paxRecords(bytes: number, tag: string): Buffer {
  const records: string[] = [];
  for (let i = 0, n = 0; n < bytes; i++) {
    const rest = ` SCHILY.xattr.user.${tag}-${i}=${'v'.repeat(1000)}\n`;
    const record = `${rest.length + String(rest.length + 4).length}${rest}`;
    records.push(record);
    n += record.length;
  }
  return Buffer.from(records.join(''));
}

async function readEntries(tar: Buffer): Promise<number> {
  const reader = new TarReader(
    (async function* () {
      yield tar;
    })(),
  );
  let n = 0;
  while (await reader.next()) n++;
  return n;
}

describe('TarReader metadata bounds', () => {
  const file = makeTar([{ name: 'f', body: 'data' }]);

  it('accepts metadata well within the bound', async () => {
    const tar = Buffer.concat([
      metadataEntry('g', paxRecords(1 << 20, 'g')),
      metadataEntry('x', paxRecords(1 << 20, 'x')),
      file,
    ]);
    assert.equal(await readEntries(tar), 1);
  });

  for (const type of ['x', 'g'] as const) {
    it(`refuses ${type === 'x' ? 'PAX headers chained before one entry' : 'global PAX headers'} that add up past the bound`, async () => {
      const parts = Array.from({ length: 20 }, (_, i) => metadataEntry(type, paxRecords(1 << 20, `${type}${i}`)));
      // Global headers add up across entries: a file between each pair of them does not reset the sum.
      const tar = Buffer.concat(
        type === 'g' ? parts.flatMap((p) => [p, file.subarray(0, 1024)]).concat(file) : [...parts, file],
      );
      await assert.rejects(readEntries(tar), /metadata entries of \d+ bytes for one entry are too large/);
    });
  }
});
