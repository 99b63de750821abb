#!/usr/bin/env python3
"""A worker for bench/chaos.sh logstall: writes lines to stdout at a steady rate and keeps count.

`spew.py DIR [LINES_PER_SECOND]` (default 5000): every 10 ms it writes the lines due since the
last burst in one write(2) (a blocking write: if nobody read the pipe, it would stop here), each
`spew slot=S pid=P n=N` and padding. Every 100 ms it saves how many lines it has written in
DIR/count.PID. It crashes (exit 3) when DIR/crash.PID appears, and exits 0 on SIGTERM, saving
its count first either way. Sends READY=1 to NOTIFY_SOCKET once started.
"""
import os
import signal
import socket
import sys
import time

pid = os.getpid()
slot = os.environ.get("MULTINODE_WORKER_ID", "-")
d = sys.argv[1]
rate = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
written = 0
stop = False


def save():
    tmp = f"{d}/.count.{pid}"
    with open(tmp, "w") as f:
        f.write(f"{written}\n")
    os.rename(tmp, f"{d}/count.{pid}")


def on_term(*_):
    global stop
    stop = True


def main():
    global written
    signal.signal(signal.SIGTERM, on_term)
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if addr:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
    pad = "x" * 40
    t0 = time.monotonic()
    last_save = t0
    while not stop:
        due = int((time.monotonic() - t0) * rate) - written
        if due > 0:
            chunk = "".join(f"spew slot={slot} pid={pid} n={written + i + 1} {pad}\n" for i in range(due))
            data = chunk.encode()
            while data:
                data = data[os.write(1, data):]
            written += due
        now = time.monotonic()
        if now - last_save >= 0.1:
            last_save = now
            save()
            if os.path.exists(f"{d}/crash.{pid}"):
                os._exit(3)
        time.sleep(0.01)
    save()


if __name__ == "__main__":
    main()
