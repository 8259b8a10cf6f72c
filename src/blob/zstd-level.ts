// zstd levels of converted chunks, apart from the writer so that the command line can check a level
// without loading the converter.

/** The default (the memo key names the level): level 1 compresses about 1.9 times as fast as 3 on root file system data, for about 5% more bytes. */
export const DEFAULT_ZSTD_LEVEL = 1;
/** The levels `--compression-level` takes: zstd's usual range; 20-22 only gain with windows larger than a chunk. */
export const MIN_ZSTD_LEVEL = 1;
export const MAX_ZSTD_LEVEL = 19;
