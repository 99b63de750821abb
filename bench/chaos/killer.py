#!/usr/bin/env python3
"""bench/chaos.sh kill's fault injector: SIGKILLs a random worker of a supervisor on a fixed beat.

`killer.py SUPERVISOR_PID COMM SECS OUT [PERIOD_MS [BASE_SOCKETS]]`: every PERIOD_MS (200) for
SECS seconds, picks one of the supervisor's children running COMM at random and SIGKILLs it,
writing `EPOCH_MS PID HELD GONE_MS` to OUT for each kill: the time read right before the kill,
the sockets the victim had open beyond BASE_SOCKETS (an idle worker's), i.e. the connections it
held, and when it was gone (its pidfd readable: it has exited and the kernel has closed its fds,
so nothing handed to it before then can be answered; 0 if not seen within a second). One process reading /proc directly, so the beat holds on a loaded machine (the script runs
it at a higher priority than the load). Prints `kills=N skipped=M` (M: beats when no worker ran).
"""
import os
import random
import select
import signal
import sys
import time


def children(pid):
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def sockets(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        pass
    return n


def main():
    sup, name, secs, out = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    period = (int(sys.argv[5]) if len(sys.argv) > 5 else 200) / 1000
    base = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    kills = skipped = 0
    start = time.monotonic()
    beat = start
    with open(out, "w") as log:
        while time.monotonic() - start < secs:
            ws = [c for c in children(sup) if comm(c) == name]
            if ws:
                v = random.choice(ws)
                held = max(sockets(v) - base, 0)
                try:
                    pidfd = os.pidfd_open(v)
                except ProcessLookupError:
                    skipped += 1
                    pidfd = None
                if pidfd is not None:
                    t = int(time.time() * 1000)
                    try:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        gone = 0
                        p = select.poll()
                        p.register(pidfd, select.POLLIN)
                        if p.poll(1000):
                            gone = int(time.time() * 1000)
                        log.write(f"{t} {v} {held} {gone}\n")
                        kills += 1
                    except ProcessLookupError:
                        skipped += 1
                    finally:
                        os.close(pidfd)
            else:
                skipped += 1
            beat += period
            time.sleep(max(beat - time.monotonic(), 0))
    print(f"kills={kills} skipped={skipped}")


if __name__ == "__main__":
    main()
