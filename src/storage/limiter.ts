// Bounded concurrency with two priorities: on-demand reads (a process is blocked on them) go before
// background prefetch, a few slots are kept for them alone, and a queued prefetch that a reader comes
// to wait for is promoted to demand.
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

export class Limiter {
  private running = 0;
  private readonly queues: Record<Priority, Entry[]> = { demand: [], prefetch: [] };
  /** Slots prefetch never takes: a demand read finds one free however much prefetch is queued. */
  readonly reserved: number;

  constructor(
    private readonly limit: number,
    reserved = Math.floor(limit / 4),
  ) {
    this.reserved = Math.min(Math.max(0, reserved), limit - 1);
  }

  private canStart(priority: Priority): boolean {
    return this.running < (priority === 'demand' ? this.limit : this.limit - this.reserved);
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
    if (this.canStart(priority) && this.queues.demand.length === 0) {
      this.running++;
    } else {
      let start!: () => void;
      const started = new Promise<void>((resolve) => (start = resolve));
      const entry: Entry = {
        priority,
        start,
        promote: () => {
          const i = this.queues.prefetch.indexOf(entry);
          if (i < 0) return; // running already, or demand already
          this.queues.prefetch.splice(i, 1);
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
      this.dispatch();
    }
  }

  private dispatch(): void {
    for (;;) {
      const q = this.queues.demand.length > 0 ? 'demand' : 'prefetch';
      if (this.queues[q].length === 0 || !this.canStart(q)) return;
      const entry = this.queues[q].shift()!;
      this.running++;
      entry.start();
    }
  }
}
