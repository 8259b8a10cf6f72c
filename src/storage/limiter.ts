// Bounded concurrency with two priorities: on-demand reads go before background prefetch.

import type { Priority } from '../oci/retry';

export type { Priority };

export class Limiter {
  private running = 0;
  private readonly queues: Record<Priority, Array<() => void>> = { demand: [], prefetch: [] };

  constructor(private readonly limit: number) {}

  async run<T>(priority: Priority, task: () => Promise<T>): Promise<T> {
    if (this.running >= this.limit) await new Promise<void>((resolve) => this.queues[priority].push(resolve));
    else this.running++;
    try {
      return await task();
    } finally {
      const next = this.queues.demand.shift() ?? this.queues.prefetch.shift();
      if (next) next();
      else this.running--;
    }
  }
}
