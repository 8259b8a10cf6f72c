// Default paths, apart from the config schema so that commands which only need a path load no validator.
export const DEFAULT_CONFIG = '/etc/erofs-ondemand/config.json';
export const DEFAULT_SOCKET = '/run/erofs-ondemand/control.sock';
/** Next to the control socket, by default: see `snapshotterSocket`. */
export const DEFAULT_SNAPSHOTTER_SOCKET = '/run/erofs-ondemand/snapshotter.sock';

/** The snapshotter's socket: the configured one ('' : none), else `snapshotter.sock` beside the control socket. */
export function snapshotterSocket(configured: string | undefined, controlSocket: string): string {
  return configured ?? `${controlSocket.replace(/\/[^/]*$/, '')}/snapshotter.sock`;
}
export const DEFAULT_CACHE_DIR = '/var/lib/erofs-ondemand';
