// Issue 19's sequence against Debian's docker-registry and a daemon: a conversion to a local `oci:`
// layout leaves nothing in the source registry; a stale referrer naming a local path (what older
// versions wrote there) is listed before the good one; a mount of the original reference still finds
// the lazy image the registry conversion made.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Annotation, LazyMediaType } from '../../src/convert/lazy-image';
import { pushArtifact } from '../../src/oci/artifacts';
import { RegistryClient } from '../../src/oci/registry';
import { MediaType } from '../../src/oci/types';
import { execCli, runCliAsync, startDaemon, type ConvertJson, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { pushSmallImage, smallImage } from '../lib/small-image';

describe('the lazy image found from the original reference', () => {
  let registry: RegistryServer;
  let client: RegistryClient;
  let work: string;
  let daemon: Daemon | undefined;
  const img = smallImage();
  const subject = { mediaType: MediaType.ociManifest, digest: img.digest, size: img.manifest.length };

  before(async () => {
    work = tempDir('referrer-lookup');
    registry = await startRegistry();
    client = new RegistryClient(registry.host, { plainHttp: true });
    await pushSmallImage(client, 'library/app', '1', img);
  });
  after(async () => {
    await daemon?.stop();
    await client?.close();
    await registry?.stop();
    cleanup(work);
  });

  const source = () => `${registry.host}/library/app:1`;
  const env = () => ({ XDG_CACHE_HOME: path.join(work, 'xdg') });
  const lazyReferrers = () => client.referrers('library/app', img.digest, LazyMediaType.referrer);

  it('converts to an oci: layout without writing a referrer into the source registry', async () => {
    const r = await runCliAsync(['convert', '--json', source(), `oci:${work}/out:1`], { env: env() });
    assert.equal(r.status, 0, r.stderr);
    assert.equal((JSON.parse(r.stdout) as ConvertJson).referrer, null);
    assert.deepEqual(await lazyReferrers(), []);
  });

  it('mounts the original reference past a stale referrer to a local path listed first', async () => {
    // What a convert to `oci:` wrote next to the source before it stopped doing so.
    const stale = `oci:${work}/out:1@${img.digest}`;
    await pushArtifact(client, 'library/app', subject, LazyMediaType.referrer, { [Annotation.image]: stale });
    const r = await runCliAsync(['convert', '--json', source(), `${registry.host}/lazy/app:1`], { env: env() });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as ConvertJson;
    assert.deepEqual(
      (await lazyReferrers()).map((d) => d.annotations?.[Annotation.image]),
      [stale, `${registry.host}/lazy/app:1@${out.target.digest}`],
      'the stale referrer is listed first',
    );

    const socket = path.join(work, 'control.sock');
    daemon = await startDaemon({
      cacheDir: path.join(work, 'cache'),
      socket,
      flags: ['--transport', 'fuse', '--metrics-address', '127.0.0.1:0'],
    });
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, source(), mnt);
    try {
      assert.equal(fs.readFileSync(path.join(mnt, 'app', 'hello.txt'), 'utf8'), 'hello through a mirror\n');
      assert.ok(fs.readFileSync(path.join(mnt, 'app', 'data.bin')).equals(img.payload));
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
    assert.match(daemon.log, /passing over a referrer that leads to no lazy image/);
    assert.ok(daemon.log.includes(stale), 'the warning names the stale referrer');
  });
});
