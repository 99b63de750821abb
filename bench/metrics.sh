#!/usr/bin/env bash
# bench/metrics.sh: what --metrics costs the supervisor. Three runs, release build, WORKERS (8)
# hello workers each:
#   1. bench/idle.sh: no --metrics (none of the health options): CPU ticks and wake-ups idle;
#   2. --metrics, never scraped, IDLE_SECS (30) s: CPU ticks and wake-ups (should be 0 too);
#   3. --metrics scraped once a second for SCRAPES (30) scrapes: supervisor CPU per scrape, in
#      clock ticks (utime+stime, /proc/PID/stat) and in ms (on-CPU time of every thread,
#      /proc/PID/task/*/schedstat, nanoseconds), context switches per scrape, and its resident
#      memory (VmRSS, VmHWM) at the end.
# Stops everything on exit, also on failure or Ctrl-C; every wait is bounded.
#
# Run: bench/metrics.sh            (as root, like CI: workers run as nobody)
#      WORKERS=4 IDLE_SECS=10 SCRAPES=10 bench/metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${WORKERS:-8}
IDLE_SECS=${IDLE_SECS:-30}
SCRAPES=${SCRAPES:-30}

command -v curl >/dev/null || { echo "metrics.sh: needs curl" >&2; exit 1; }

echo "== 1. no --metrics: bench/idle.sh (WORKERS=$WORKERS IDLE_SECS=$IDLE_SECS)"
WORKERS=$WORKERS IDLE_SECS=$IDLE_SECS bench/idle.sh
echo

# idle.sh built the release binaries.
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
  --metrics 127.0.0.1:0 --name "bench-metrics-$$" -- "$tmp/hello" >"$log" 2>&1 &
sup=$!

for _ in $(seq 600); do
  kill -0 "$sup" 2>/dev/null || { cat "$log"; echo "metrics.sh: multinode exited" >&2; exit 1; }
  [ "$(grep -c '\] ready' "$log" || true)" -ge "$WORKERS" ] && break
  sleep 0.1
done
if [ "$(grep -c '\] ready' "$log" || true)" -lt "$WORKERS" ]; then
  cat "$log"
  echo "metrics.sh: workers not ready within 60 s" >&2
  exit 1
fi
maddr=$(sed -n 's/.*metrics and health on \([0-9.:]*\) .*/\1/p' "$log" | head -n1)
[ -n "$maddr" ] || { cat "$log"; echo "metrics.sh: no metrics address" >&2; exit 1; }

# utime + stime of the whole process (all threads), in clock ticks.
ticks() { sed 's/^.*) //' "/proc/$sup/stat" | awk '{ print $12 + $13 }'; }
# On-CPU time of every thread, in nanoseconds.
oncpu_ns() { cat /proc/"$sup"/task/*/schedstat | awk '{ n += $1 } END { printf "%d\n", n }'; }
# Context switches of every thread of the supervisor.
switches() {
  cat /proc/"$sup"/task/*/status |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n }'
}
field() { awk -v f="$1:" '$1 == f { print $2 " " $3 }' "/proc/$sup/status"; }
hz=$(getconf CLK_TCK)

echo "== 2. --metrics $maddr, not scraped, $IDLE_SECS s"
t0=$(ticks); s0=$(switches)
sleep "$IDLE_SECS"
t1=$(ticks); s1=$(switches)
echo "idle ${IDLE_SECS} s with --metrics: supervisor CPU $((t1 - t0)) ticks, context switches $((s1 - s0)) (all threads)"
echo

echo "== 3. --metrics $maddr, scraped once a second, $SCRAPES scrapes"
size=0
t0=$(ticks); n0=$(oncpu_ns); s0=$(switches)
for i in $(seq "$SCRAPES"); do
  body=$(curl -sf --max-time 5 "http://$maddr/metrics") || { echo "metrics.sh: scrape $i failed" >&2; exit 1; }
  size=${#body}
  sleep 1
done
t1=$(ticks); n1=$(oncpu_ns); s1=$(switches)
dt=$((t1 - t0)); dn=$((n1 - n0)); ds=$((s1 - s0))
echo "multinode $(target/release/multinode --version | awk '{ print $2 }'), pid $sup, $WORKERS hello workers, $(nproc) CPUs; /metrics is $size bytes"
awk -v t="$dt" -v n="$dn" -v s="$ds" -v k="$SCRAPES" -v hz="$hz" 'BEGIN {
  printf "%d scrapes: supervisor CPU %d ticks (%d ticks = 1 s) = %.2f ticks per scrape\n", k, t, hz, t / k
  printf "%d scrapes: supervisor on-CPU %.1f ms = %.3f ms per scrape (schedstat, all threads)\n", k, n / 1e6, n / 1e6 / k
  printf "%d scrapes: context switches %d = %.1f per scrape\n", k, s, s / k
}'
echo "supervisor memory after the scrapes: VmRSS $(field VmRSS), VmHWM $(field VmHWM), threads $(field Threads | awk '{ print $1 }')"
