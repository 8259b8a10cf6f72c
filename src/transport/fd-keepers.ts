// Which `FdKeeper` (transport.ts) the daemon uses: 'auto' is systemd's fd store under systemd
// (NOTIFY_SOCKET), else the holder process.
import type { FdKeeper } from './transport';

export type FdKeeperChoice = 'auto' | FdKeeper['kind'];
export const FD_KEEPER_CHOICES: readonly FdKeeperChoice[] = ['auto', 'holder', 'systemd', 'none'];
