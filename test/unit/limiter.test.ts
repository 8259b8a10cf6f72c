// The fetcher's concurrency bound: never more tasks at once than the limit, and on-demand reads
// (a process is blocked on them) before background prefetch.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Limiter, type Priority } from '../../src/storage/limiter';

/** A task that runs until released, recording when it started. */
function gatedTask(started: string[], name: string) {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  return {
    release,
    task: async () => {
      started.push(name);
      await gate;
      return name;
    },
  };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('Limiter', () => {
  it('runs at most `limit` tasks at once, and each queued task when a slot frees', async () => {
    const limiter = new Limiter(3);
    let running = 0;
    let peak = 0;
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        limiter.run(i % 2 ? 'demand' : 'prefetch', async () => {
          running++;
          peak = Math.max(peak, running);
          await new Promise((resolve) => setTimeout(resolve, 1 + (i % 3)));
          running--;
          return i;
        }),
      ),
    );
    assert.equal(peak, 3);
    assert.deepEqual(
      results,
      Array.from({ length: 20 }, (_, i) => i),
    );
  });

  it('starts queued demand, then prefetch, then background tasks, in arrival order within each', async () => {
    const limiter = new Limiter(1);
    const started: string[] = [];
    const first = gatedTask(started, 'running');
    const queued: Array<[Priority, string]> = [
      ['background', 'b1'],
      ['prefetch', 'p1'],
      ['demand', 'd1'],
      ['background', 'b2'],
      ['prefetch', 'p2'],
      ['demand', 'd2'],
    ];
    const all = [limiter.run('prefetch', first.task)];
    const gates = queued.map(([priority, name]) => {
      const g = gatedTask(started, name);
      all.push(limiter.run(priority, g.task));
      return g;
    });
    await tick();
    assert.deepEqual(started, ['running'], 'the limit holds the others back');
    first.release();
    for (const g of gates) g.release();
    await Promise.all(all);
    assert.deepEqual(started, ['running', 'd1', 'd2', 'p1', 'p2', 'b1', 'b2']);
  });

  it('frees the slot of a task that fails, and passes its error on', async () => {
    const limiter = new Limiter(1);
    const failing = limiter.run('demand', async () => {
      throw new Error('range read failed');
    });
    const next = limiter.run('prefetch', async () => 'ran');
    await assert.rejects(failing, /range read failed/);
    assert.equal(await next, 'ran');
  });

  it('keeps reserved slots for demand: prefetch never takes them, a demand read starts at once', async () => {
    const limiter = new Limiter(4, 1);
    const started: string[] = [];
    const prefetches = Array.from({ length: 6 }, (_, i) => gatedTask(started, `p${i}`));
    const all = prefetches.map((g) => limiter.run('prefetch', g.task));
    await tick();
    assert.deepEqual(started, ['p0', 'p1', 'p2'], 'three of four slots for prefetch');
    const demand = gatedTask(started, 'd');
    all.push(limiter.run('demand', demand.task));
    await tick();
    assert.deepEqual(started, ['p0', 'p1', 'p2', 'd'], 'the demand read did not queue behind prefetch');
    for (const g of [...prefetches, demand]) g.release();
    await Promise.all(all);
    assert.equal(started.length, 7);
  });

  it('runs few background tasks at once, leaving the other slots to prefetch and demand', async () => {
    const limiter = new Limiter(8, 2);
    const started: string[] = [];
    const background = Array.from({ length: 5 }, (_, i) => gatedTask(started, `b${i}`));
    const all = background.map((g) => limiter.run('background', g.task));
    await tick();
    assert.deepEqual(started, ['b0', 'b1']);
    const prefetch = gatedTask(started, 'p');
    all.push(limiter.run('prefetch', prefetch.task));
    await tick();
    assert.deepEqual(started, ['b0', 'b1', 'p'], 'prefetch starts beside them');
    background[0].release();
    await tick();
    assert.deepEqual(started, ['b0', 'b1', 'p', 'b2'], 'a freed background slot goes to the next');
    for (const g of [...background, prefetch]) g.release();
    await Promise.all(all);
    assert.equal(started.length, 6);
  });

  it('a promoted prefetch runs before the other queued prefetch, and runs as demand', async () => {
    const limiter = new Limiter(1, 0);
    const started: string[] = [];
    const seen: Record<string, Priority> = {};
    const first = gatedTask(started, 'running');
    const all: Array<Promise<unknown>> = [limiter.run('prefetch', first.task)];
    const handles: Record<string, { promote(): void }> = {};
    for (const name of ['p1', 'p2', 'p3', 'b4']) {
      all.push(
        limiter.run(
          name.startsWith('b') ? 'background' : 'prefetch',
          async (priority) => {
            started.push(name);
            seen[name] = priority;
          },
          (q) => (handles[name] = q),
        ),
      );
    }
    await tick();
    handles.b4.promote();
    handles.p3.promote();
    handles.p3.promote(); // twice is harmless
    first.release();
    await Promise.all(all);
    assert.deepEqual(started, ['running', 'b4', 'p3', 'p1', 'p2']);
    assert.deepEqual(seen, { p1: 'prefetch', p2: 'prefetch', p3: 'demand', b4: 'demand' });
  });
});
