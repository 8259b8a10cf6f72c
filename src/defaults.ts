// Default paths, apart from the config schema so that commands which only need a path load no validator.
export const DEFAULT_CONFIG = '/etc/erofs-ondemand/config.json';
export const DEFAULT_SOCKET = '/run/erofs-ondemand/control.sock';
export const DEFAULT_CACHE_DIR = '/var/lib/erofs-ondemand';
