// The fds an earlier daemon kept (handed over by systemd or the holder), now this process's own:
// those no transport asks for by the time restored mounts are resumed belong to nothing and go.
import fs from 'node:fs';

export class HandedFds {
  private readonly asked = new Set<string>();

  constructor(private readonly fds: ReadonlyMap<string, number>) {}

  /** The fd handed over under `name`; asking claims it. */
  take(name: string): number | undefined {
    this.asked.add(name);
    return this.fds.get(name);
  }

  names(): string[] {
    return [...this.fds.keys()];
  }

  /** Closes this process's copies of the fds nobody asked for; their names (to drop where they are kept). */
  closeUnclaimed(): string[] {
    const names = this.names().filter((name) => !this.asked.has(name));
    for (const name of names) fs.closeSync(this.fds.get(name) as number);
    for (const name of names) this.asked.add(name); // once
    return names;
  }
}
