// The state of each chunk of one blob's cache file, as Nydus's ChunkMap: present or not, pinned by
// readers, and when it was written (the order eviction follows). Knows nothing of files or fetching.

/** One clock for every blob of the daemon: eviction compares write times across blobs. */
let clock = 0;

export class ChunkState {
  private readonly present: Uint8Array;
  private readonly writtenAt: Float64Array;
  /** Readers using each chunk right now (fetching, writing or reading it): a pinned chunk is never evicted. */
  private readonly pins: Uint16Array;

  constructor(readonly count: number) {
    this.present = new Uint8Array(count);
    this.writtenAt = new Float64Array(count);
    this.pins = new Uint16Array(count);
  }

  /**
   * The byte per chunk, 1 when present, for a transport that answers hits without the daemon's thread
   * (fanotify): set only once a chunk is written, cleared before it is punched.
   */
  get presentFlags(): Uint8Array {
    return this.present;
  }

  isPresent(i: number): boolean {
    return this.present[i] === 1;
  }

  /** Marks chunk `i` written now: it becomes the newest for eviction. */
  markPresent(i: number): void {
    this.present[i] = 1;
    this.writtenAt[i] = ++clock;
  }

  markAbsent(i: number): void {
    this.present[i] = 0;
  }

  get presentCount(): number {
    let n = 0;
    for (const p of this.present) n += p;
    return n;
  }

  /** Indexes of the chunks in [first, last) that are not present. */
  missing(first: number, last: number): number[] {
    const out: number[] = [];
    for (let i = first; i < last; i++) if (!this.present[i]) out.push(i);
    return out;
  }

  pin(indexes: Iterable<number>): void {
    for (const i of indexes) this.pins[i]++;
  }

  unpin(indexes: Iterable<number>): void {
    for (const i of indexes) this.pins[i]--;
  }

  /** Write time of the oldest chunk that could be evicted now, or Infinity. */
  oldestEvictable(): number {
    let oldest = Infinity;
    for (let i = 0; i < this.count; i++)
      if (this.present[i] && this.pins[i] === 0 && this.writtenAt[i] < oldest) oldest = this.writtenAt[i];
    return oldest;
  }

  /** Present chunks no reader uses, oldest first. */
  evictionOrder(): number[] {
    const order: number[] = [];
    for (let i = 0; i < this.count; i++) if (this.present[i] && this.pins[i] === 0) order.push(i);
    return order.sort((a, b) => this.writtenAt[a] - this.writtenAt[b]);
  }

  /** Whether chunk `i` is still present and unpinned (an eviction re-checks after each await). */
  evictable(i: number): boolean {
    return this.present[i] === 1 && this.pins[i] === 0;
  }
}

/** [first, last) as an iterable of indexes, for pin/unpin. */
export function indexRange(first: number, last: number): number[] {
  const out: number[] = [];
  for (let i = first; i < last; i++) out.push(i);
  return out;
}
