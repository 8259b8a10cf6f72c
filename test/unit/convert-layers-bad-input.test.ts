// Layers that cannot be converted: the error names the image, the layer and the entry. In memory,
// no mounts: the conversion stops before anything is built.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { convertLayers, type LayerInput } from '../../src/convert/convert-layers';
import { InputError } from '../../src/errors';
import { cleanup, tempDir } from '../lib/image';
import { memoryLayer, TAR } from '../lib/layers';
import { makeTar } from '../lib/tar-writer';

const made: string[] = [];
after(() => cleanup(...made));

function convert(layers: LayerInput[]) {
  const work = tempDir('work');
  made.push(work);
  return convertLayers(layers, work, { chunkBits: 20, image: 'test/image:1' });
}

describe('convert layers: bad input names image, layer and entry', () => {
  async function rejects(layers: LayerInput[], pattern: RegExp) {
    await assert.rejects(convert(layers), (err: unknown) => {
      assert.ok(err instanceof InputError, String(err));
      assert.match(err.message, /image "test\/image:1"/);
      assert.match(err.message, /layer "sha256:[0-9a-f]{64}"/);
      assert.match(err.message, pattern);
      return true;
    });
  }

  it('path traversal', () =>
    rejects(
      [memoryLayer(makeTar([{ name: 'a/../../etc/passwd', body: 'x' }]), TAR)],
      /path "a\/..\/..\/etc\/passwd": path escapes the root/,
    ));
  it('absolute names', () =>
    rejects(
      [memoryLayer(makeTar([{ name: '/etc/passwd', body: 'x' }]), TAR)],
      /path "\/etc\/passwd": absolute path in archive/,
    ));
  it('hard link to a missing target', () =>
    rejects(
      [memoryLayer(makeTar([{ name: 'link', type: '1', linkname: 'nowhere' }]), TAR)],
      /path "\/link": hard link to missing target "\/nowhere"/,
    ));
  it('a truncated tar', () => {
    const tar = makeTar([{ name: 'f', body: Buffer.alloc(5000, 1) }], { end: false });
    return rejects([memoryLayer(tar.subarray(0, 2000), TAR)], /entry "f": input ends after .* \(truncated\)/);
  });
  it('a corrupt tar header', () => {
    const tar = makeTar([{ name: 'f', body: 'x' }]);
    tar[10] ^= 0xff;
    return rejects([memoryLayer(tar, TAR)], /header checksum mismatch/);
  });
  it('a PAX size that is not decimal (GNU tar and Go refuse it)', () =>
    rejects(
      [memoryLayer(makeTar([{ name: 'f', body: 'x'.repeat(16), pax: { size: '0x10' } }]), TAR)],
      /PAX size "0x10" is not a decimal number/,
    ));
  it('corrupt gzip', () =>
    rejects(
      [memoryLayer(Buffer.from('this is not gzip at all'), 'application/vnd.oci.image.layer.v1.tar+gzip')],
      /incorrect header check/,
    ));
  it('a digest mismatch', () =>
    rejects([memoryLayer(makeTar([{ name: 'f', body: 'x' }]), TAR, `sha256:${'0'.repeat(64)}`)], /digest mismatch/));
  it('an unknown media type', () =>
    rejects(
      [memoryLayer(Buffer.alloc(0), 'application/x-something')],
      /unsupported layer media type "application\/x-something"/,
    ));
  it('a parent that is not a directory', () =>
    rejects(
      [
        memoryLayer(
          makeTar([
            { name: 'f', body: 'x' },
            { name: 'f/g', body: 'y' },
          ]),
          TAR,
        ),
      ],
      /path "\/f": a parent of this entry is not a directory/,
    ));
});
