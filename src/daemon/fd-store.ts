// File descriptors handed back by systemd (its fd store, `FileDescriptorStoreMax=`): the sd_listen_fds
// protocol, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES with the fds from 3 up.
const SD_LISTEN_FDS_START = 3;

/** The inherited fd stored under `name`, if any; the variables are cleared so children do not see them. */
export function inheritedFd(name: string, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const count = Number(env.LISTEN_FDS ?? 0);
  if (!Number.isInteger(count) || count <= 0) return undefined;
  if (env.LISTEN_PID && Number(env.LISTEN_PID) !== process.pid) return undefined;
  const names = (env.LISTEN_FDNAMES ?? '').split(':');
  const index = names.indexOf(name);
  if (index < 0 || index >= count) return undefined;
  return SD_LISTEN_FDS_START + index;
}

export function forgetListenEnv(env: NodeJS.ProcessEnv = process.env): void {
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
}
