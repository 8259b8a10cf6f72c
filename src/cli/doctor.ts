// `erofs-ondemand doctor`: what the kernel supports, what the daemon would choose, and why.
import { probeKernel } from '../daemon/kernel-features';
import type { TransportName } from '../transport/transport';
import { TRANSPORTS } from '../transport/transports';
import { table } from './format';

export function doctorCommand(opts: { cacheDir: string; transport?: TransportName | 'auto'; json?: boolean }): number {
  const f = probeKernel(opts.cacheDir, opts.transport ?? 'auto');
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(f)}\n`);
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
      ['transport chosen', f.chosen ? 'yes' : 'no', f.chosen ?? f.refusal ?? 'none'],
    ];
    process.stdout.write(`${table(rows)}\n`);
    if (f.chosen) {
      const chosen = TRANSPORTS.find((t) => t.name === f.chosen);
      process.stdout.write(`\n${f.chosen}: ${chosen?.describe()}\n`);
    }
  }
  return f.chosen ? 0 : 1;
}
