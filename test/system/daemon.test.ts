// The daemon as users run it: `erofs-ondemand daemon` in the background, `mount`/`umount`/`status`
// over its control socket, images from a real registry, misses answered through fanotify, and the
// same suite through FUSE (file-backed EROFS; the loop-device mode runs the lifecycle tests).
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { mountInfoLine, until } from '../lib/assertions';
import { execCli, publishLazy, startDaemon as launchDaemon, type Daemon } from '../lib/harness';
import { startFaultProxy, type FaultProxy } from '../lib/fault-proxy';
import { cleanup, tempDir } from '../lib/image';
import { RegistryClient } from '../../src/oci/registry';
import type { ImageManifest } from '../../src/oci/types';
import { freePort, startRegistry, type RegistryServer } from '../lib/registry-server';
import { compareTreesInChild } from '../lib/tree-compare';
import { minbaseImage, UmociImage } from '../lib/test-images';

const run = promisify(execFile);
const cli = execCli;

type Transport = 'fanotify' | 'fuse';

/** Chunks cached for the first mount that `status --json` lists. */
function cachedChunks(status: { mounts: Array<{ blobs: Array<{ cached: number }> }> }): number {
  return status.mounts[0].blobs.reduce((n, b) => n + b.cached, 0);
}

function fuseMountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((l) => l.includes(' - fuse.erofs-ondemand ') && l.split(' ')[4].startsWith(dir));
}

function daemonSuite(transport: Transport, extraFlags: string[], full: boolean) {
  describe(`daemon with ${transport} ${extraFlags.join(' ')}`.trim(), () => {
    const maybe = full ? it : it.skip;
    let registry: RegistryServer;
    let proxy: FaultProxy;
    let work: string;
    let daemon: Daemon | undefined;
    let socket: string;
    let reference: string;

    async function startDaemon(cacheDir: string, ...extra: string[]): Promise<Daemon> {
      daemon = await launchDaemon({
        cacheDir,
        socket,
        flags: ['--metrics-address', '127.0.0.1:0', '--transport', transport, ...extraFlags, ...extra],
      });
      assert.equal(fs.statSync(socket).mode & 0o777, 0o600, 'the control socket is root-only');
      return daemon;
    }

    const stopDaemon = () => daemon?.stop();

    before(async () => {
      const image = minbaseImage();
      work = tempDir(`daemon-${transport}`);
      reference = image.unpack(path.join(work, 'reference'));
      socket = path.join(work, 'control.sock');
      registry = await startRegistry();
      proxy = await startFaultProxy(registry.host);
      publishLazy(image.ref, registry.host, 'minbase');
    });
    after(async () => {
      await stopDaemon();
      await proxy?.stop();
      await registry?.stop();
      cleanup(work);
    });

    it('mounts by the original reference, runs a program, reports status, unmounts', async () => {
      await startDaemon(path.join(work, 'cache'));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      // The original reference: the daemon finds the lazy image through the referrer.
      const { stdout } = await cli('mount', '--socket', socket, `${registry.host}/library/minbase:1`, mnt);
      assert.match(stdout, /mounted at/);
      const { stdout: hello } = await run('chroot', [mnt, '/opt/app/run.sh']);
      assert.equal(hello, 'lazy hello\n');
      const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      assert.equal(status.transport, transport);
      if (transport === 'fuse') {
        assert.equal(status.fuseBacking, extraFlags.includes('loop') ? 'loop' : 'file');
        assert.equal(fuseMountsUnder(work).length, 1, 'one FUSE mount, in the cache directory');
      }
      assert.equal(status.mounts[0].target, mnt);
      const cached = cachedChunks(status);
      const total = status.mounts[0].blobs.reduce((n: number, b: { chunks: number }) => n + b.chunks, 0);
      assert.ok(cached > 0 && cached < total / 5, `a small workload cached ${cached} of ${total} chunks`);
      assert.ok(status.fetch.bytesFetched > 0 && status.fetch.verifyFailures === 0);
      await cli('umount', '--socket', socket, mnt);
      assert.equal(fs.readdirSync(mnt).length, 0, 'unmounted');
    });

    maybe('gives EIO for a chunk whose bytes the registry altered, and writes nothing to the cache', async () => {
      // A fresh daemon and cache, fetching through the fault proxy.
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-2'));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${proxy.host}/lazy/minbase:1`, mnt);
      try {
        proxy.add({ method: 'GET', path: /\/v2\/lazy\/minbase\/blobs\//, times: 1000, fault: { kind: 'corrupt' } });
        daemon!.log = '';
        await assert.rejects(run('sha256sum', [path.join(mnt, 'opt', 'app', 'bash-copy')]), (err: { stderr: string }) =>
          /Input\/output error/.test(err.stderr),
        );
        proxy.reset();
        assert.match(daemon!.log, /cache miss not served/);
        assert.match(daemon!.log, /blob sha256:[0-9a-f]{64}/);
        assert.match(daemon!.log, /does not match|zstd/);
        // Once the registry is honest again the same read succeeds: nothing wrong was cached.
        const { stdout } = await run('sha256sum', [
          path.join(mnt, 'opt', 'app', 'bash-copy'),
          path.join(mnt, 'usr', 'bin', 'bash'),
        ]);
        const sums = stdout
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[0]);
        assert.equal(sums[0], sums[1]);
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('mounts through a mirror while the upstream refuses connections: manifests, bootstrap and chunk Range GETs come from the mirror', async () => {
      await stopDaemon();
      const dead = `127.0.0.1:${await freePort()}`;
      const config = path.join(work, 'config-mirror.json');
      fs.writeFileSync(
        config,
        JSON.stringify({ registries: { hosts: { [dead]: { mirrors: [{ url: proxy.url }] } } } }),
      );
      await startDaemon(path.join(work, 'cache-mirror'), '--config', config);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      proxy.reset();
      await cli('mount', '--socket', socket, `${dead}/lazy/minbase:1`, mnt);
      try {
        assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
        const { stdout } = await run('sha256sum', [
          path.join(mnt, 'opt', 'app', 'bash-copy'),
          path.join(reference, 'opt', 'app', 'bash-copy'),
        ]);
        const [got, want] = stdout
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[0]);
        assert.equal(got, want);
        const ranges = proxy.requests.filter((r) => r.status === 206);
        assert.ok(ranges.length > 3, `${ranges.length} Range GETs through the mirror`);
        assert.ok(
          proxy.requests.every((r) => new URL(r.path, 'http://mirror').searchParams.get('ns') === dead),
          'every request names the upstream it is for',
        );
        assert.match(daemon!.log, /"message":"registry endpoint serves ranges of this blob"/);
        // The access-trace lookup finds no trace at the mirror and asks the upstream: that is the one fallback.
        const fellBack = daemon!.log
          .split('\n')
          .filter((l) => /trying the next/.test(l) && !/"op":"list referrers"/.test(l));
        assert.deepEqual(fellBack, [], 'manifests and blobs all came from the mirror');
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('passes over a mirror that alters bytes: the bootstrap and chunks come verified from the upstream, nothing wrong is cached', async () => {
      await stopDaemon();
      const registries = path.join(work, 'registries-liar.json');
      fs.writeFileSync(registries, JSON.stringify({ hosts: { [registry.host]: { mirrors: [{ url: proxy.url }] } } }));
      const cache = path.join(work, 'cache-liar');
      await startDaemon(cache, '--registries-config', registries);
      const direct = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
      const lazy = JSON.parse((await direct.getManifest('lazy/minbase', '1')).raw.toString()) as ImageManifest;
      await direct.close();
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      proxy.reset();
      daemon!.log = '';
      // The bootstrap from the mirror is altered: it is read again from the upstream.
      proxy.add({
        method: 'GET',
        path: new RegExp(`/blobs/${lazy.layers[0].digest}`),
        times: 10,
        fault: { kind: 'corrupt' },
      });
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
      try {
        assert.match(daemon!.log, /blob from a mirror failed; reading it again from the next endpoint/);
        // From now on every chunk range the mirror sends is altered.
        proxy.add({ method: 'GET', path: /\/v2\/lazy\/minbase\/blobs\//, times: 100_000, fault: { kind: 'corrupt' } });
        const { stdout } = await run('sha256sum', [
          path.join(mnt, 'opt', 'app', 'bash-copy'),
          path.join(reference, 'opt', 'app', 'bash-copy'),
        ]);
        const [got, want] = stdout
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[0]);
        assert.equal(got, want, "the right bytes, not the mirror's");
        assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
        const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
        assert.ok(status.fetch.verifyFailures >= 1, "the mirror's chunks were caught");
        assert.match(daemon!.log, /"message":"mirror passed over for this blob: its bytes failed"/);
        assert.match(daemon!.log, /chunk at \d+/);
        const { stdout: fsck } = await cli('fsck', '--socket', socket, mnt);
        assert.match(fsck, /^\d+ cached chunks checked, 0 bad/);
      } finally {
        proxy.reset();
        await cli('umount', '--socket', socket, mnt);
      }
    });

    it('after kill -9 a new daemon takes the mount over and reuses the cache without refetching', async () => {
      await stopDaemon();
      const cache = path.join(work, 'cache-restart');
      await startDaemon(cache);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
      await run('chroot', [mnt, '/opt/app/run.sh']);
      const before = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      const cachedBefore = cachedChunks(before);

      const mountId = () => mountInfoLine(mnt);
      const mountLine = mountId();
      await daemon!.stop('SIGKILL');
      // The fd holder the daemon started keeps its kernel fds: the next daemon takes the mount over in
      // place (same mount, same FUSE connection) instead of remounting.
      await startDaemon(cache);
      assert.equal(mountId(), mountLine, 'the mount was taken over, not made again');
      if (transport === 'fuse') assert.equal(fuseMountsUnder(cache).length, 1, 'the FUSE mount taken over');
      const after = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      assert.equal(after.mounts.length, 1, `restored: ${daemon!.log}`);
      assert.equal(after.mounts[0].target, mnt);
      const cachedAfter = cachedChunks(after);
      assert.equal(cachedAfter, cachedBefore, 'chunks on disk are found again');
      const { stdout } = await run('chroot', [mnt, '/opt/app/run.sh']);
      assert.equal(stdout, 'lazy hello\n');
      const again = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      assert.equal(again.fetch.bytesFetched, 0, 'nothing present was fetched again');
      await cli('umount', '--socket', socket, mnt);
    });

    maybe('a mount whose daemon dies before answering fails at once, saying so', async () => {
      await stopDaemon();
      const cache = path.join(work, 'cache-dies');
      await startDaemon(cache);
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      let asked!: () => void;
      const manifestAsked = new Promise<void>((resolve) => (asked = resolve));
      // The registry never answers: the daemon is inside the mount request when it is killed.
      proxy.add({
        method: 'GET',
        path: /\/v2\/lazy\/minbase\/manifests\//,
        fault: { kind: 'respond', respond: () => asked() },
      });
      try {
        const mounting = cli('mount', '--socket', socket, `${proxy.host}/lazy/minbase:1`, mnt);
        await manifestAsked;
        await daemon!.stop('SIGKILL');
        await assert.rejects(mounting, (err: { code: number; stderr: string }) => {
          assert.equal(err.code, 1);
          assert.match(err.stderr, /daemon at .*control\.sock closed the connection before answering/);
          return true;
        });
      } finally {
        proxy.reset();
        fs.rmSync(socket, { force: true });
      }
      // A daemon started on the same cache takes over from the dead one (FUSE: detaches its stale mount).
      await startDaemon(cache);
      await stopDaemon();
      if (transport === 'fuse') assert.deepEqual(fuseMountsUnder(cache), [], 'no FUSE mount left');
    });

    maybe(
      'runs a shell on an overlay with a writable upper, and prefetch fills the rest in the background',
      async () => {
        await stopDaemon();
        await startDaemon(path.join(work, 'cache-prefetch'), '--prefetch', '2');
        const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
        await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
        const ovl = fs.mkdtempSync(path.join(work, 'ovl-'));
        for (const d of ['upper', 'work', 'merged']) fs.mkdirSync(path.join(ovl, d));
        execFileSync('mount', [
          '-t',
          'overlay',
          'overlay',
          '-o',
          `lowerdir=${mnt},upperdir=${ovl}/upper,workdir=${ovl}/work`,
          `${ovl}/merged`,
        ]);
        try {
          const { stdout } = await run('chroot', [
            `${ovl}/merged`,
            '/bin/sh',
            '-c',
            'echo written > /tmp/new && cat /tmp/new /etc/debian_version && ls /usr/bin | wc -l',
          ]);
          const [written, version, count] = stdout.trim().split('\n');
          assert.equal(written, 'written');
          assert.match(version, /^12/);
          assert.ok(Number(count) > 100);
          assert.ok(fs.existsSync(path.join(ovl, 'upper', 'tmp', 'new')), 'writes land in the upper layer');
        } finally {
          execFileSync('umount', [`${ovl}/merged`]);
        }
        let status: { mounts: Array<{ blobs: Array<{ cached: number; chunks: number }> }> } = { mounts: [] };
        for (let i = 0; i < 600; i++) {
          status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
          if (status.mounts[0].blobs.every((b) => b.cached === b.chunks)) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.ok(
          status.mounts[0].blobs.every((b) => b.cached === b.chunks),
          `prefetch completes: ${JSON.stringify(status.mounts[0].blobs)}`,
        );
        await cli('umount', '--socket', socket, mnt);
      },
    );

    maybe('serves Prometheus metrics, verifies the cache with fsck, and prefetches on request', async () => {
      await stopDaemon();
      await startDaemon(path.join(work, 'cache-ops'));
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
      try {
        await run('chroot', [mnt, '/opt/app/run.sh']);
        const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
        assert.ok(status.fetch.latency.p50 > 0 && status.fetch.latency.p99 >= status.fetch.latency.p50);
        assert.ok(status.mounts[0].cachedBytes > 0);
        const text = await (await fetch(`http://127.0.0.1:${status.metricsPort}/metrics`)).text();
        const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
        assert.equal(value('erofs_ondemand_fetched_bytes_total'), status.fetch.bytesFetched);
        assert.ok(value('erofs_ondemand_cache_misses_total') > 0);
        assert.ok(value('erofs_ondemand_fetch_seconds_count') > 0);
        assert.ok(value('erofs_ondemand_cache_bytes') > 0);
        assert.equal(value('erofs_ondemand_verify_failures_total'), 0);
        assert.match((await cli('status', '--socket', socket)).stdout, /hit ratio/);

        // With the page cache dropped, fsck's own reads raise fanotify events the daemon must answer.
        execFileSync('sync');
        fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
        const clean = await cli('fsck', '--socket', socket, mnt);
        assert.match(clean.stdout, /^\d+ cached chunks checked, 0 bad/);
        const { stdout: pf } = await cli('prefetch', '--socket', socket, mnt);
        assert.match(pf, /^\d+ chunks fetched/);
        const full = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
        assert.ok(full.mounts[0].blobs.every((b: { cached: number; chunks: number }) => b.cached === b.chunks));

        // Damage one cached chunk behind the daemon's back: fsck finds it and exits 1.
        const blobFile = fs
          .readdirSync(path.join(work, 'cache-ops', 'blobs'))
          .map((f) => path.join(work, 'cache-ops', 'blobs', f))
          .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size)[0];
        const fd = fs.openSync(blobFile, 'r+');
        fs.writeSync(fd, Buffer.from('garbage'), 0, 7, 4096 * 3);
        fs.closeSync(fd);
        await assert.rejects(
          cli('fsck', '--socket', socket, mnt),
          (err: { code: number; stdout: string }) => err.code === 1 && /1 bad/.test(err.stdout),
        );
      } finally {
        await cli('umount', '--socket', socket, mnt);
      }
    });

    maybe('shares the cache files of blobs two mounted images have in common', async () => {
      await stopDaemon();
      const cache = path.join(work, 'cache-shared');
      await startDaemon(cache);
      // A second image: the same three layers and one more.
      const second = new UmociImage(path.join(work, 'second-layout'), 'v2');
      execFileSync('skopeo', ['copy', '-q', `oci:${minbaseImage().ref}`, `oci:${second.ref}`]);
      second.layer((r) => fs.writeFileSync(path.join(r, 'second.txt'), 'only in the second image\n'));
      publishLazy(second.ref, registry.host, 'second');
      const a = fs.mkdtempSync(path.join(work, 'mnt-'));
      const b = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, a);
      await cli('mount', '--socket', socket, `${registry.host}/library/second:1`, b);
      try {
        const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
        const blobsA = status.mounts[0].blobs.map((x: { digest: string }) => x.digest);
        const blobsB = status.mounts[1].blobs.map((x: { digest: string }) => x.digest);
        assert.deepEqual(blobsB.slice(0, blobsA.length), blobsA, "the second image reuses the first one's blobs");
        assert.equal(
          fs.readdirSync(path.join(cache, 'blobs')).length,
          new Set([...blobsA, ...blobsB]).size,
          'one cache file per distinct blob',
        );
        // A chunk fetched through one mount is a hit through the other.
        await run('chroot', [a, '/opt/app/run.sh']);
        const before = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout).fetch.bytesFetched;
        assert.equal((await run('chroot', [b, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
        assert.equal(fs.readFileSync(path.join(b, 'second.txt'), 'utf8'), 'only in the second image\n');
        const afterRead = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout).fetch.bytesFetched;
        assert.ok(
          afterRead - before < 64 << 10,
          `the second image fetched ${afterRead - before} bytes for what the first had fetched`,
        );
      } finally {
        await cli('umount', '--socket', socket, a);
        await cli('umount', '--socket', socket, b);
      }
    });

    maybe('gc evicts blobs of unmounted images, least recently used first, never those in use', async () => {
      await stopDaemon();
      const cache = path.join(work, 'cache-gc');
      await startDaemon(cache);
      const a = fs.mkdtempSync(path.join(work, 'mnt-'));
      const b = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${registry.host}/lazy/second:1`, b); // 4 blobs, the first 3 shared
      await cli('umount', '--socket', socket, b);
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, a); // uses the 3 shared blobs
      await run('chroot', [a, '/opt/app/run.sh']);
      const blobs = () => fs.readdirSync(path.join(cache, 'blobs')).sort();
      assert.equal(blobs().length, 4);
      const r = JSON.parse((await cli('gc', '--json', '--socket', socket)).stdout);
      assert.equal(r.removed.length, 1, 'only the blob no mounted image uses');
      assert.equal(blobs().length, 3);
      assert.equal(
        (await run('chroot', [a, '/opt/app/run.sh'])).stdout,
        'lazy hello\n',
        'the mounted image still reads',
      );
      await cli('umount', '--socket', socket, a);
      const all = JSON.parse((await cli('gc', '--json', '--max-size', '0', '--socket', socket)).stdout);
      assert.equal(all.removed.length, 3);
      assert.equal(all.cacheBytes, 0);
      // Mounting again after eviction fetches afresh and reads correctly.
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, a);
      assert.equal((await run('chroot', [a, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
      await cli('umount', '--socket', socket, a);
    });

    /** fanotify: a punch could race a read the kernel was allowed to make, so mounted chunks stay. */
    async function boundUnderFanotify(): Promise<void> {
      await stopDaemon();
      const cache = path.join(work, 'cache-bounded');
      await startDaemon(cache, '--cache-max-bytes', '16M');
      const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
      await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
      assert.deepEqual(await compareTreesInChild(reference, mnt), []);
      const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      assert.equal(status.evictedBytes, 0, 'no chunk of the mounted image was evicted');
      assert.ok(status.cacheBytes > 16 << 20, `the mounted image stays cached whole: ${status.cacheBytes}`);
      const kept = JSON.parse((await cli('gc', '--json', '--max-size', '4M', '--socket', socket)).stdout);
      assert.equal(kept.evictedChunkBytes, 0, JSON.stringify(kept));
      await cli('umount', '--socket', socket, mnt);
      // Unmounted, its blobs go like any unused blob (umount applies the bound).
      const after = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
      assert.ok(after.cacheBytes <= 16 << 20 && after.evictedBytes > 0, JSON.stringify(after));
    }

    maybe(
      transport === 'fanotify'
        ? 'never evicts chunks of a mounted image (the kernel reads after the answer), only blobs no mount uses'
        : 'keeps the cache within a bound smaller than the image: oldest chunks are evicted, every file still reads correctly',
      async () => {
        if (transport === 'fanotify') return boundUnderFanotify();
        await stopDaemon();
        const cache = path.join(work, 'cache-bounded');
        // The image holds about 170 MB of file data. The bound must exceed what reads in flight pin (FUSE:
        // up to 64 requests of 1 MiB), since a chunk being read is never evicted under its reader.
        const bound = 96 << 20;
        await startDaemon(cache, '--cache-max-bytes', '96M', '--prefetch', '2');
        const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
        await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
        const onDisk = () =>
          fs
            .readdirSync(path.join(cache, 'blobs'))
            .reduce((n, f) => n + fs.statSync(path.join(cache, 'blobs', f)).blocks * 512, 0);
        let peak = 0;
        const sampler = setInterval(() => (peak = Math.max(peak, onDisk())), 20);
        try {
          assert.deepEqual(await compareTreesInChild(reference, mnt), []);
        } finally {
          clearInterval(sampler);
        }
        peak = Math.max(peak, onDisk());
        assert.ok(
          peak <= bound,
          `the cache reached ${peak} bytes, above its bound of ${bound}; ${daemon!.log
            .split('\n')
            .filter((l) => /bound/.test(l))
            .slice(0, 3)
            .join(' | ')}`,
        );
        const status = JSON.parse((await cli('status', '--json', '--socket', socket)).stdout);
        assert.ok(status.evictedBytes > 40 << 20, `reading the whole image evicted only ${status.evictedBytes} bytes`);
        assert.equal(status.cacheBoundBytes, bound);
        // gc with a smaller bound takes chunks of the mounted image too; it still reads.
        const r = JSON.parse((await cli('gc', '--json', '--max-size', '4M', '--socket', socket)).stdout);
        assert.ok(r.evictedChunkBytes > 0 && r.cacheBytes <= 4 << 20, JSON.stringify(r));
        assert.ok(onDisk() <= 4 << 20);
        assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
        const fsck = JSON.parse((await cli('fsck', '--json', '--socket', socket, mnt)).stdout);
        assert.deepEqual(fsck.bad, []);
        await cli('umount', '--socket', socket, mnt);
      },
    );

    it(
      transport === 'fanotify'
        ? 'stops on SIGTERM while a mount is busy: the reader still gets correct data after the daemon is gone'
        : 'stops on SIGTERM while a mount is busy: the mount is detached, the reader gets EIO (never zeros), no FUSE mount or loop device is left',
      async () => {
        await stopDaemon();
        await startDaemon(path.join(work, 'cache-busy'));
        const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
        await cli('mount', '--socket', socket, `${registry.host}/lazy/minbase:1`, mnt);
        // Holds a file open (the mount is busy) across the daemon's shutdown, then reads it.
        const reader = run('sh', ['-c', `exec 3< ${mnt}/opt/app/bash-copy; sleep 3; sha256sum <&3`]);
        const fd3 = `/proc/${reader.child.pid}/fd/3`;
        const holdsFile = () => {
          try {
            return fs.readlinkSync(fd3).startsWith(mnt);
          } catch {
            return false;
          }
        };
        await until(holdsFile, 'the reader to hold the file open', 10_000);
        await stopDaemon();
        assert.equal(daemon!.process.exitCode, 0);
        assert.equal(fs.existsSync(socket), false, 'socket removed');
        const expected = execFileSync('sha256sum', [path.join(reference, 'opt', 'app', 'bash-copy')], {
          encoding: 'utf8',
        }).split(' ')[0];
        if (transport === 'fanotify') {
          const { stdout } = await reader;
          assert.equal(stdout.split(' ')[0], expected, 'no zeros after the daemon stopped');
        } else {
          await assert.rejects(
            reader,
            (err: { stderr: string }) => /Input\/output error|not connected/.test(err.stderr),
            'EIO, not zeros',
          );
          assert.deepEqual(fuseMountsUnder(work), [], 'no FUSE mount left');
          // Autoclear loop devices go with the last user of the detached mount (the reader, gone now).
          let loops = '';
          for (let i = 0; i < 100; i++) {
            loops = execFileSync('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE'], { encoding: 'utf8' });
            if (!loops.includes(work)) break;
            await new Promise((r) => setTimeout(r, 50));
          }
          assert.ok(!loops.includes(work), `no loop device left: ${loops}`);
        }
        assert.ok(!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(mnt), 'the mount was detached');
      },
    );
  });
}

daemonSuite('fanotify', [], true);
daemonSuite('fuse', [], true);
daemonSuite('fuse', ['--fuse-backing', 'loop'], false);
