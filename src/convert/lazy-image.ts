// What names a lazy image's parts: media types and annotations, shared by `convert`, which writes
// them, and the daemon, which reads them (without loading the conversion code).

export const LazyMediaType = {
  bootstrap: 'application/vnd.erofs-ondemand.bootstrap.v1.erofs',
  blob: 'application/vnd.erofs-ondemand.blob.v1.chunked+zstd',
  /** artifactType of the referrer that points from a source image to its lazy form. */
  referrer: 'application/vnd.erofs-ondemand.image.v1',
} as const;

export const Annotation = {
  sourceDigest: 'io.erofs-ondemand.source.digest',
  sourceLayer: 'io.erofs-ondemand.source.layer',
  chunkSize: 'io.erofs-ondemand.chunk-size',
  uncompressedSize: 'io.erofs-ondemand.blob.uncompressed-size',
  tableOffset: 'io.erofs-ondemand.blob.chunk-table-offset',
  tableDigest: 'io.erofs-ondemand.blob.chunk-table-digest',
  chunks: 'io.erofs-ondemand.blob.chunks',
  inodes: 'io.erofs-ondemand.bootstrap.inodes',
  image: 'io.erofs-ondemand.image',
  /** The lazy manifests (digests, comma-separated) given as chunk-dict images to the conversion. */
  chunkDict: 'io.erofs-ondemand.chunk-dict',
} as const;
