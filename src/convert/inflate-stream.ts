// Layer gunzip (ISA-L, native/convert/gzip_inflate.cc) and un-zstd (native/convert/zstd_inflate.cc)
// on the thread pool, one inflate ahead of the tar reader so that the two overlap. Streaming: a layer's
// memory is the pieces the reader holds, whatever the layer's size. Its output pieces are reused once the reader says it is done
// with them: fresh memory costs a page fault per page, which slows the inflate.
import { convertAddon, type StreamInflater } from '../native/convert-addon';

/** Decompressed layer bytes whose pieces may be reused once `release(upTo)` says so. */
export interface ReleasingStream extends AsyncIterable<Buffer> {
  /** No one holds any byte before stream offset `upTo` any more: pieces wholly before it may be reused. */
  release(upTo: number): void;
}

// Inflate calls take at least this much input (or the rest of the layer), gathered from network
// reads that are far smaller: fewer, larger trips to the thread pool.
const INPUT_BYTES = 512 << 10;
const PIECE_BYTES = 1 << 20;

export function gunzip(source: AsyncIterable<Buffer>): ReleasingStream {
  return inflating(source, () => new (convertAddon().GzipInflater)());
}

export function unzstd(source: AsyncIterable<Buffer>): ReleasingStream {
  return inflating(source, () => new (convertAddon().ZstdInflater)());
}

function inflating(source: AsyncIterable<Buffer>, create: () => StreamInflater): ReleasingStream {
  const spare: Buffer[] = [];
  /** Pieces handed out, oldest first, with the stream offset where each ends. */
  const handedOut: Array<{ piece: Buffer; end: number }> = [];
  return {
    release(upTo: number): void {
      while (handedOut.length > 0 && handedOut[0].end <= upTo) spare.push(handedOut.shift()!.piece);
    },
    async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
      const inflater = create();
      const input = source[Symbol.asyncIterator]();
      let last = false;
      const feed = async (): Promise<void> => {
        const parts: Buffer[] = [];
        for (let bytes = 0; bytes < INPUT_BYTES;) {
          const r = await input.next();
          if (r.done) {
            last = true;
            break;
          }
          parts.push(r.value);
          bytes += r.value.length;
        }
        inflater.feed(parts, last);
      };
      const take = (): Buffer => spare.pop() ?? Buffer.allocUnsafeSlow(PIECE_BYTES);
      let offset = 0;
      let out = take();
      type Result = Awaited<ReturnType<typeof inflater.inflate>>;
      let running: Promise<Result> | undefined;
      try {
        await feed();
        running = inflater.inflate(out);
        for (;;) {
          const { produced, needsInput }: Result = await running!;
          running = undefined;
          const done = out;
          if (needsInput) await feed();
          const finished = !needsInput && produced < done.length && last;
          if (!finished) {
            out = take();
            running = inflater.inflate(out);
          }
          if (produced > 0) {
            offset += produced;
            handedOut.push({ piece: done, end: offset });
            yield done.subarray(0, produced);
          } else {
            spare.push(done);
          }
          if (finished) return;
        }
      } finally {
        running?.catch(() => undefined); // abandoned early: its outcome no longer matters
      }
    },
  };
}
