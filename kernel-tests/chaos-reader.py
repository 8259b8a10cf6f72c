#!/usr/bin/env python3
"""Random reads through fds opened once, checked against reference copies, for the crash tests.

    chaos-reader.py STOP_FILE SEED MOUNTED_FILE:REFERENCE_FILE...

Opens every mounted file once, then reads random ranges through those fds until STOP_FILE exists.
A read that fails (EIO while no daemon serves it, or when its fetch failed) is tried again later,
until it returns the right bytes. Prints one JSON line: reads (right), wrong (reads that returned
bytes other than the reference's), failed (failed attempts), unresolved (reads never right, tried
again for RETRY_SECONDS after the stop), slowest (seconds of the slowest attempt: a read that blocked
while no daemon ran).
"""
import json
import os
import random
import sys
import time

RETRY_SECONDS = 180


def main() -> int:
    stop, seed, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    rng = random.Random(seed)
    files = []
    for pair in pairs:
        mounted, reference = pair.split(":", 1)
        with open(reference, "rb") as f:
            files.append((os.open(mounted, os.O_RDONLY), f.read()))
    reads = wrong = failed = 0
    slowest = 0.0
    pending = []  # (file index, offset, length) of reads not yet right

    def attempt(i: int, off: int, length: int) -> bool:
        """True when the read is done (right or wrong), False when it failed and must be tried again."""
        nonlocal reads, wrong, failed, slowest
        fd, ref = files[i]
        t0 = time.monotonic()
        try:
            got = os.pread(fd, length, off)
        except OSError:
            failed += 1
            return False
        finally:
            slowest = max(slowest, time.monotonic() - t0)
        if got == ref[off : off + length]:
            reads += 1
        else:
            wrong += 1
            print(f"chaos-reader: wrong bytes in {pairs[i]} at {off}+{length}", file=sys.stderr, flush=True)
        return True

    while not os.path.exists(stop):
        pending = [p for p in pending if not attempt(*p)]
        i = rng.randrange(len(files))
        size = len(files[i][1])
        length = rng.randrange(1, 64 * 1024)
        off = rng.randrange(0, max(1, size - length))
        if not attempt(i, off, length):
            pending.append((i, off, length))
        time.sleep(0.02)
    deadline = time.monotonic() + RETRY_SECONDS
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if not attempt(*p)]
        if pending:
            time.sleep(0.5)
    print(json.dumps({"reads": reads, "wrong": wrong, "failed": failed, "unresolved": len(pending), "slowest": slowest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
