// zstd levels of converted chunks, apart from the writer so that the command line can check a level
// without loading the converter.

/** The default (the memo key names the level): on root file system data level 1 compresses much faster than zstd's default 3 for few more bytes (the README gives the numbers). */
export const DEFAULT_ZSTD_LEVEL = 1;
/** The levels `--compression-level` takes: zstd's usual range; 20-22 only gain with windows larger than a chunk. */
export const MIN_ZSTD_LEVEL = 1;
export const MAX_ZSTD_LEVEL = 19;
