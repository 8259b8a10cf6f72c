// `erofs-ondemand doctor`: what the kernel supports, what the daemon would choose, and why.
import { probeKernel } from '../daemon/kernel-features';
import type { TransportName } from '../transport/transport';
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
      ['cachefiles on-demand', mark(f.cachefilesOndemand.ok), f.cachefilesOndemand.detail],
      ['fanotify pre-content', mark(f.fanotifyPreContent.ok), f.fanotifyPreContent.detail],
      ['FUSE', mark(f.fuse.ok), f.fuse.detail],
      ['cache filesystem', mark(f.cacheFs.ok), f.cacheFs.detail],
      ['transport chosen', f.chosen ? 'yes' : 'no', f.chosen ?? f.refusal ?? 'none'],
    ];
    process.stdout.write(`${table(rows)}\n`);
  }
  return f.chosen ? 0 : 1;
}
