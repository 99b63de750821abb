#!/usr/bin/env python3
"""probe.py: wait until a server of bench/peers.sh is up with all its workers.

    probe.py HOST:PORT N TIMEOUT_SECONDS

Sends GET / on a new connection, again and again, until answers with N distinct `process=<pid>`
values came back (every hello of the bench says which process answered), or the time is up
(exit 1, saying what it saw). Prints the pids.
"""

import http.client
import re
import sys
import time


def main():
    addr, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    seen, last = set(), "no answer yet"
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            conn.close()
            m = re.search(r"process=(\d+)", body)
            if resp.status == 200 and m:
                seen.add(m.group(1))
                if len(seen) >= n:
                    print(" ".join(sorted(seen)))
                    return
            last = f"{resp.status} {body.strip()[:80]!r}"
        except OSError as e:
            last = str(e)
            time.sleep(0.05)
    print(f"probe.py: {addr}: {len(seen)} of {n} workers answered within {timeout:g} s "
          f"(last: {last})", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
