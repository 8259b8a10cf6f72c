// `erofs-ondemand doctor`: what the kernel supports, what the daemon would choose, and why; the
// snapshotter socket containerd is to use, and the containerd configuration for it.
import { NO_KEEPER } from '../daemon/fd-keeper';
import { probeKernel } from '../daemon/kernel-features';
import type { FdKeeperChoice } from '../transport/fd-keepers';
import type { CrashOutcome, FdKeeper, TransportName } from '../transport/transport';
import { TRANSPORTS } from '../transport/transports';
import { table } from './format';
import { snapshotterDoctor, type SnapshotterDoctorOptions } from './snapshotter-doctor';

const KEEPER_DETAIL: Record<FdKeeper['kind'], string> = {
  systemd: "systemd's fd store (the unit's FileDescriptorStoreMax)",
  holder: 'the holder process (<cache-dir>/holder.sock), when not run by systemd',
  none: 'none: the kernel objects close with the daemon',
};

/** The keeper a daemon with this setting uses; 'auto' as run by the unit or by hand, whose outcomes are the same. */
function keeperFor(choice: FdKeeperChoice): FdKeeper {
  const kind = choice === 'auto' ? (process.env.NOTIFY_SOCKET ? 'systemd' : 'holder') : choice;
  return { ...NO_KEEPER, kind };
}

/**
 * 0 when the daemon can serve misses here (a transport is chosen) and a snapshotter socket that
 * exists is root's only; else 1.
 */
export async function doctorCommand(
  opts: {
    cacheDir: string;
    transport?: TransportName | 'auto';
    fdKeeper?: FdKeeperChoice;
    json?: boolean;
  } & SnapshotterDoctorOptions,
): Promise<number> {
  const keeper = keeperFor(opts.fdKeeper ?? 'auto');
  const f = probeKernel(opts.cacheDir, opts.transport ?? 'auto', keeper);
  const snapshotter = await snapshotterDoctor(opts);
  const exposed = snapshotter.checks.some((c) => c.name === 'root only' && !c.ok);
  if (opts.json) {
    process.stdout.write(`${JSON.stringify({ ...f, snapshotter })}\n`);
  } else {
    const mark = (ok: boolean) => (ok ? 'yes' : 'no');
    const rows = [
      ['check', 'ok', 'detail'],
      ['kernel', '', f.kernel],
      ['running as root', mark(f.root), f.root ? 'mounts and fanotify need CAP_SYS_ADMIN' : 'run as root'],
      ['EROFS', mark(f.erofs.ok), f.erofs.detail],
      ['overlayfs', mark(f.overlay.ok), f.overlay.detail],
      ...TRANSPORTS.map((t) => [t.feature, mark(f.transports[t.name].ok), f.transports[t.name].detail]),
      ['cache filesystem', mark(f.cacheFs.ok), f.cacheFs.detail],
      ['fd keeper', mark(keeper.kind !== 'none'), KEEPER_DETAIL[keeper.kind]],
      ...TRANSPORTS.map((t) => [`${t.name}: daemon dies`, '', readerSees(f.whenDaemonDies[t.name])]),
      ['transport chosen', f.chosen ? 'yes' : 'no', f.chosen ?? f.refusal ?? 'none'],
      ...snapshotter.checks.map((c) => [`snapshotter: ${c.name}`, mark(c.ok), c.detail]),
    ];
    process.stdout.write(`${table(rows)}\n`);
    if (f.chosen) {
      const chosen = TRANSPORTS.find((t) => t.name === f.chosen);
      process.stdout.write(`\n${f.chosen}: ${chosen?.describe()}\n`);
    }
    if (snapshotter.containerdConfig)
      process.stdout.write(
        `\ncontainerd 1.6/1.7, /etc/containerd/config.toml (then restart containerd):\n\n${snapshotter.containerdConfig}\n`,
      );
  }
  return f.chosen && !exposed ? 0 : 1;
}

function readerSees(outcome: CrashOutcome): string {
  switch (outcome) {
    case 'blocks and resumes':
      return 'reads of data not cached wait; the next daemon takes the mounts over and answers them';
    case 'EIO':
      return 'reads of data not cached fail with EIO, also after a new daemon started (remounted)';
    case 'zeros':
      return 'reads of data not cached return ZEROS: never chosen';
  }
}
