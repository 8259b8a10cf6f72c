// A reader of the chaos test (./chaos), run as a child process with an IPC channel: its reads may
// block in the kernel (state D) while no daemon runs, which must never stop the test's own event loop.
// It opens every file once at the start (the fds a running container holds across crashes), then does
// random preads, through those fds and through fresh opens, comparing every byte with the source.
// Reads go through libuv's thread pool, so a blocked read leaves this loop free to report.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import type { ReaderCommand, ReaderEvent, ReaderFile, ReadOutcome } from './chaos';

const PAGE = 4096;
/** A read slower than this is reported on its own (it waited for a daemon or a registry). */
const SLOW_MS = 200;

let files: ReaderFile[] = [];
let sources: Buffer[] = [];
let oldFds: number[] = [];
let running = false;
let chaos: Promise<void> = Promise.resolve();
const counts = { ok: 0, short: 0, wrong: 0, errors: 0 };

function send(e: ReaderEvent): void {
  process.send?.(e);
}

function pread(fd: number, length: number, position: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const buf = Buffer.alloc(length);
    fs.read(fd, buf, 0, length, position, (err, n) => (err ? reject(err) : resolve(buf.subarray(0, n))));
  });
}

function open(p: string): Promise<number> {
  return new Promise((resolve, reject) => fs.open(p, 'r', (err, fd) => (err ? reject(err) : resolve(fd))));
}

/** Drops a file's pages from the page cache, so that the next read reaches the transport again. */
function dropPages(p: string): Promise<void> {
  return new Promise((resolve) =>
    execFile('dd', [`if=${p}`, 'iflag=nocache', 'count=0', 'status=none'], { timeout: 5000 }, () => resolve()),
  );
}

/**
 * `got` against the source's bytes at `offset`: right, short (fewer bytes than asked, all of them
 * right: a read cut by a failure), or wrong (some byte differs; how many pages read as zeros).
 */
function judge(i: number, offset: number, length: number, got: Buffer): ReadOutcome {
  const want = sources[i].subarray(offset, offset + got.length);
  if (got.equals(want)) return got.length === length ? { kind: 'ok' } : { kind: 'short', bytes: got.length };
  let zeroPages = 0;
  for (let p = 0; p < got.length; p += PAGE) if (got.subarray(p, p + PAGE).every((b) => b === 0)) zeroPages++;
  let firstWrong = 0;
  while (got[firstWrong] === want[firstWrong]) firstWrong++;
  return { kind: 'wrong', zeroPages, bytes: got.length, firstWrong };
}

async function readOnce(via: 'old-fd' | 'new-fd'): Promise<void> {
  const i = Math.floor(Math.random() * files.length);
  const size = sources[i].length;
  const offset = Math.floor(Math.random() * size);
  const length = Math.min(size - offset, 1 + Math.floor(Math.random() * 128 * 1024));
  const t0 = Date.now();
  let outcome: ReadOutcome;
  let fd = via === 'old-fd' ? oldFds[i] : -1;
  try {
    if (fd < 0) fd = await open(files[i].mounted);
    const got = await pread(fd, length, offset);
    outcome = judge(i, offset, length, got);
  } catch (err) {
    outcome = { kind: 'error', code: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    if (via === 'new-fd' && fd >= 0) fs.close(fd, () => undefined);
  }
  const t1 = Date.now();
  if (outcome.kind === 'error') counts.errors++;
  else counts[outcome.kind]++;
  if (outcome.kind !== 'ok' || t1 - t0 >= SLOW_MS)
    send({ type: 'read', file: files[i].name, offset, length, via, t0, t1, outcome });
}

async function chaosLoop(): Promise<void> {
  let n = 0;
  while (running) {
    await readOnce(n % 2 === 0 ? 'old-fd' : 'new-fd');
    if (++n % 50 === 0) {
      // Some pages of every file leave the page cache: old fds by their /proc link, the inode they hold.
      const i = Math.floor(Math.random() * files.length);
      await dropPages(`/proc/${process.pid}/fd/${oldFds[i]}`);
    }
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Reads every file in full through the fds opened at the start, retrying failures until `deadline`. */
async function verifyOldFds(deadline: number): Promise<void> {
  const chunk = 1 << 20;
  const results = [];
  for (const [i, f] of files.entries()) {
    await dropPages(`/proc/${process.pid}/fd/${oldFds[i]}`);
    const t0 = Date.now();
    let wrongReads = 0;
    let lastError: string | null = null;
    let right = true;
    for (let off = 0; off < sources[i].length; off += chunk) {
      const length = Math.min(chunk, sources[i].length - off);
      for (;;) {
        try {
          const got = await pread(oldFds[i], length, off);
          const j = judge(i, off, length, got);
          if (j.kind === 'short') throw Object.assign(new Error('short read'), { code: 'short read' });
          if (j.kind === 'wrong') {
            wrongReads++;
            right = false;
          }
          break;
        } catch (err) {
          lastError = (err as NodeJS.ErrnoException).code ?? String(err);
          if (Date.now() >= deadline) {
            right = false;
            break;
          }
          await new Promise((r) => setTimeout(r, 200));
        }
      }
    }
    results.push({ file: f.name, right, wrongReads, lastError, ms: Date.now() - t0 });
  }
  send({ type: 'verified', results });
}

process.on('message', (cmd: ReaderCommand) => {
  if (cmd.type === 'start') {
    files = cmd.files;
    sources = files.map((f) => fs.readFileSync(f.source));
    oldFds = files.map((f) => fs.openSync(f.mounted, 'r'));
    running = true;
    chaos = chaosLoop();
    send({ type: 'opened' });
  } else if (cmd.type === 'verify') {
    running = false;
    const deadline = Date.now() + cmd.timeoutMs;
    // A read still blocked in the kernel is left to finish on its own: the verification reads beside it.
    void Promise.race([chaos, new Promise((r) => setTimeout(r, cmd.timeoutMs / 4))])
      .then(() => verifyOldFds(deadline))
      .catch((err) => send({ type: 'failed', error: String(err) }));
  }
});

setInterval(() => send({ type: 'counts', ...counts }), 250).unref();
process.on('disconnect', () => process.exit(0));
