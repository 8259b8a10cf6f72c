// Bounded concurrency with three priorities: on-demand reads (a process is blocked on them) go before
// prefetch (an access trace), which goes before background fetches; a few slots are kept for demand
// alone, and a queued task that a reader comes to wait for is promoted to demand.
import type { Priority } from '../oci/retry';

export type { Priority };

/** A task waiting for a slot. */
export interface QueuedTask {
  /** Moves the task to the demand queue (a reader now waits for what it fetches). */
  promote(): void;
}

interface Entry extends QueuedTask {
  priority: Priority;
  start: () => void;
}

/**
 * Background tasks running at once at most: a blind fetch of the whole image only needs to keep going,
 * and each holds a request's bytes in memory until its chunks are decoded (which background does one
 * range at a time, with idle CPU).
 */
export const BACKGROUND_SLOTS = 2;

export class Limiter {
  private running = 0;
  private runningBackground = 0;
  private readonly queues: Record<Priority, Entry[]> = { demand: [], prefetch: [], background: [] };
  /** Slots prefetch never takes: a demand read finds one free however much prefetch is queued. */
  readonly reserved: number;

  constructor(
    private readonly limit: number,
    reserved = Math.floor(limit / 4),
  ) {
    this.reserved = Math.min(Math.max(0, reserved), limit - 1);
  }

  /** Tasks below demand priority running at once at most: the slots not reserved. */
  get prefetchSlots(): number {
    return this.limit - this.reserved;
  }

  private canStart(priority: Priority): boolean {
    if (priority === 'background' && this.runningBackground >= BACKGROUND_SLOTS) return false;
    return this.running < (priority === 'demand' ? this.limit : this.prefetchSlots);
  }

  private started(priority: Priority): void {
    this.running++;
    if (priority === 'background') this.runningBackground++;
  }

  /**
   * Runs `task` when a slot is free, passing the priority it runs at (a promoted task runs as demand).
   * `onQueued` is called when the task has to wait, with a handle to promote it.
   */
  async run<T>(
    priority: Priority,
    task: (priority: Priority) => Promise<T>,
    onQueued?: (queued: QueuedTask) => void,
  ): Promise<T> {
    let effective = priority;
    if (this.canStart(priority) && !this.ahead(priority)) {
      this.started(priority);
    } else {
      let start!: () => void;
      const started = new Promise<void>((resolve) => (start = resolve));
      const entry: Entry = {
        priority,
        start,
        promote: () => {
          if (entry.priority === 'demand') return;
          const queue = this.queues[entry.priority];
          const i = queue.indexOf(entry);
          if (i < 0) return; // running already
          queue.splice(i, 1);
          entry.priority = 'demand';
          this.queues.demand.push(entry);
          this.dispatch();
        },
      };
      this.queues[priority].push(entry);
      onQueued?.(entry);
      await started;
      effective = entry.priority;
    }
    try {
      return await task(effective);
    } finally {
      this.running--;
      if (effective === 'background') this.runningBackground--;
      this.dispatch();
    }
  }

  /** Whether tasks of a higher priority than `priority` wait. */
  private ahead(priority: Priority): boolean {
    const { demand, prefetch } = this.queues;
    return priority === 'demand' ? false : demand.length > 0 || (priority === 'background' && prefetch.length > 0);
  }

  private dispatch(): void {
    for (;;) {
      const q = (['demand', 'prefetch', 'background'] as const).find((p) => this.queues[p].length > 0);
      if (!q || !this.canStart(q)) return;
      const entry = this.queues[q].shift()!;
      this.started(q);
      entry.start();
    }
  }
}
