#!/usr/bin/env node
// erofs-ondemand: the operators' command line. Each command is a thin layer over the library, loaded
// when that command runs: the HTTP client, metrics and schema libraries would dominate the start-up
// of the short ones.
import './tiering'; // first: it sets how V8 optimises the code loaded after it
import fs from 'node:fs';
import path from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { DEFAULT_ZSTD_LEVEL, MAX_ZSTD_LEVEL, MIN_ZSTD_LEVEL } from '../blob/zstd-level';
import { DEFAULT_CACHE_DIR, DEFAULT_CONFIG, DEFAULT_SNAPSHOTTER_SOCKET } from '../defaults';
import { callControl, DEFAULT_SOCKET } from '../daemon/control';
import { Interrupted } from '../errors';
import type { DaemonFlags } from './daemon';
import { bytes, mountPointOrImage, parseSize } from './format';
import { formatStatus, type DaemonStatus } from './status';
import { FD_KEEPER_CHOICES, type FdKeeperChoice } from '../transport/fd-keepers';
import { FUSE_BACKINGS } from '../transport/fuse-backing';
import { TRANSPORT_NAMES, type TransportName } from '../transport/transport';

async function mountLocal(outDir: string, target: string): Promise<void> {
  // The builder's modules (the EROFS and blob writers) and the addon are loaded here, not on the
  // path of every command (the daemon's mount helper among them).
  const { BLOB_DIR, BOOTSTRAP_FILE } = await import('../builder/build-dir');
  const { mountFileBacked } = await import('../mount/file-backed');
  const { validateBootstrap } = await import('../erofs/validate');
  const bootstrap = path.join(outDir, BOOTSTRAP_FILE);
  const { sb } = validateBootstrap(fs.readFileSync(bootstrap), { what: bootstrap }).reader;
  const blobs = sb.devices.map((d) => path.resolve(outDir, BLOB_DIR, d.tag));
  for (const b of blobs) if (!fs.existsSync(b)) throw new Error(`blob ${b} named by ${bootstrap} is missing`);
  mountFileBacked({ bootstrap: path.resolve(bootstrap), blobs, target });
}

/** The version in package.json: dist/src/cli/ sits two levels below the package's root. */
function packageVersion(): string {
  return (
    JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }
  ).version;
}

/** Collects a repeatable option's values: `--plain-http a --plain-http b` gives ['a', 'b']. */
function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/**
 * The registry options of `convert`, `daemon` and `inspect`. One host per flag, repeated for more
 * (as skopeo and docker take them): a variadic `<host...>` would swallow the arguments after it. No
 * default, so the daemon tells "not given" (its configuration file's lists stand) from given.
 */
function withRegistryOptions(cmd: Command): Command {
  return cmd
    .option('--plain-http <host>', 'a registry host spoken to over plain HTTP (repeat for more)', collect)
    .option('--insecure <host>', 'a registry host whose TLS certificate is not verified (repeat for more)', collect)
    .option(
      '--registries-config <file>',
      'registry hosts: mirrors, CA files, TLS (JSON, the daemon configuration\'s "registries" object)',
    );
}

export function program(): Command {
  const cli = new Command('erofs-ondemand')
    .description('Lazy-loading container images on EROFS')
    .version(packageVersion(), '-V, --version', 'print the version')
    .exitOverride()
    .showHelpAfterError();
  cli
    .command('build')
    .description('write a metadata-only EROFS bootstrap and an uncompressed data blob for a directory')
    .argument('<dir>', 'source directory')
    .argument('<out-dir>', 'output directory (bootstrap.erofs, blobs/<id>)')
    .option('--chunk-size <size>', 'chunk size, a power of two from 4K to 64M', '1M')
    .option('--json', 'print the summary as JSON')
    .action(async (dir: string, out: string, opts: { chunkSize: string; json?: boolean }) =>
      (await import('./build')).buildCommand(dir, out, opts),
    );
  withRegistryOptions(
    cli
      .command('convert')
      .description('convert an OCI image into the lazy format and push it')
      .argument('<source>', 'registry reference, oci:PATH[:TAG] or docker-archive:PATH[:NAME:TAG]')
      .argument('<target>', 'registry reference or oci:PATH[:TAG]')
      .option('--chunk-size <size>', 'chunk size, a power of two from 4K to 64M', '1M')
      .option(
        '--compression-level <n>',
        `zstd level of the chunks, ${MIN_ZSTD_LEVEL} (fastest) to ${MAX_ZSTD_LEVEL} (smallest blobs)`,
        String(DEFAULT_ZSTD_LEVEL),
      )
      .option('--platform <os/arch[/variant]>', 'platform to pick from an image index (default: this machine)')
      .option(
        '--chunk-dict <image>',
        'a lazy image in the target registry (e.g. the previous version): chunks it stores are not stored again (repeat for more)',
        collect,
      ),
  )
    .option('--json', 'print the result as one JSON line')
    .option('-q, --quiet', 'print nothing on success')
    .action(async (source: string, target: string, opts) => {
      await (await import('./convert')).convertCommand(source, target, opts);
    });
  cli
    .command('mount-local')
    .description('mount the output of `build` read-only (file-backed EROFS, Linux 6.12+)')
    .argument('<out-dir>', 'a directory written by `build`')
    .argument('<target>', 'mount point')
    .action(async (out: string, target: string) => mountLocal(out, target));
  withRegistryOptions(
    cli
      .command('daemon')
      .description('serve lazy mounts: owns the cache directory and answers cache misses')
      .option('--config <file>', 'configuration file (JSON)', DEFAULT_CONFIG)
      .option('--cache-dir <dir>', 'cache directory, on ext4/xfs/btrfs (default /var/lib/erofs-ondemand)')
      .option('--socket <path>', `control socket (default ${DEFAULT_SOCKET})`)
      .option('--prefetch <n>', 'background prefetch workers per blob (default 0: off)')
      .option('--concurrency <n>', 'concurrent Range GETs (default 8)')
      .option('--read-timeout <seconds>', 'a read not served within this gets EIO (default 60; 0: no deadline)')
      .option(
        '--read-ahead <size>',
        'compressed bytes a cache miss may fetch past itself in its blob, default 8M (0: none)',
      ),
  )
    .option('--cache-max-bytes <size>', 'bound on the cache, e.g. 50G (default 0: unbounded)')
    .option('--metrics-address <host:port>', 'Prometheus metrics address ("" turns them off; default 127.0.0.1:9543)')
    .option(
      '--snapshotter-socket <path>',
      `containerd snapshotter socket ("" turns it off; default ${DEFAULT_SNAPSHOTTER_SOCKET} with the default --socket, else off)`,
    )
    .addOption(
      new Option('--transport <name>', 'cache-miss transport (default auto: the best this kernel supports)').choices([
        'auto',
        ...TRANSPORT_NAMES,
      ]),
    )
    .addOption(
      new Option(
        '--fuse-backing <mode>',
        'FUSE transport: EROFS over the FUSE files directly (file, Linux 6.12+) or through loop devices (default auto: by kernel version)',
      ).choices([...FUSE_BACKINGS]),
    )
    .addOption(
      new Option(
        '--fd-keeper <keeper>',
        "where kernel-facing fds outlive the daemon (default auto: systemd's fd store under systemd, else a holder process)",
      ).choices([...FD_KEEPER_CHOICES]),
    )
    .action(async (opts: DaemonFlags, cmd: Command) => (await import('./daemon')).daemonCommand(opts, cmd));
  cli
    .command('doctor')
    .description(
      'kernel features, the transport the daemon would choose, permissions, cache filesystem, snapshotter socket',
    )
    .option('--cache-dir <dir>', 'cache directory to check', DEFAULT_CACHE_DIR)
    .addOption(
      new Option('--transport <name>', 'check one transport instead of choosing the best')
        .choices(['auto', ...TRANSPORT_NAMES])
        .default('auto'),
    )
    .addOption(
      new Option('--fd-keeper <keeper>', 'where the daemon keeps its kernel fds (as its own flag)')
        .choices([...FD_KEEPER_CHOICES])
        .default('auto'),
    )
    .option('--config <file>', "the daemon's configuration file", DEFAULT_CONFIG)
    .option('--socket <path>', "the daemon's control socket (default: the configuration's)")
    .option('--snapshotter-socket <path>', 'check this snapshotter socket instead of the one the daemon uses')
    .option('--json', 'print the findings as JSON')
    .action(
      async (
        opts: {
          cacheDir: string;
          transport: TransportName | 'auto';
          fdKeeper: FdKeeperChoice;
          config: string;
          socket?: string;
          snapshotterSocket?: string;
          json?: boolean;
        },
        cmd: Command,
      ) => {
        const configRequired = cmd.getOptionValueSource('config') === 'cli';
        process.exitCode = await (await import('./doctor')).doctorCommand({ ...opts, configRequired });
      },
    );
  cli
    .command('mount')
    .description('mount an image lazily (asks the daemon)')
    .argument('<image-ref>', 'the lazy image, or the original image a lazy one refers to')
    .argument('<target>', 'mount point')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .action(async (ref: string, target: string, opts: { socket: string }) => {
      const r = (await callControl(opts.socket, { op: 'mount', ref, target: path.resolve(target) })) as {
        digest: string;
      };
      process.stdout.write(`${ref} (${r.digest}) mounted at ${target}\n`);
    });
  cli
    .command('umount')
    .description('unmount an image mounted by the daemon (or, with --local, one mounted by mount-local)')
    .argument('<target>', 'mount point')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--local', 'unmount directly, without the daemon')
    .option('--lazy', 'with --local: detach now, clean up when no longer busy')
    .action(async (target: string, opts: { socket: string; local?: boolean; lazy?: boolean }) => {
      if (opts.local) {
        const [{ unmount }, { explainBusy }] = await Promise.all([
          import('../mount/file-backed'),
          import('../mount/holders'),
        ]);
        try {
          unmount(target, opts);
        } catch (err) {
          throw explainBusy(path.resolve(target), err);
        }
      } else await callControl(opts.socket, { op: 'umount', target: path.resolve(target) });
    });
  cli
    .command('status')
    .description('what the daemon serves: mounts, bytes cached, hit ratio, in-flight misses, fetch latency')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--json', 'print the status as JSON')
    .action(async (opts: { socket: string; json?: boolean }) => {
      const s = (await callControl(opts.socket, { op: 'status' })) as DaemonStatus;
      process.stdout.write(opts.json ? `${JSON.stringify(s)}\n` : `${formatStatus(s)}\n`);
    });
  cli
    .command('fsck')
    .description('verify every cached chunk of a mounted image against its digest')
    .argument('<image>', 'mount point or image reference')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--json', 'print the result as JSON')
    .action(async (image: string, opts: { socket: string; json?: boolean }) => {
      const r = (await callControl(opts.socket, { op: 'fsck', target: mountPointOrImage(image) })) as {
        chunks: number;
        bad: Array<{ blob: string; offset: number }>;
      };
      if (opts.json) process.stdout.write(`${JSON.stringify(r)}\n`);
      else {
        process.stdout.write(`${r.chunks} cached chunks checked, ${r.bad.length} bad\n`);
        for (const b of r.bad) process.stdout.write(`bad: blob ${b.blob} offset ${b.offset}\n`);
      }
      if (r.bad.length > 0) process.exitCode = 1;
    });
  cli
    .command('prefetch')
    .description('fetch every chunk of a mounted image that is not cached yet, and wait for it')
    .argument('<image>', 'mount point or image reference')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .action(async (image: string, opts: { socket: string }) => {
      const r = (await callControl(opts.socket, { op: 'prefetch', target: mountPointOrImage(image) })) as {
        fetched: number;
      };
      process.stdout.write(`${r.fetched} chunks fetched\n`);
    });
  withRegistryOptions(
    cli
      .command('inspect')
      .description('tree, files, chunk and dedup statistics of a lazy image or a bootstrap file')
      .argument('<image>', 'registry reference (the lazy image or one a lazy image refers to) or a bootstrap file')
      .option('--tree', 'list every path with its mode and size')
      .option('--json', 'print the report as JSON')
      .option('--check', 'only validate the bootstrap as a mount would: print OK or the fault (exit 1)'),
  ).action(async (image: string, opts) => (await import('./inspect')).inspectCommand(image, opts));
  const trace = cli
    .command('trace')
    .description('access traces: the chunks a mount read first, replayed as prefetch at the next mount');
  withRegistryOptions(
    trace
      .command('show')
      .description("a mount's access trace (asks the daemon) or an image's newest one in the registry")
      .argument('<what>', 'mount point (an absolute path) or image reference')
      .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
      .option('--json', 'print the trace as JSON'),
  ).action(async (what: string, opts) => (await import('./trace')).showCommand(what, opts));
  trace
    .command('push')
    .description("close a mount's trace window and push its trace to the registry as a referrer of the image")
    .argument('<target>', 'mount point')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--json', 'print the result as JSON')
    .action(async (target: string, opts: { socket: string; json?: boolean }) =>
      (await import('./trace')).pushCommand(target, opts),
    );
  withRegistryOptions(
    trace
      .command('rebase')
      .description("push an image's newest trace as a trace of another (a rebuild), its chunks found by digest")
      .argument('<from>', 'the image whose trace the registry holds (the version before)')
      .argument('<to>', 'the image to push it for')
      .option('--json', 'print the result as JSON'),
  ).action(async (from: string, to: string, opts) => (await import('./trace')).rebaseCommand(from, to, opts));
  trace
    .command('record')
    .description('mount an image, run a command chrooted into it (over a writable overlay), push the trace')
    .argument('<image-ref>', 'the lazy image, or the original image a lazy one refers to')
    .argument('<cmd...>', 'the command to run in the image, after --')
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--timeout <seconds>', 'the command is killed after this long', '600')
    .option('--json', 'print the result as JSON')
    .action(async (image: string, cmd: string[], opts: { socket: string; timeout: string; json?: boolean }) =>
      (await import('./trace')).recordCommand(image, cmd, opts),
    );
  cli
    .command('gc')
    .description('evict cached blobs no mounted image uses, least recently used first')
    .option(
      '--max-size <size>',
      "shrink the cache to at most this (default: the daemon's bound, else evict all unused)",
    )
    .option('--socket <path>', 'control socket', DEFAULT_SOCKET)
    .option('--json', 'print the result as JSON')
    .action(async (opts: { socket: string; maxSize?: string; json?: boolean }) => {
      const r = (await callControl(opts.socket, {
        op: 'gc',
        ...(opts.maxSize ? { maxBytes: parseSize(opts.maxSize) } : {}),
      })) as {
        removed: string[];
        freedBytes: number;
        cacheBytes: number;
      };
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(r)}\n`
          : `${r.removed.length} blobs evicted, ${bytes(r.freedBytes)} freed, cache now ${bytes(r.cacheBytes)}\n`,
      );
    });
  return cli;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    if (err instanceof Interrupted) {
      process.stderr.write(`erofs-ondemand: ${err.message}\n`);
      return 130;
    }
    process.stderr.write(`erofs-ondemand: error: ${(err as Error).message}\n`);
    return 1;
  }
}

/**
 * Ends the process once stdout and stderr have taken everything written to them. After a conversion
 * this skips V8 tearing its heap down page by page (a munmap per 256 KiB page), work the kernel does
 * at once at exit anyway.
 */
function exitWhenFlushed(code: number): void {
  process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
}

// The batch commands, whose heaps are large. The others end the usual way: the daemon, for one, has
// its own shutdown (FUSE detaches, the fd store) and its tests cover that path as it is.
const EXIT_WHEN_DONE = new Set(['convert', 'build']);

if (require.main === module) {
  main(process.argv).then((code) => {
    process.exitCode = code;
    if (EXIT_WHEN_DONE.has(process.argv[2])) exitWhenFlushed(code);
  });
}
