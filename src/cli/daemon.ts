// `erofs-ondemand daemon`: configuration file + flags, systemd readiness, SIGTERM/SIGINT to stop,
// SIGHUP to reload what can change at run time (the log level).
import type { Command } from 'commander';
import { DEFAULTS, loadConfig, loadRegistriesFile, overridden, type Config } from '../config';
import { Daemon } from '../daemon/daemon';
import { snapshotterSocket } from '../defaults';
import { InputError } from '../errors';
import { log } from '../log';
import { native } from '../native';
import { preloadHttpClient } from '../oci/http-client';
import { parseSize } from './format';

export interface DaemonFlags {
  config: string;
  cacheDir?: string;
  socket?: string;
  prefetch?: string;
  concurrency?: string;
  readTimeout?: string;
  readAhead?: string;
  plainHttp?: string[];
  insecure?: string[];
  registriesConfig?: string;
  metricsAddress?: string;
  snapshotterSocket?: string;
  cacheMaxBytes?: string;
  transport?: string;
  fuseBacking?: string;
  fdKeeper?: string;
}

/** A numeric flag as a number; anything else stays text, which the schema then refuses naming the flag. */
function numberFlag(text: string | undefined): number | string | undefined {
  return text !== undefined && /^-?\d+(\.\d+)?$/.test(text.trim()) ? Number(text) : text;
}

function sizeFlag(flag: keyof DaemonFlags, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  try {
    return parseSize(text);
  } catch (err) {
    throw new InputError(`${flagName(flag)}: ${(err as Error).message}`);
  }
}

function flagName(flag: keyof DaemonFlags): string {
  return `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

/** The configuration key (JSON pointer) each flag sets: errors name the flag the user typed. */
const FLAG_OF_KEY: Record<string, keyof DaemonFlags> = {
  '/cacheDir': 'cacheDir',
  '/socket': 'socket',
  '/prefetch': 'prefetch',
  '/fetch/concurrency': 'concurrency',
  '/fetch/readTimeoutSeconds': 'readTimeout',
  '/fetch/readAheadKiB': 'readAhead',
  '/cacheMaxBytes': 'cacheMaxBytes',
  '/metrics/address': 'metricsAddress',
  '/snapshotter/socket': 'snapshotterSocket',
  '/transport': 'transport',
  '/fuseBacking': 'fuseBacking',
  '/fdKeeper': 'fdKeeper',
};

/** The file's settings, overridden by flags given on the command line; both pass the same schema. */
export function effectiveConfig(flags: DaemonFlags, configRequired: boolean): Config {
  const file = loadConfig(flags.config, configRequired);
  const registriesFile = flags.registriesConfig ? loadRegistriesFile(flags.registriesConfig) : undefined;
  const readAheadBytes = sizeFlag('readAhead', flags.readAhead);
  const settings = {
    cacheDir: flags.cacheDir,
    socket: flags.socket,
    prefetch: numberFlag(flags.prefetch),
    cacheMaxBytes: sizeFlag('cacheMaxBytes', flags.cacheMaxBytes),
    transport: flags.transport,
    fuseBacking: flags.fuseBacking,
    fdKeeper: flags.fdKeeper,
    fetch: {
      concurrency: numberFlag(flags.concurrency),
      readTimeoutSeconds: numberFlag(flags.readTimeout),
      readAheadKiB: readAheadBytes === undefined ? undefined : Math.floor(readAheadBytes / 1024),
    },
    // --registries-config replaces the file's registries; --plain-http and --insecure replace its lists.
    registries:
      registriesFile || flags.plainHttp || flags.insecure
        ? {
            ...(registriesFile && { ...DEFAULTS.registries, ...registriesFile }),
            ...(flags.plainHttp && { plainHttp: flags.plainHttp }),
            ...(flags.insecure && { insecure: flags.insecure }),
          }
        : undefined,
    metrics: { address: flags.metricsAddress },
    snapshotter: { socket: flags.snapshotterSocket },
  };
  // Flags not given leave the file's settings (JSON drops the undefined ones).
  return overridden(file, JSON.parse(JSON.stringify(settings)), {}, (pointer) => {
    const flag = FLAG_OF_KEY[pointer];
    return flag ? `${flagName(flag)} ${JSON.stringify(flags[flag])}` : pointer;
  });
}

/**
 * Request bodies and their buffers are freed as fast as they come: mapped on their own, their memory
 * goes back to the kernel instead of staying in a fragmented heap that only grows.
 */
const MAPPED_ALLOCATION_BYTES = 256 << 10;

export async function daemonCommand(flags: DaemonFlags, cmd: Command): Promise<void> {
  // First: without a listener a signal's default action kills the process at once, leaving what the
  // start has made so far (its FUSE mount, its socket). One while starting stops the daemon once started.
  const stopAsked = new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  native.mapLargeAllocations(MAPPED_ALLOCATION_BYTES);
  // Not awaited: the daemon starts meanwhile, and a warm-up that fails leaves the first mount slower only.
  preloadHttpClient().catch((err: Error) => log.debug('HTTP client not warmed up', { error: err.message }));
  const configRequired = cmd.getOptionValueSource('config') === 'cli';
  const config = effectiveConfig(flags, configRequired);
  log.level = process.env.EROFS_ONDEMAND_LOG_LEVEL ?? config.logLevel;
  const daemon = new Daemon({
    cacheDir: config.cacheDir,
    socket: config.socket,
    prefetch: config.prefetch,
    concurrency: config.fetch.concurrency,
    readTimeoutMs: config.fetch.readTimeoutSeconds * 1000,
    readAheadBytes: config.fetch.readAheadKiB * 1024,
    registries: config.registries,
    metricsAddress: config.metrics.address || undefined,
    snapshotterSocket: snapshotterSocket(config.snapshotter.socket, config.socket) || undefined,
    cacheMaxBytes: config.cacheMaxBytes,
    transport: config.transport,
    fuseBacking: config.fuseBacking,
    fdKeeper: config.fdKeeper,
  });
  await daemon.start();
  native.sdNotify(`READY=1\nSTATUS=serving on ${config.socket}`);
  const onHup = () => {
    try {
      const next = effectiveConfig(flags, configRequired);
      log.level = next.logLevel;
      const restartOnly: string[] = (
        ['cacheDir', 'socket', 'prefetch', 'transport', 'fuseBacking', 'fdKeeper'] as const
      ).filter((k) => next[k] !== config[k]);
      if (next.snapshotter.socket !== config.snapshotter.socket) restartOnly.push('snapshotter');
      if (JSON.stringify(next.registries) !== JSON.stringify(config.registries)) restartOnly.push('registries');
      log.info('configuration reloaded', {
        logLevel: next.logLevel,
        ...(restartOnly.length ? { needsRestart: restartOnly } : {}),
      });
    } catch (err) {
      log.error('configuration not reloaded', { error: (err as Error).message });
    }
  };
  process.on('SIGHUP', onHup);
  await stopAsked;
  native.sdNotify('STOPPING=1');
  const { leftMounted } = await daemon.stop();
  process.off('SIGHUP', onHup);
  // Mounts left for the next daemon keep their transport open, and its reader thread the process alive.
  if (leftMounted > 0) process.stderr.write('', () => process.exit(0));
}
