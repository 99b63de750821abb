#!/usr/bin/env bash
# How long a crashed worker's slot stays empty: SIGKILL of a ready worker → its replacement
# started (the supervisor's part) → its replacement ready (plus the worker's own start), median
# and spread over N crashes, each crash of a worker that has been up past --min-uptime (so
# each is a "first crash" and restarts at once).
#
# Times are taken by the script's own monotonic clock: just before kill(2), and when the
# supervisor's `started` and `ready` JSON events arrive on its stdout pipe.
#
# Usage: bench/restart.sh        Knobs: CRASHES=50 WORKERS=2 UPTIME=0.3 (seconds a worker is
# up before it is killed; --min-uptime is set just below it)
set -euo pipefail
cd "$(dirname "$0")/.."

CRASHES=${CRASHES:-50}
WORKERS=${WORKERS:-2}
UPTIME=${UPTIME:-0.3}
PYTHON=${PYTHON:-/usr/bin/python3}

echo "building (release)..." >&2
cargo build --release -p multinode -p hello --bins --locked --quiet

dir=$(mktemp -d /tmp/multinode-bench.XXXXXX)
chmod 755 "$dir"
cp target/release/multinode target/release/hello "$dir/"
trap 'rm -rf "$dir"' EXIT

CRASHES=$CRASHES WORKERS=$WORKERS UPTIME=$UPTIME DIR=$dir "$PYTHON" - <<'EOF'
import json, os, signal, statistics, subprocess, sys, time

crashes, workers, uptime = int(os.environ["CRASHES"]), int(os.environ["WORKERS"]), float(os.environ["UPTIME"])
d = os.environ["DIR"]
min_uptime = f"{int(uptime * 1000 * 0.8)}ms"
cmd = [f"{d}/multinode", "serve", "-w", str(workers), "-l", "127.0.0.1:0", "--ready", "notify",
       "--min-uptime", min_uptime, "--log-format", "json", "--", f"{d}/hello"]
mn = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      start_new_session=True)

def events():
    for line in mn.stdout:
        now = time.monotonic()
        try:
            e = json.loads(line)
        except ValueError:
            continue
        yield now, e

stream = events()

def wait_for(pred, what):
    deadline = time.monotonic() + 30
    for now, e in stream:
        if pred(e):
            return now, e
        if time.monotonic() > deadline:
            break
    sys.exit(f"bench/restart.sh: no {what} event; multinode said nothing more")

try:
    ready = {}
    while len(ready) < workers:
        _, e = wait_for(lambda e: e.get("event") == "ready", "ready")
        ready[e["slot"]] = e["pid"]
    to_started, to_ready, delays = [], [], []
    for i in range(crashes):
        slot = i % workers
        time.sleep(uptime)
        victim = ready[slot]
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        _, ex = wait_for(lambda e: e.get("event") == "exited" and e.get("pid") == victim, "exited")
        delays.append(ex.get("restart_in_ms"))
        t1, st = wait_for(lambda e: e.get("event") == "started" and e.get("slot") == slot, "started")
        t2, rd = wait_for(lambda e: e.get("event") == "ready" and e.get("slot") == slot, "ready")
        ready[slot] = rd["pid"]
        to_started.append((t1 - t0) * 1000)
        to_ready.append((t2 - t0) * 1000)
finally:
    os.killpg(mn.pid, signal.SIGTERM)
    try:
        mn.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(mn.pid, signal.SIGKILL)
        mn.wait()

def row(name, xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]
    return f"| {name} | {statistics.median(xs):.2f} | {xs[0]:.2f} | {q(0.9):.2f} | {xs[-1]:.2f} |"

print(f"{crashes} crashes of hello (--ready notify), {workers} workers; restart_in_ms announced: "
      f"{sorted(set(delays))}")
print()
print("| SIGKILL → replacement | median ms | min | p90 | max |")
print("|---|---:|---:|---:|---:|")
print(row("started (supervisor's part)", to_started))
print(row("ready (plus hello's own start)", to_ready))
EOF
