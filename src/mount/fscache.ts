// EROFS in fscache mode (cachefiles on-demand): no source device, the image named by `fsid` within a
// `domain_id`; its bootstrap and blobs are cache objects the caller serves. Mounted through the new
// mount API like the file-backed mounts, so the target is resolved without following symbolic links.
import { native } from '../native';

export interface FscacheMount {
  /** The bootstrap's cookie key: the kernel OPENs an object under it first. */
  fsid: string;
  /** The volume shared by images whose blobs share cache objects. */
  domainId: string;
  target: string;
}

/**
 * Mounts on the thread pool, the event loop staying free: the kernel waits during the mount for the
 * OPENs and READs of the bootstrap's object, which this very process answers.
 */
export async function mountFscache(m: FscacheMount): Promise<void> {
  try {
    await native.mountErofsAsync('none', [], m.target, { fsid: m.fsid, domain_id: m.domainId });
  } catch (err) {
    throw new Error(`mount erofs fsid=${m.fsid},domain_id=${m.domainId} on ${m.target}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}
