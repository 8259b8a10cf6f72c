// Access traces end to end against Debian's docker-registry (no referrers API: the tag-schema
// fallback) with the daemon on fanotify: a mount's trace pushed and read back, replayed on a fresh
// cache, a trace of another image or with a wrong chunk digest ignored, and `trace record`.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { CREATED_ANNOTATION, pushArtifact } from '../../src/oci/artifacts';
import { RegistryClient } from '../../src/oci/registry';
import type { Descriptor } from '../../src/oci/types';
import { TRACE_ARTIFACT_TYPE } from '../../src/daemon/trace-store';
import { TRACE_MEDIA_TYPE, type AccessTrace } from '../../src/storage/access-trace';
import { until } from '../lib/assertions';
import { execCli, execCliSync, publishLazy, runCliAsync, startDaemon, type Daemon } from '../lib/harness';
import { cleanup, tempDir } from '../lib/image';
import { startRegistry, type RegistryServer } from '../lib/registry-server';
import { minbaseImage } from '../lib/test-images';

const run = promisify(execFile);

interface Status {
  transportRequests: number;
  fetch: { chunksFetched: number };
  mounts: Array<{ target: string; hitRatio: number | null; blobs: Array<{ cached: number }> }>;
}

describe('access traces through the registry', () => {
  let registry: RegistryServer;
  let work: string;
  let socket: string;
  let daemon: Daemon | undefined;
  let image: string;
  let other: string;
  let subject: Descriptor;
  /** The trace pushed by the first test. */
  let pushed: AccessTrace;

  async function freshDaemon(name: string): Promise<Daemon> {
    await daemon?.stop();
    daemon = await startDaemon({
      cacheDir: path.join(work, name),
      socket,
      flags: ['--transport', 'fanotify', '--metrics-address', ''],
    });
    return daemon;
  }

  async function status(): Promise<Status> {
    return JSON.parse((await execCli('status', '--json', '--socket', socket)).stdout) as Status;
  }

  /** The daemon's warnings: message and error of each warn line of its log. */
  const warnings = (log: string): string[] =>
    log
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: string; message: string; error?: string })
      .filter((e) => e.level === 'warn')
      .map((e) => `${e.message}: ${e.error ?? ''}`);

  const cached = (s: Status) => s.mounts[0].blobs.reduce((n, b) => n + b.cached, 0);

  async function mount(ref: string): Promise<string> {
    const mnt = fs.mkdtempSync(path.join(work, 'mnt-'));
    await execCli('mount', '--socket', socket, ref, mnt);
    return mnt;
  }

  async function traceOf(target: string): Promise<AccessTrace> {
    return JSON.parse((await execCli('trace', 'show', '--json', '--socket', socket, target)).stdout) as AccessTrace;
  }

  /** Pushes `trace` as a trace artifact of the lazy image, as a node would (created now). */
  async function pushAsTrace(trace: AccessTrace): Promise<void> {
    const client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    try {
      await pushArtifact(
        client,
        'lazy/minbase',
        subject,
        TRACE_ARTIFACT_TYPE,
        { [CREATED_ANNOTATION]: new Date().toISOString() },
        { mediaType: TRACE_MEDIA_TYPE, data: Buffer.from(JSON.stringify(trace)) },
      );
    } finally {
      await client.close();
    }
  }

  before(async () => {
    const img = minbaseImage();
    work = tempDir('trace');
    socket = path.join(work, 'control.sock');
    registry = await startRegistry();
    image = publishLazy(img.ref, registry.host, 'minbase').lazy;
    other = `${registry.host}/lazy/other:1`;
    // The same files in other chunks: another lazy image, with other blobs.
    execCliSync(['convert', '-q', '--chunk-size', '256K', `${registry.host}/library/minbase:1`, other]);
    const client = new RegistryClient(registry.host, { plainHttp: true, credentials: null });
    const m = await client.getManifest('lazy/minbase', '1');
    await client.close();
    subject = { mediaType: m.mediaType, digest: m.digest, size: m.raw.length };
  });
  after(async () => {
    await daemon?.stop();
    await registry?.stop();
    cleanup(work);
  });

  it("records a mount's first accesses, pushes them, and shows the same trace from the registry", async () => {
    await freshDaemon('cache-record');
    const mnt = await mount(image);
    try {
      assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
      const recording = await traceOf(mnt);
      assert.equal(recording.image, subject.digest);
      assert.ok(recording.entries.length > 0, 'the program read chunks');
      const human = (await execCli('trace', 'show', '--socket', socket, mnt)).stdout;
      assert.match(human, /entries +\d+ chunks in \d+ blobs/);
      assert.match(human, /state +recording/);
      const { stdout } = await execCli('trace', 'push', '--json', '--socket', socket, mnt);
      const result = JSON.parse(stdout) as { artifact: string; entries: number; bytes: number };
      assert.match(result.artifact, /^sha256:[0-9a-f]{64}$/);
      pushed = await traceOf(mnt);
      assert.equal(result.entries, pushed.entries.length);
      assert.ok(result.bytes > 0);
      assert.ok(pushed.entries.length >= recording.entries.length);
      assert.match((await execCli('trace', 'show', '--socket', socket, mnt)).stdout, /window closed \(command\)/);
      // Read back from the registry (the original reference leads to the lazy image through its referrer).
      for (const ref of [image, `${registry.host}/library/minbase:1`]) {
        const shown = JSON.parse((await execCli('trace', 'show', '--json', ref)).stdout) as AccessTrace;
        assert.deepEqual(shown, pushed);
      }
      assert.match((await execCli('trace', 'show', image)).stdout, new RegExp(`entries +${pushed.entries.length} `));
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
  });

  it("replays the registry's trace on a fresh cache before any read, and the program then fetches nothing", async () => {
    const d = await freshDaemon('cache-replay');
    const mnt = await mount(image);
    try {
      const distinct = new Set(pushed.entries.map((e) => `${e.blob}:${e.chunk}`)).size;
      await until(() => /"message":"access trace replayed"/.test(d.log), 'the trace replayed', 30_000);
      assert.match(d.log, new RegExp(`"message":"replaying an access trace".*"source":"sha256:`));
      const before = await status();
      assert.equal(cached(before), distinct, 'exactly the traced chunks are cached');
      assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
      const afterRun = await status();
      assert.equal(afterRun.fetch.chunksFetched, before.fetch.chunksFetched, 'nothing fetched on demand');
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
  });

  it('records the chunks a program reads from the cache, which the kernel side allows without the daemon', async () => {
    await freshDaemon('cache-hits');
    const mnt = await mount(image);
    try {
      await execCli('prefetch', '--socket', socket, mnt);
      const before = await status();
      assert.equal((await run('chroot', [mnt, '/opt/app/run.sh'])).stdout, 'lazy hello\n');
      const afterRun = await status();
      assert.equal(afterRun.transportRequests, before.transportRequests, 'no read reached the daemon');
      assert.equal(afterRun.fetch.chunksFetched, before.fetch.chunksFetched);
      await until(async () => ((await status()).mounts[0].hitRatio ?? 0) > 0, 'the hits counted', 5_000);
      const chunks = (t: AccessTrace) => new Set(t.entries.map((e) => `${e.blob}:${e.chunk}`));
      await until(
        async () => chunks(await traceOf(mnt)).size >= chunks(pushed).size,
        'the reads reported to the trace',
        5_000,
      );
      assert.deepEqual(chunks(await traceOf(mnt)), chunks(pushed), 'the same chunks as when each was a miss');
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
  });

  it('ignores, with a warning, a trace of another image pushed as a referrer of this one', async () => {
    await freshDaemon('cache-other');
    const mnt2 = await mount(other);
    let otherTrace: AccessTrace;
    try {
      await run('chroot', [mnt2, '/opt/app/run.sh']);
      otherTrace = await traceOf(mnt2);
    } finally {
      await execCli('umount', '--socket', socket, mnt2);
    }
    assert.notEqual(otherTrace.image, subject.digest);
    await pushAsTrace(otherTrace);
    const d = await freshDaemon('cache-other-2');
    const mnt = await mount(image);
    try {
      await until(() => /access trace in the registry ignored/.test(d.log), 'the warning', 30_000);
      assert.match(warnings(d.log).join('\n'), /access trace in the registry ignored: .*it is the trace of/);
      assert.doesNotMatch(d.log, /access trace replayed/);
      assert.equal(cached(await status()), 0, 'nothing prefetched');
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
  });

  it('ignores, with a warning, a trace with one wrong chunk digest', async () => {
    const bad = structuredClone(pushed);
    const k = bad.entries.length >> 1;
    bad.entries[k].digest = bad.entries[k].digest.replace(/^./, (c) => (c === '0' ? '1' : '0'));
    await pushAsTrace(bad);
    const shown = await execCli('trace', 'show', image);
    assert.match(shown.stderr, new RegExp(`warning: .*entry ${k}: .*; daemons ignore this trace`));
    assert.match(shown.stdout, new RegExp(`entries +${bad.entries.length} `), 'shown all the same');
    const d = await freshDaemon('cache-bad-digest');
    const mnt = await mount(image);
    try {
      await until(() => /access trace in the registry ignored/.test(d.log), 'the warning', 30_000);
      assert.match(
        warnings(d.log).join('\n'),
        new RegExp(
          `access trace in the registry ignored: .*entry ${k}: chunk ${bad.entries[k].chunk} of blob .* digest`,
        ),
      );
      assert.doesNotMatch(d.log, /access trace replayed/);
      assert.equal(cached(await status()), 0, 'nothing prefetched');
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
  });

  it('trace record mounts the image, runs the command in it, pushes the trace and cleans up', async () => {
    await freshDaemon('cache-ci');
    const leftovers = () => fs.readdirSync(os.tmpdir()).filter((f) => f.startsWith('erofs-ondemand-trace-'));
    const already = leftovers();
    const r = await runCliAsync([
      'trace',
      'record',
      '--json',
      '--socket',
      socket,
      image,
      '--',
      '/bin/sh',
      '-c',
      'echo written > /tmp/x && cat /tmp/x && /opt/app/run.sh && test -r /proc/cpuinfo && echo proc',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.deepEqual(lines.slice(0, 3), ['written', 'lazy hello', 'proc'], 'ran in the image, writable, with /proc');
    const result = JSON.parse(lines[3]) as { artifact: string; entries: number };
    assert.ok(result.entries > 0);
    const shown = JSON.parse((await execCli('trace', 'show', '--json', image)).stdout) as AccessTrace;
    assert.equal(shown.entries.length, result.entries, 'the newest trace in the registry is the recorded one');
    assert.deepEqual(leftovers(), already, 'temporary directories removed');
    assert.equal((await status()).mounts.length, 0, 'unmounted');

    const failed = await runCliAsync(['trace', 'record', '--socket', socket, image, '--', '/bin/sh', '-c', 'exit 3']);
    assert.equal(failed.status, 1);
    assert.match(failed.stderr, /exited with 3: its trace is not pushed/);
    assert.match(failed.stdout, /entries +\d+ chunks/);
    assert.equal((await status()).mounts.length, 0, 'unmounted after a failure too');
  });

  it('trace record also reads what a container start reads of the image before the command', async () => {
    const chunks = (t: AccessTrace) => new Set(t.entries.map((e) => `${e.blob}:${e.chunk}`));
    // The chunks of /etc/passwd and /etc/group: the first accesses of a mount that reads only them.
    await freshDaemon('cache-runtime-reads');
    const mnt = await mount(image);
    let read: Set<string>;
    try {
      for (const f of ['etc/passwd', 'etc/group']) assert.ok(fs.readFileSync(path.join(mnt, f)).length > 0, f);
      await until(async () => (await traceOf(mnt)).entries.length > 0, 'the reads reported to the trace', 5_000);
      read = chunks(await traceOf(mnt));
    } finally {
      await execCli('umount', '--socket', socket, mnt);
    }
    // containerd reads both to build a container's spec; a command that reads neither still has them traced.
    const r = await runCliAsync(['trace', 'record', '--json', '--socket', socket, image, '--', '/bin/sh', '-c', ':']);
    assert.equal(r.status, 0, r.stderr);
    const recorded = chunks(JSON.parse((await execCli('trace', 'show', '--json', image)).stdout) as AccessTrace);
    for (const c of read) assert.ok(recorded.has(c), `chunk ${c} of /etc/passwd or /etc/group is not in the trace`);
  });
});
