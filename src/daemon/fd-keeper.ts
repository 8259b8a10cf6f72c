// Where kernel-facing fds outlive the daemon (`FdKeeper`, transport.ts). Under systemd: its fd store
// (`FileDescriptorStoreMax=` in the unit), through the sd_notify protocol: FDSTORE=1/FDNAME= to keep,
// FDSTOREREMOVE=1 to drop, and a restarted daemon gets them back from 3 up with
// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES. Without systemd: the holder process (fd-holder.ts).
import { log } from '../log';
import { native } from '../native';
import type { FdKeeperChoice } from '../transport/fd-keepers';
import type { FdKeeper } from '../transport/transport';
import type { CacheLock } from './cache-lock';
import { HolderProcess } from './fd-holder';
import { HandedFds } from './handed-fds';

const SD_LISTEN_FDS_START = 3;

/** The fds systemd handed this process, by name; the variables are cleared so children do not see them. */
export function takeListenFds(env: NodeJS.ProcessEnv = process.env): Map<string, number> {
  const fds = new Map<string, number>();
  const count = Number(env.LISTEN_FDS ?? 0);
  const forUs = !env.LISTEN_PID || Number(env.LISTEN_PID) === process.pid;
  if (Number.isInteger(count) && count > 0 && forUs) {
    const names = (env.LISTEN_FDNAMES ?? '').split(':');
    for (let i = 0; i < count; i++) if (names[i]) fds.set(names[i], SD_LISTEN_FDS_START + i);
  }
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  return fds;
}

/** The daemon's keeper; `close` at its stop leaves the kept fds where they are. */
export interface OpenFdKeeper extends FdKeeper {
  /**
   * Once restored mounts are resumed: drops the fds an earlier daemon kept that no transport asked
   * for (`inherited`), which would otherwise be kept for ever. Their names.
   */
  releaseUnclaimed(): string[];
  close(): void;
}

export class SystemdFdStore implements OpenFdKeeper {
  readonly kind = 'systemd' as const;

  private readonly handed: HandedFds;

  constructor(handed: Map<string, number>) {
    this.handed = new HandedFds(handed);
  }

  inherited(name: string): number | undefined {
    return this.handed.take(name);
  }

  keep(name: string, fd: number): boolean {
    // Replacing: systemd keeps every fd sent under a name, so the old copy goes first.
    native.sdNotify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
    return native.sdNotify(`FDSTORE=1\nFDNAME=${name}`, [fd]);
  }

  drop(name: string): void {
    native.sdNotify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
  }

  releaseUnclaimed(): string[] {
    const names = this.handed.closeUnclaimed();
    for (const name of names) this.drop(name);
    if (names.length) log.info('fds no transport took over: dropped from the fd store', { names });
    return names;
  }

  close(): void {}
}

/** Nothing outlives the daemon: its kernel objects close with it. */
export const NO_KEEPER: OpenFdKeeper = {
  kind: 'none',
  inherited: () => undefined,
  keep: () => false,
  drop: () => undefined,
  releaseUnclaimed: () => [],
  close: () => undefined,
};

export interface FdKeeperOptions {
  cacheDir: string;
  /** The cache directory's lock, taken: the holder hands its fds only to the process holding it. */
  lock: CacheLock;
  /** 'auto' (default): systemd's fd store under systemd (NOTIFY_SOCKET), else the holder process. */
  choice?: FdKeeperChoice;
  env?: NodeJS.ProcessEnv;
}

/**
 * The keeper chosen, with what a daemon before this one left there. 'auto' falls back to none when the
 * holder cannot be started (logged; `kind` then says so); a keeper asked for by name throws instead.
 */
export function openFdKeeper(opts: FdKeeperOptions): OpenFdKeeper {
  const env = opts.env ?? process.env;
  const handed = takeListenFds(env);
  const choice = opts.choice ?? 'auto';
  if (choice === 'none') return NO_KEEPER;
  if (choice === 'systemd' || (choice === 'auto' && env.NOTIFY_SOCKET)) {
    if (!env.NOTIFY_SOCKET)
      throw new Error('fdKeeper "systemd" needs NOTIFY_SOCKET: run the daemon under systemd (FileDescriptorStoreMax=)');
    return new SystemdFdStore(handed);
  }
  try {
    return HolderProcess.open(opts.cacheDir, opts.lock);
  } catch (err) {
    if (choice === 'holder') throw err;
    log.error('no fd holder: kernel-facing fds close with the daemon', { error: (err as Error).message });
    return NO_KEEPER;
  }
}
