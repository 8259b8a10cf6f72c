// Lazy images already in a registry whose chunks a conversion references instead of storing them
// again (`convert --chunk-dict`): which of their blobs may serve, in which order, and where each lives.
import type { BlobIndex } from '../blob/blob-index';
import { InputError } from '../errors';
import { digestHex } from '../oci/digest';
import type { Descriptor } from '../oci/types';
import type { StoredBlob } from './convert-layers';

export interface ChunkDictImage {
  /** The reference as the user gave it, for messages. */
  ref: string;
  /** Where the lazy image lives: its blobs are in this repository of this registry host. */
  registry: string;
  repository: string;
  /** The lazy manifest's digest. */
  digest: string;
  /** Its data blobs (`layers[1..]`), each with its chunk table loaded and checked. */
  blobs: ReadonlyArray<{ desc: Descriptor; index: BlobIndex }>;
}

export interface ChunkDictBlob extends StoredBlob {
  /** The blob's descriptor in the chunk-dict image's manifest: listed unchanged in the new manifest. */
  desc: Descriptor;
  /** The chunk-dict image it is taken from (the first given, when several list it). */
  image: ChunkDictImage;
}

/**
 * The blobs of the chunk-dict images, in the order given and each once, as the conversion's stored
 * blobs. Their chunk size must be the conversion's: a chunk of another size never has the same digest
 * as a whole chunk, and the bootstrap gives every file one chunk size.
 */
export function chunkDictBlobs(images: readonly ChunkDictImage[], chunkSize: number): ChunkDictBlob[] {
  const seen = new Set<string>();
  const out: ChunkDictBlob[] = [];
  for (const image of images) {
    for (const { desc, index } of image.blobs) {
      if (index.trailer.chunkSize !== chunkSize)
        throw new InputError(
          `chunk-dict image has chunks of ${index.trailer.chunkSize} bytes, this conversion ${chunkSize}`,
          { 'chunk-dict': image.ref, layer: desc.digest },
        );
      if (seen.has(desc.digest)) continue;
      seen.add(desc.digest);
      const { trailer, chunks } = index;
      out.push({ id: digestHex(desc.digest), uncompressedSize: trailer.uncompressedSize, chunks, desc, image });
    }
  }
  return out;
}
