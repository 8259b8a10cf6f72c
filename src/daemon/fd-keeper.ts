// Where kernel-facing fds outlive the daemon (`FdKeeper`, transport.ts). Under systemd: its fd store
// (`FileDescriptorStoreMax=` in the unit), through the sd_notify protocol: FDSTORE=1/FDNAME= to keep,
// FDSTOREREMOVE=1 to drop, and a restarted daemon gets them back from 3 up with
// LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES.
import { native } from '../native';
import type { FdKeeper } from '../transport/transport';

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

export class SystemdFdStore implements FdKeeper {
  readonly kind = 'systemd' as const;

  constructor(private readonly handed: Map<string, number>) {}

  inherited(name: string): number | undefined {
    return this.handed.get(name);
  }

  keep(name: string, fd: number): boolean {
    // Replacing: systemd keeps every fd sent under a name, so the old copy goes first.
    native.sdNotify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
    return native.sdNotify(`FDSTORE=1\nFDNAME=${name}`, [fd]);
  }

  drop(name: string): void {
    native.sdNotify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
  }
}

/** Nothing outlives the daemon: its kernel objects close with it. */
export const NO_KEEPER: FdKeeper = {
  kind: 'none',
  inherited: () => undefined,
  keep: () => false,
  drop: () => undefined,
};

/** systemd's fd store when the daemon runs under systemd (NOTIFY_SOCKET), else none. */
export function openFdKeeper(env: NodeJS.ProcessEnv = process.env): FdKeeper {
  const handed = takeListenFds(env);
  return env.NOTIFY_SOCKET ? new SystemdFdStore(handed) : NO_KEEPER;
}
