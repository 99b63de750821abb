#!/usr/bin/env bash
# bench/idle.sh: what an idle supervisor costs. Starts WORKERS (8) hello workers under the
# release build of multinode on 127.0.0.1 (a free port), waits until every worker is ready,
# then leaves it alone for IDLE_SECS (30) s and reports the supervisor's CPU time (utime +
# stime, in clock ticks, from /proc/PID/stat), its context switches (every thread: a wake-up
# is a switch) and its resident memory (VmRSS, VmHWM). Stops everything on exit, also on
# failure or Ctrl-C.
#
# Run: bench/idle.sh            (as root, like CI: workers run as nobody)
#      WORKERS=4 IDLE_SECS=10 bench/idle.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-8}
IDLE_SECS=${IDLE_SECS:-30}

cargo build --release --workspace --locked --quiet

# A directory every user can read: as root, multinode runs the workers as nobody, who may not
# be able to enter the checkout.
tmp=$(mktemp -d)
chmod 755 "$tmp"
cp target/release/hello "$tmp/hello"
log="$tmp/multinode.log"
sup=""

cleanup() {
  if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
    kill -TERM "$sup" 2>/dev/null || true
    for _ in $(seq 150); do
      kill -0 "$sup" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$sup" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NO_COLOR=1 target/release/multinode serve --workers "$WORKERS" --listen 127.0.0.1:0 \
  -- "$tmp/hello" >"$log" 2>&1 &
sup=$!

# Ready: every worker sent READY=1 (hello does) or passed the --ready delay.
for _ in $(seq 600); do
  kill -0 "$sup" 2>/dev/null || { cat "$log"; echo "idle.sh: multinode exited" >&2; exit 1; }
  [ "$(grep -c '\] ready' "$log" || true)" -ge "$WORKERS" ] && break
  sleep 0.1
done
if [ "$(grep -c '\] ready' "$log" || true)" -lt "$WORKERS" ]; then
  cat "$log"
  echo "idle.sh: workers not ready within 60 s" >&2
  exit 1
fi
addr=$(sed -n 's/.*listening on listen0 \([0-9.:]*\) .*/\1/p' "$log" | head -n1)

# utime + stime of the whole process (all threads), in clock ticks.
ticks() { sed 's/^.*) //' "/proc/$sup/stat" | awk '{ print $12 + $13 }'; }
# Context switches of every thread of the supervisor.
switches() {
  cat /proc/"$sup"/task/*/status |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n }'
}
field() { awk -v f="$1:" '$1 == f { print $2 " " $3 }' "/proc/$sup/status"; }

t0=$(ticks)
s0=$(switches)
sleep "$IDLE_SECS"
t1=$(ticks)
s1=$(switches)

echo "multinode $(target/release/multinode --version | awk '{ print $2 }'), pid $sup, $WORKERS hello workers on $addr, $(nproc) CPUs"
echo "idle ${IDLE_SECS} s: supervisor CPU $((t1 - t0)) ticks (utime+stime; $(getconf CLK_TCK) ticks = 1 s; total since start $t1)"
echo "idle ${IDLE_SECS} s: supervisor context switches $((s1 - s0)) (all threads)"
echo "supervisor memory: VmRSS $(field VmRSS), VmHWM $(field VmHWM), threads $(field Threads | awk '{ print $1 }')"
rss_workers=0
for p in $(grep -o 'worker\.[0-9]*\[[0-9]*\] started' "$log" | sed 's/.*\[\([0-9]*\)\].*/\1/'); do
  r=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
  rss_workers=$((rss_workers + r))
done
echo "workers memory: VmRSS $rss_workers kB in total"
