// The pending kernel requests of a transport: each answered exactly once, EIO on failure, at its
// deadline and at close, and never written to after its answer.
import assert from 'node:assert/strict';
import os from 'node:os';
import { it } from 'node:test';
import type { RangeSink, RangeSource } from '../../src/storage/range-source';
import { MissRequests } from '../../src/transport/miss-requests';

const { EIO } = os.constants.errno;

/** A source whose serve waits for `gate` and then writes `fill` into buffer sinks (or fails). */
function source(
  opts: { gate?: Promise<void>; fail?: boolean; fetched?: number; onWrite?: (sink: RangeSink) => void } = {},
): RangeSource {
  return {
    size: 1 << 20,
    what: 'test source',
    serve: async (start, end, sink) => {
      await opts.gate;
      if (opts.fail) throw new Error('chunk does not match its digest');
      if (sink.kind === 'buffer') sink.buf.fill(7, sink.offset, sink.offset + (end - start));
      opts.onWrite?.(sink);
      return opts.fetched ?? 0;
    },
  };
}

function recorder(): { answers: number[]; answer: (errno: number) => void } {
  const answers: number[] = [];
  return { answers, answer: (errno) => answers.push(errno) };
}

it('answers 0 once served, and counts a miss only when chunks were fetched', async () => {
  let misses = 0;
  const m = new MissRequests<number>('test', { onMiss: () => misses++ });
  const a = recorder();
  const buf = Buffer.alloc(10);
  await m.serve(1, {
    source: source({ fetched: 2 }),
    start: 0,
    end: 10,
    sink: { kind: 'buffer', buf, offset: 0 },
    answer: a.answer,
  });
  await m.serve(2, {
    source: source({ fetched: 0 }),
    start: 0,
    end: 10,
    sink: { kind: 'buffer', buf, offset: 0 },
    answer: a.answer,
  });
  assert.deepEqual(a.answers, [0, 0]);
  assert.equal(misses, 1);
  assert.equal(m.requests, 2);
  assert.equal(m.size, 0);
  assert.ok(buf.equals(Buffer.alloc(10, 7)));
});

it('answers EIO when serving fails', async () => {
  const m = new MissRequests<number>('test');
  const a = recorder();
  await m.serve(1, { source: source({ fail: true }), start: 0, end: 10, sink: { kind: 'cache' }, answer: a.answer });
  assert.deepEqual(a.answers, [EIO]);
});

it('answers EIO at the deadline, once, and the late completion neither answers nor may write', async () => {
  const m = new MissRequests<number>('test', { deadlineMs: 20 });
  const a = recorder();
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  let stillPending: boolean | undefined;
  const served = m.serve(9, {
    source: source({ gate, onWrite: () => (stillPending = m.isPending(9)) }),
    start: 0,
    end: 10,
    sink: { kind: 'cache' },
    answer: a.answer,
  });
  assert.equal(m.isPending(9), true);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(a.answers, [EIO]);
  assert.equal(m.isPending(9), false, 'the request is gone once answered');
  open();
  await served;
  assert.equal(stillPending, false);
  assert.deepEqual(a.answers, [EIO], 'answered once');
});

it('close answers every pending request with EIO; a refused request is answered at once', async () => {
  const m = new MissRequests<string>('test');
  const a = recorder();
  const never = new Promise<void>(() => undefined);
  void m.serve('x', { source: source({ gate: never }), start: 0, end: 1, sink: { kind: 'cache' }, answer: a.answer });
  void m.serve('y', { source: source({ gate: never }), start: 0, end: 1, sink: { kind: 'cache' }, answer: a.answer });
  m.refuse(a.answer, 'names nothing served', {});
  assert.deepEqual(a.answers, [EIO]);
  assert.equal(m.size, 2);
  m.failAll();
  assert.deepEqual(a.answers, [EIO, EIO, EIO]);
  assert.equal(m.size, 0);
  assert.equal(m.answer('x', 0), false, 'nothing left to answer');
});

it('an answer that throws is logged, not propagated, and the request is still gone', async () => {
  const m = new MissRequests<number>('test');
  await m.serve(1, {
    source: source(),
    start: 0,
    end: 1,
    sink: { kind: 'cache' },
    answer: () => {
      throw new Error('EBADF');
    },
  });
  assert.equal(m.size, 0);
});
