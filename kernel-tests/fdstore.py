#!/usr/bin/env python3
"""A stand-in for systemd's fd store with Restart=on-failure, for the VM tests (no systemd there).

    fdstore.py NOTIFY_SOCKET_PATH COMMAND [ARG...]

Runs COMMAND with NOTIFY_SOCKET set; keeps the fds it sends with FDSTORE=1 (by FDNAME) and drops
them on FDSTOREREMOVE=1; when COMMAND dies of a signal, starts it again with the stored fds from 3
up (LISTEN_FDS, LISTEN_FDNAMES), as systemd does. SIGTERM is passed on and ends the loop.
"""
import os
import signal
import socket
import subprocess
import sys


def main() -> int:
    path, cmd = sys.argv[1], sys.argv[2:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if os.path.exists(path):
        os.unlink(path)
    sock.bind(path)
    sock.settimeout(0.2)
    store: dict[str, int] = {}
    stopping = False
    child = None

    def spawn() -> subprocess.Popen:
        names = list(store)
        fds = [store[n] for n in names]
        env = dict(os.environ, NOTIFY_SOCKET=path)
        if fds:
            env.update(LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=":".join(names))

        def place_fds() -> None:
            for i, fd in enumerate(fds):
                os.dup2(fd, 3 + i)

        print(f"fdstore: starting with {len(fds)} stored fds {names}", file=sys.stderr, flush=True)
        return subprocess.Popen(cmd, env=env, preexec_fn=place_fds, pass_fds=[3 + i for i in range(len(fds))])

    def on_term(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    child = spawn()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 4096, 16)
            fields = dict(line.split("=", 1) for line in msg.decode().split("\n") if "=" in line)
            name = fields.get("FDNAME", "stored")
            if fields.get("FDSTORE") == "1" and fds:
                if name in store:
                    os.close(store[name])
                store[name] = fds[0]
                for extra in fds[1:]:
                    os.close(extra)
                print(f"fdstore: stored {name}", file=sys.stderr, flush=True)
            elif fields.get("FDSTOREREMOVE") == "1" and name in store:
                os.close(store.pop(name))
                print(f"fdstore: removed {name}", file=sys.stderr, flush=True)
            else:
                for fd in fds:
                    os.close(fd)
        except (socket.timeout, InterruptedError):
            pass
        code = child.poll()
        if code is None:
            continue
        if code < 0 and not stopping:
            print(f"fdstore: child died of signal {-code}: restarting", file=sys.stderr, flush=True)
            child = spawn()
            continue
        return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
