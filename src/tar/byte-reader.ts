// Exact-length reads over an async stream of buffers.

/**
 * A stream that can drop bytes without producing them (a file read by position): `skip(n)` leaves out
 * the next `n` bytes after those it has handed out, and the stream fails once it resumes past its end.
 */
export type SkippableSource = AsyncIterable<Buffer> & { skip?(n: number): void };

export class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private readonly skipSource?: (n: number) => void;
  private pending: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  /** Bytes handed out so far: the stream offset of the next byte read. */
  position = 0;

  constructor(source: SkippableSource) {
    this.it = source[Symbol.asyncIterator]();
    if (source.skip) this.skipSource = source.skip.bind(source);
  }

  private async fill(n: number): Promise<void> {
    while (this.buffered < n && !this.ended) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        break;
      }
      const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
      if (chunk.length === 0) continue;
      this.pending.push(chunk);
      this.buffered += chunk.length;
    }
  }

  /**
   * Exactly `n` bytes. At a clean end of input returns null when `allowEnd` is set; any other short read
   * is a truncated input.
   */
  async readExact(n: number, allowEnd = false): Promise<Buffer | null> {
    if (this.buffered < n) await this.fill(n);
    if (this.buffered < n) {
      if (allowEnd && this.buffered === 0) return null;
      throw truncated(this.buffered, n);
    }
    const parts = this.take(n);
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
  }

  /** Exactly `n` bytes as the pieces they arrived in (subarrays, not copied); a short read is a truncated input. */
  async readParts(n: number): Promise<Buffer[]> {
    // Most reads are served from what is buffered (input pieces are far larger than a tar header): no call to wait on.
    if (this.buffered < n) await this.fill(n);
    if (this.buffered < n) throw truncated(this.buffered, n);
    return this.take(n);
  }

  private take(n: number): Buffer[] {
    const parts: Buffer[] = [];
    for (let got = 0; got < n;) {
      const head = this.pending[0];
      const take = Math.min(head.length, n - got);
      parts.push(take === head.length ? head : head.subarray(0, take));
      got += take;
      if (take === head.length) this.pending.shift();
      else this.pending[0] = head.subarray(take);
    }
    this.buffered -= n;
    this.position += n;
    return parts;
  }

  async skip(n: number): Promise<void> {
    let left = n;
    if (this.skipSource) {
      const dropped = Math.min(left, this.buffered);
      this.take(dropped);
      left -= dropped;
      if (left > 0) {
        this.skipSource(left);
        this.position += left;
      }
      return;
    }
    while (left > 0) {
      const want = Math.min(left, 1 << 20);
      if (this.buffered < want) await this.fill(want);
      if (this.buffered === 0) throw new Error(`input ends ${left} bytes before the expected end (truncated)`);
      const take = Math.min(left, this.buffered);
      this.take(take); // dropped, not copied
      left -= take;
    }
  }
}

function truncated(got: number, n: number): Error {
  return new Error(`input ends after ${got} of ${n} expected bytes (truncated)`);
}
