// Default paths, apart from the config schema so that commands which only need a path load no validator.
export const DEFAULT_CONFIG = '/etc/erofs-ondemand/config.json';
export const DEFAULT_SOCKET = '/run/erofs-ondemand/control.sock';
export const DEFAULT_CACHE_DIR = '/var/lib/erofs-ondemand';
export const DEFAULT_SNAPSHOTTER_SOCKET = '/run/erofs-ondemand/snapshotter.sock';

/**
 * The snapshotter's socket: the configured one ('': none); unconfigured, the default one for the
 * daemon on the default control socket, none for any other (two daemons never contend for it).
 */
export function snapshotterSocket(configured: string | undefined, controlSocket: string): string {
  return configured ?? (controlSocket === DEFAULT_SOCKET ? DEFAULT_SNAPSHOTTER_SOCKET : '');
}
