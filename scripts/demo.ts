// `make demo`: the main job end to end on this machine. A sample image is built from Debian packages
// (debootstrap minbase + python3, via umoci), pushed to a local registry (Debian's docker-registry on
// 127.0.0.1), converted to the lazy format, and started twice from a cold page cache: the traditional
// way (pull + unpack, then run) and lazily (erofs-ondemand daemon + mount, then run).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, type Daemon } from '../test/lib/harness';
import { startRegistry } from '../test/lib/registry-server';
import { pythonImage } from '../test/lib/test-images';
import { cli, dropCaches, numberTable, timed } from './lib';

const PROGRAM = [
  '/usr/bin/python3',
  '-c',
  'import platform, json; print(json.dumps({"hello": "from a lazily loaded image", "python": platform.python_version()}))',
];

const say = (s: string) => process.stdout.write(`${s}\n`);

async function main(): Promise<void> {
  const work = fs.mkdtempSync('/var/tmp/erofs-ondemand-demo-');
  const registry = await startRegistry();
  const socket = path.join(work, 'control.sock');
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt);
  let daemon: Daemon | undefined;
  try {
    daemon = await startDaemon({
      cacheDir: path.join(work, 'cache'),
      socket,
      env: { EROFS_ONDEMAND_LOG_LEVEL: 'warn' },
      stderr: 'inherit',
    });
    say('== 1. a sample image from Debian packages (debootstrap minbase + python3; cached after the first run)');
    const image = pythonImage();
    const src = `${registry.host}/demo/python:1`;
    execFileSync('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${image.ref}`, `docker://${src}`]);
    const layers = JSON.parse(
      execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${src}`], { encoding: 'utf8' }),
    ).layers as Array<{ size: number }>;
    const imageBytes = layers.reduce((n, l) => n + l.size, 0);
    say(
      `   pushed to the local registry as ${src}: ${layers.length} layers, ${(imageBytes / 1e6).toFixed(1)} MB compressed`,
    );

    say('== 2. convert it to the lazy format (bootstrap + chunked blobs), pushed next to it');
    const converted = JSON.parse(cli('convert', '--json', src, `${registry.host}/demo/python-lazy:1`));
    say(
      `   ${converted.target.ref}@${converted.target.digest.slice(0, 19)}…: bootstrap ${(converted.bootstrapBytes / 1e6).toFixed(2)} MB, ${converted.blobs.length} blobs, ${converted.seconds.toFixed(1)} s`,
    );

    say('== 3. traditional start: pull + unpack, then run (page cache dropped)');
    dropCaches();
    const [full, fullSeconds] = timed(() => {
      execFileSync('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${src}`, `oci:${work}/pulled:1`]);
      execFileSync('umoci', ['unpack', '--image', `${work}/pulled:1`, `${work}/bundle`], { stdio: 'ignore' });
      return execFileSync('chroot', [`${work}/bundle/rootfs`, ...PROGRAM], { encoding: 'utf8' });
    });
    say(`   ${full.trim()}`);

    say('== 4. lazy start: erofs-ondemand mount (by the original reference), then run (page cache dropped)');
    dropCaches();
    const [lazy, lazySeconds] = timed(() => {
      cli('mount', '--socket', socket, src, mnt);
      return execFileSync('chroot', [mnt, ...PROGRAM], { encoding: 'utf8' });
    });
    say(`   ${lazy.trim()}`);
    const status = JSON.parse(cli('status', '--json', '--socket', socket));
    say(
      `   transport: ${status.transport}; chunks cached: ${status.mounts[0].blobs.map((b: { cached: number; chunks: number }) => `${b.cached}/${b.chunks}`).join(', ')}`,
    );
    if (lazy !== full) throw new Error('the lazy run printed something else than the full one');

    say('');
    const rows = [
      ['start', 'seconds to first result', 'MB fetched'],
      ['full pull + unpack', fullSeconds.toFixed(2), (imageBytes / 1e6).toFixed(1)],
      ['lazy (erofs-ondemand)', lazySeconds.toFixed(2), (status.fetch.bytesFetched / 1e6).toFixed(1)],
    ];
    say(numberTable(rows));
    cli('umount', '--socket', socket, mnt);
  } finally {
    await daemon?.stop();
    await registry.stop();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`demo: ${(err as Error).stack}\n`);
  process.exit(1);
});
