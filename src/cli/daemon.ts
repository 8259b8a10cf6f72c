// `erofs-ondemand daemon`: configuration file + flags, systemd readiness, SIGTERM/SIGINT to stop,
// SIGHUP to reload what can change at run time (the log level).
import type { Command } from 'commander';
import { loadConfig, loadRegistriesFile, type Config } from '../config';
import { Daemon } from '../daemon/daemon';
import { log } from '../log';
import { native } from '../native';
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
  cacheMaxBytes?: string;
  transport?: string;
  fuseBacking?: string;
}

/** The file's settings, overridden by flags given on the command line. */
function effectiveConfig(flags: DaemonFlags, cmd: Command): Config {
  const explicit = (name: string) => cmd.getOptionValueSource(name) === 'cli';
  const c = loadConfig(flags.config, explicit('config'));
  if (flags.cacheDir) c.cacheDir = flags.cacheDir;
  if (flags.socket) c.socket = flags.socket;
  if (flags.prefetch !== undefined) c.prefetch = Number(flags.prefetch);
  if (flags.concurrency !== undefined) c.fetch.concurrency = Number(flags.concurrency);
  if (flags.readTimeout !== undefined) c.fetch.readTimeoutSeconds = Number(flags.readTimeout);
  if (flags.readAhead !== undefined) c.fetch.readAheadKiB = Math.floor(parseSize(flags.readAhead) / 1024);
  if (flags.registriesConfig) c.registries = loadRegistriesFile(flags.registriesConfig);
  if (flags.plainHttp) c.registries.plainHttp = flags.plainHttp;
  if (flags.insecure) c.registries.insecure = flags.insecure;
  if (flags.metricsAddress !== undefined) c.metrics.address = flags.metricsAddress;
  if (flags.cacheMaxBytes !== undefined) c.cacheMaxBytes = parseSize(flags.cacheMaxBytes);
  if (flags.transport !== undefined) c.transport = flags.transport as Config['transport'];
  if (flags.fuseBacking !== undefined) c.fuseBacking = flags.fuseBacking as Config['fuseBacking'];
  return c;
}

export async function daemonCommand(flags: DaemonFlags, cmd: Command): Promise<void> {
  const config = effectiveConfig(flags, cmd);
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
    cacheMaxBytes: config.cacheMaxBytes,
    transport: config.transport,
    fuseBacking: config.fuseBacking,
  });
  await daemon.start();
  native.sdNotify(`READY=1\nSTATUS=serving on ${config.socket}`);
  const onHup = () => {
    try {
      const next = effectiveConfig(flags, cmd);
      log.level = next.logLevel;
      const restartOnly: string[] = (['cacheDir', 'socket', 'prefetch', 'transport', 'fuseBacking'] as const).filter(
        (k) => next[k] !== config[k],
      );
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
  await new Promise<void>((resolve) => {
    const stop = () => {
      native.sdNotify('STOPPING=1');
      void daemon.stop().then(resolve);
    };
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
  });
  process.off('SIGHUP', onHup);
}
