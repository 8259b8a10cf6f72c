// Image reference parsing: Docker Hub short names, host detection, tag and digest grammar.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../../src/errors';
import { formatReference, manifestReference, parseReference, type ImageReference } from '../../src/oci/reference';

const D = `sha256:${'ab'.repeat(32)}`;

describe('parseReference', () => {
  const good: [string, ImageReference, string][] = [
    [
      'ubuntu',
      { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest' },
      'registry-1.docker.io/library/ubuntu:latest',
    ],
    [
      'ubuntu:22.04',
      { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: '22.04' },
      'registry-1.docker.io/library/ubuntu:22.04',
    ],
    [
      'library/ubuntu',
      { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest' },
      'registry-1.docker.io/library/ubuntu:latest',
    ],
    [
      'docker.io/ubuntu',
      { registry: 'registry-1.docker.io', repository: 'library/ubuntu', tag: 'latest' },
      'registry-1.docker.io/library/ubuntu:latest',
    ],
    [
      'index.docker.io/nvidia/cuda:12.4.1-base',
      { registry: 'registry-1.docker.io', repository: 'nvidia/cuda', tag: '12.4.1-base' },
      'registry-1.docker.io/nvidia/cuda:12.4.1-base',
    ],
    [
      'nvidia/cuda',
      { registry: 'registry-1.docker.io', repository: 'nvidia/cuda', tag: 'latest' },
      'registry-1.docker.io/nvidia/cuda:latest',
    ],
    ['localhost/foo', { registry: 'localhost', repository: 'foo', tag: 'latest' }, 'localhost/foo:latest'],
    [
      'localhost:5000/a/b/c:v1',
      { registry: 'localhost:5000', repository: 'a/b/c', tag: 'v1' },
      'localhost:5000/a/b/c:v1',
    ],
    ['127.0.0.1:5000/x', { registry: '127.0.0.1:5000', repository: 'x', tag: 'latest' }, '127.0.0.1:5000/x:latest'],
    ['ghcr.io/org/img@' + D, { registry: 'ghcr.io', repository: 'org/img', digest: D }, `ghcr.io/org/img@${D}`],
    [
      'ghcr.io/org/img:tag@' + D,
      { registry: 'ghcr.io', repository: 'org/img', tag: 'tag', digest: D },
      `ghcr.io/org/img:tag@${D}`,
    ],
    [
      'ubuntu@' + D,
      { registry: 'registry-1.docker.io', repository: 'library/ubuntu', digest: D },
      `registry-1.docker.io/library/ubuntu@${D}`,
    ],
    ['reg:443/a', { registry: 'reg:443', repository: 'a', tag: 'latest' }, 'reg:443/a:latest'],
    [
      'my-registry.example.com/a__b/c.d/e-f--g:_T.a-g',
      { registry: 'my-registry.example.com', repository: 'a__b/c.d/e-f--g', tag: '_T.a-g' },
      'my-registry.example.com/a__b/c.d/e-f--g:_T.a-g',
    ],
    // A first component without '.' or ':' that is not localhost is a Docker Hub namespace.
    [
      'myhost/repo',
      { registry: 'registry-1.docker.io', repository: 'myhost/repo', tag: 'latest' },
      'registry-1.docker.io/myhost/repo:latest',
    ],
    ['[::1]:5000/repo', { registry: '[::1]:5000', repository: 'repo', tag: 'latest' }, '[::1]:5000/repo:latest'],
  ];
  for (const [text, want, formatted] of good) {
    it(`parses ${text}`, () => {
      const ref = parseReference(text);
      assert.deepEqual(ref, want);
      assert.equal(formatReference(ref), formatted);
      assert.deepEqual(parseReference(formatReference(ref)), want, 'formatting round-trips');
    });
  }

  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['Ubuntu', /must be lowercase/],
    ['ghcr.io/Org/img', /must be lowercase/],
    ['a b', /whitespace/],
    ['repo:', /tag ""/],
    ['repo:-tag', /tag "-tag"/],
    [`repo:${'t'.repeat(129)}`, /tag/],
    ['repo:ta/g', /not a registry host/],
    ['repo@sha256:abc', /not a sha256 digest/],
    [`repo@sha512:${'a'.repeat(128)}`, /algorithm "sha512" is not supported/],
    [`repo@sha256:${'A'.repeat(64)}`, /not a sha256 digest/],
    ['repo@latest', /is not a digest/],
    ['ghcr.io/', /repository name is empty/],
    ['ghcr.io/a//b', /must be lowercase alphanumeric/],
    ['ghcr.io/a/-b', /must be lowercase alphanumeric/],
    ['ghcr.io/a/b.', /must be lowercase alphanumeric/],
    ['ghcr.io/a/b_-c', /must be lowercase alphanumeric/],
    ['bad_host.io:x/a', /not a registry host/],
    [`ghcr.io/${'a'.repeat(250)}`, /longer than 255/],
  ];
  for (const [text, why] of bad) {
    it(`rejects ${JSON.stringify(text.length > 40 ? text.slice(0, 40) + '...' : text)}`, () => {
      assert.throws(
        () => parseReference(text),
        (err: unknown) => {
          assert.ok(err instanceof InputError, String(err));
          assert.match(err.message, why);
          assert.match(err.message, /invalid image reference/);
          return true;
        },
      );
    });
  }

  it('asks for the digest when there is one, else the tag', () => {
    assert.equal(manifestReference(parseReference('a/b:v1')), 'v1');
    assert.equal(manifestReference(parseReference(`a/b:v1@${D}`)), D);
    assert.equal(manifestReference({ registry: 'r.io', repository: 'a' }), 'latest');
  });
});
