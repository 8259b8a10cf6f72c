// The snapshotter's model without containerd or mounts: containerd's filter syntax, the snapshot
// lifecycle and its error codes, metadata surviving a restart, lazy layers with a fake daemon.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { DEFAULT_SNAPSHOTTER_SOCKET, DEFAULT_SOCKET, snapshotterSocket } from '../../src/defaults';
import { compileFilters } from '../../src/snapshotter/filters';
import { SnapshotMetadata } from '../../src/snapshotter/metadata';
import { Label, Snapshotter, SnapshotError, type LazyImages } from '../../src/snapshotter/snapshotter';

const dirs: string[] = [];
after(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
function root(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'eo-sn-'));
  dirs.push(d);
  return path.join(d, 'snapshots');
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof SnapshotError, String(err));
    return err.code;
  }
  return 'OK';
}

it('serves the default snapshotter socket only for the daemon on the default control socket', () => {
  assert.equal(snapshotterSocket(undefined, DEFAULT_SOCKET), DEFAULT_SNAPSHOTTER_SOCKET);
  assert.equal(snapshotterSocket(undefined, '/tmp/other.sock'), '', 'two daemons never contend for it');
  assert.equal(snapshotterSocket('', DEFAULT_SOCKET), '');
  assert.equal(snapshotterSocket('/x/sn.sock', '/tmp/other.sock'), '/x/sn.sock');
});

describe('containerd filters', () => {
  const fields = (f: Record<string, string>) => (p: readonly string[]) =>
    p[0] === 'labels' ? f[`labels.${p[1]}`] : f[p.join('.')];
  it('matches the filter containerd sends after ALREADY_EXISTS', () => {
    const match = compileFilters([`labels."containerd.io/snapshot.ref"==sha256:ab,parent=="ns/1/sha256:cd"`]);
    const labels = { 'labels.containerd.io/snapshot.ref': 'sha256:ab' };
    assert.ok(match(fields({ ...labels, parent: 'ns/1/sha256:cd' })));
    assert.ok(!match(fields({ ...labels, parent: 'ns/1/sha256:ce' })));
    assert.ok(!match(fields({ parent: 'ns/1/sha256:cd' })));
  });
  it('ORs filters, ANDs terms, knows != ~= and presence', () => {
    const match = compileFilters(['name==a', 'kind~=^Comm,labels.x']);
    assert.ok(match(fields({ name: 'a' })));
    assert.ok(match(fields({ name: 'b', kind: 'Committed', 'labels.x': '1' })));
    assert.ok(!match(fields({ name: 'b', kind: 'Committed' })));
    assert.ok(compileFilters(['name!=a'])(fields({ name: 'b' })));
    assert.ok(compileFilters([])(fields({})));
  });
  it('refuses bad syntax naming the filter', () => {
    assert.throws(() => compileFilters(['labels."x==1']), /unterminated.*|filter/);
    assert.throws(() => compileFilters(['name~=(']), /invalid regular expression/);
  });
});

describe('snapshotter', () => {
  it('gives containerd overlay mounts: bind for one directory, overlay over parents', async () => {
    const sn = new Snapshotter(root(), null);
    const [base] = await sn.prepare('a', '', {});
    assert.equal(base.type, 'bind');
    assert.deepEqual(base.options, ['rw', 'rbind']);
    await sn.commit('A', 'a', {});
    const [view] = await sn.view('v', 'A', {});
    assert.equal(view.type, 'bind');
    assert.deepEqual(view.options, ['ro', 'rbind']);
    assert.equal(view.source, base.source, 'a view of one layer is that layer');
    const [active] = await sn.prepare('b', 'A', {});
    assert.equal(active.type, 'overlay');
    assert.deepEqual(
      active.options.map((o) => o.split('=')[0]),
      ['workdir', 'upperdir', 'lowerdir'],
    );
    assert.equal(active.options[2], `lowerdir=${base.source}`);
  });

  it('answers with the status codes containerd tells apart', async () => {
    const sn = new Snapshotter(root(), null);
    await sn.prepare('a', '', {});
    assert.equal(await code(sn.prepare('a', '', {})), 'ALREADY_EXISTS');
    assert.equal(await code(sn.stat('nope')), 'NOT_FOUND');
    assert.equal(await code(sn.prepare('b', 'a', {})), 'FAILED_PRECONDITION', 'parent not committed');
    await sn.commit('A', 'a', {});
    await sn.prepare('b', 'A', {});
    assert.equal(await code(sn.remove('A')), 'FAILED_PRECONDITION', 'has a child');
    assert.equal(await code(sn.mounts('A')), 'FAILED_PRECONDITION', 'committed');
    assert.equal(await code(sn.list(['name~=('])), 'INVALID_ARGUMENT');
    assert.equal(await code(sn.prepare('', '', {})), 'INVALID_ARGUMENT');
    assert.equal(await code(sn.commit('', 'b', {})), 'INVALID_ARGUMENT');
  });

  it('keeps its snapshots across a restart, and Update changes labels only', async () => {
    const dir = root();
    const sn = new Snapshotter(dir, null);
    await sn.prepare('a', '', { x: '1' });
    await sn.commit('A', 'a', { y: '2' });
    await sn.prepare('b', 'A', {});
    const updated = await sn.update({ ...(await sn.stat('A')), labels: { z: '3' } }, ['labels.z', 'labels.x']);
    assert.deepEqual(updated.labels, { y: '2', z: '3' });
    const again = new Snapshotter(dir, null);
    assert.deepEqual(await again.list([]), await sn.list([]));
    assert.deepEqual(await again.mounts('b'), await sn.mounts('b'));
  });

  it('replaces its metadata file whole, and a write that fails changes nothing', async () => {
    const dir = root();
    const file = path.join(dir, 'metadata.json');
    const meta = new SnapshotMetadata(file);
    const s = { id: meta.newId(), name: 'a', parent: '', kind: 'ACTIVE' as const, created: 1, updated: 1, labels: {} };
    await meta.update((m) => m.set('a', s));
    assert.deepEqual(fs.readdirSync(dir), ['metadata.json'], 'no file left beside it');
    assert.deepEqual(new SnapshotMetadata(file).get('a'), s);

    // The temporary file cannot be made: the write fails, naming it, and the snapshot stays unknown.
    fs.mkdirSync(`${file}.tmp`);
    fs.writeFileSync(path.join(`${file}.tmp`, 'x'), '');
    await assert.rejects(
      meta.update((m) => m.set('b', { ...s, name: 'b' })),
      (err: NodeJS.ErrnoException) => err.code === 'EISDIR' && err.path === `${file}.tmp`,
    );
    assert.equal(meta.get('b'), undefined);
    assert.deepEqual(new SnapshotMetadata(file).all(), [s]);
  });

  it('Cleanup removes only directories no snapshot owns', async () => {
    const dir = root();
    const sn = new Snapshotter(dir, null);
    await sn.prepare('a', '', {});
    fs.mkdirSync(path.join(dir, '99', 'fs'), { recursive: true });
    await sn.cleanup();
    assert.deepEqual(fs.readdirSync(dir).sort(), ['1', 'metadata.json']);
  });

  describe('lazy layers', () => {
    const manifest = 'sha256:m';
    const layers = ['sha256:l1', 'sha256:l2'];
    function fake(sourceDigest = manifest) {
      const calls: string[] = [];
      const warmed: string[] = [];
      const mounted = new Set<string>();
      const lazy: LazyImages = {
        warm: (image) => void warmed.push(image),
        find: async (ref, digest) => (
          calls.push(`find ${ref} ${digest}`),
          { image: 'reg/lazy@sha256:z', sourceDigest }
        ),
        mount: async (image, id) => {
          calls.push(`mount ${image}`);
          mounted.add(`/mnt/lazy-${id}`);
          return `/mnt/lazy-${id}`;
        },
        unmount: async (target) => {
          calls.push(`unmount ${target}`);
          mounted.delete(target);
        },
        mounted: (target) => mounted.has(target),
        fetchLayer: async () => assert.fail('no layer is downloaded'),
      };
      return { lazy, calls, mounted, warmed };
    }
    const labels = (i: number) => ({
      [Label.ref]: `chain-${i}`,
      [Label.imageRef]: 'reg/app:1',
      [Label.manifestDigest]: manifest,
      [Label.layerDigest]: layers[i],
      [Label.imageLayers]: layers.slice(i).join(','),
    });

    it('commits every layer at once, mounts the image under a container, unmounts after the last', async () => {
      const { lazy, calls, warmed } = fake();
      const sn = new Snapshotter(root(), lazy);
      assert.equal(await code(sn.prepare('x0', '', labels(0))), 'ALREADY_EXISTS');
      assert.deepEqual(warmed, [], 'the warm-up starts once the answer is on its way');
      await new Promise(setImmediate);
      assert.equal(warmed[0], 'reg/lazy@sha256:z', 'the mount is prepared while the pull goes on');
      assert.equal(await code(sn.prepare('x1', 'x0', labels(1))), 'ALREADY_EXISTS');
      assert.equal(await code(sn.prepare('y1', 'x0', labels(1))), 'ALREADY_EXISTS', 'a second pull');
      assert.deepEqual(calls, [`find reg/app:1 ${manifest}`], 'one lookup per image, of the manifest containerd pulls');
      assert.equal((await sn.stat('x1')).kind, 'COMMITTED');
      const [c1] = await sn.prepare('c1', 'x1', {});
      assert.equal(c1.type, 'overlay');
      assert.equal(c1.options.at(-1), `lowerdir=/mnt/lazy-2`);
      await sn.prepare('c2', 'x1', {});
      assert.deepEqual(calls.slice(1), ['mount reg/lazy@sha256:z'], 'one mount for both containers');
      await sn.remove('c1');
      assert.equal(calls.length, 2);
      await sn.remove('c2');
      assert.deepEqual(calls.slice(2), ['unmount /mnt/lazy-2']);
    });

    it('mounts the image again when the daemon no longer has it (stopped and started)', async () => {
      const { lazy, calls, mounted } = fake();
      const sn = new Snapshotter(root(), lazy);
      await code(sn.prepare('x0', '', labels(0)));
      await code(sn.prepare('x1', 'x0', labels(1)));
      await sn.prepare('c1', 'x1', {});
      mounted.clear();
      await sn.prepare('c2', 'x1', {});
      assert.deepEqual(calls.slice(1), ['mount reg/lazy@sha256:z', 'mount reg/lazy@sha256:z']);
      mounted.clear();
      await sn.remove('c1');
      await sn.remove('c2');
      assert.equal(calls.length, 3, 'nothing to unmount: the daemon has no mount there');
    });

    it('mounts the image again for Mounts of a container prepared before the daemon lost it', async () => {
      const { lazy, calls, mounted } = fake();
      const sn = new Snapshotter(root(), lazy);
      await code(sn.prepare('x0', '', labels(0)));
      await code(sn.prepare('x1', 'x0', labels(1)));
      await sn.prepare('c1', 'x1', {});
      // A daemon that could not keep the mount was restarted; containerd now starts c1's task.
      mounted.clear();
      const [m] = await sn.mounts('c1');
      assert.equal(m.options.at(-1), 'lowerdir=/mnt/lazy-2');
      assert.ok(mounted.has('/mnt/lazy-2'), 'never a lower directory with nothing mounted on it');
      assert.deepEqual(calls.slice(1), ['mount reg/lazy@sha256:z', 'mount reg/lazy@sha256:z']);
    });

    it('unpacks as usual when the lazy image was converted from another manifest', async () => {
      const { lazy } = fake('sha256:other');
      const sn = new Snapshotter(root(), lazy);
      const [m] = await sn.prepare('x0', '', labels(0));
      assert.equal(m.type, 'bind');
      assert.equal((await sn.stat('x0')).kind, 'ACTIVE');
    });

    it('unpacks lazy layers below the top when an image without a lazy form is built on them', async () => {
      const { lazy, calls } = fake();
      const layer = path.join(path.dirname(root()), 'layer');
      fs.mkdirSync(layer);
      fs.writeFileSync(path.join(layer, 'base-file'), 'from layer 0\n');
      lazy.fetchLayer = async (ref, digest, file) => {
        calls.push(`fetch ${ref} ${digest}`);
        execFileSync('tar', ['-cf', file, '-C', layer, '.']);
      };
      const sn = new Snapshotter(root(), lazy);
      await code(sn.prepare('x0', '', labels(0)));
      const [m] = await sn.prepare('other', 'x0', {});
      assert.deepEqual(calls.slice(1), ['fetch reg/app:1 sha256:l1'], 'the layer, from the image that placed it');
      assert.equal(m.type, 'overlay');
      const lower = (m.options.at(-1) as string).slice('lowerdir='.length);
      assert.equal(fs.readFileSync(path.join(lower, 'base-file'), 'utf8'), 'from layer 0\n');
      assert.equal((await sn.stat('x0')).labels[Label.lazyImage], undefined, 'an ordinary layer now');
    });
  });
});
