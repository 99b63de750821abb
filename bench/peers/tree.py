#!/usr/bin/env python3
"""tree.py: what a process and all its descendants use now, for bench/peers.sh.

    tree.py PID

Prints three numbers for PID and every process below it, read from /proc: the CPU time used so
far (utime + stime in clock ticks, /proc/PID/stat fields 14 and 15), the resident memory in KiB
(/proc/PID/statm, shared pages counted in every process that maps them), and how many
processes there are. bench/peers.sh reads it before and after each wrk run to get the server
side's CPU per request (supervisor and workers together), a figure that a busy machine
disturbs far less than requests/s.
"""

import os
import sys


def main():
    root = int(sys.argv[1])
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    children, usage = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{name}/statm") as f:
                resident = int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        pid, ppid = int(name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        usage[pid] = (int(fields[11]) + int(fields[12]), resident * page_kib)
    ticks = rss = count = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in usage:
            ticks += usage[pid][0]
            rss += usage[pid][1]
            count += 1
        todo.extend(children.get(pid, []))
    print(ticks, rss, count)


if __name__ == "__main__":
    main()
