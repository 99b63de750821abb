#!/usr/bin/env bash
# bench/route-profile.sh: where route mode's time goes, per connection. Runs `multinode serve
# --route round-robin --workers 2 -- mn-http` under wrk -H 'Connection: close' (a new connection
# per request) and, while the load runs:
#   1. perf stat on the supervisor and on the workers: system calls by kind and context
#      switches, divided by the connections the workers closed in that window;
#   2. perf record -g on the supervisor alone: its CPU per connection and the share of each
#      system call in it (inclusive, from the call graphs).
# MULTINODE=/path/to/another/multinode profiles that binary instead (a before/after; mn-http is
# this tree's). Needs perf (Debian: apt-get install linux-perf) and wrk; run as root.
#
# Usage: bench/route-profile.sh            Knobs: MULTINODE= SECONDS_STAT=4 SECONDS_RECORD=5
# Prints a summary; the raw perf files are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_STAT=${SECONDS_STAT:-4}
SECONDS_RECORD=${SECONDS_RECORD:-5}
for tool in perf wrk; do
    command -v "$tool" >/dev/null || { echo "route-profile.sh: needs $tool" >&2; exit 1; }
done
cargo build --release --workspace --bins --locked --quiet
dir=$(mktemp -d /tmp/multinode-profile.XXXXXX)
chmod 755 "$dir"
cp "${MULTINODE:-target/release/multinode}" "$dir/multinode"
cp target/release/mn-http "$dir/"
mn=
wrk_pid=
cleanup() {
    if [ -n "$wrk_pid" ]; then kill "$wrk_pid" 2>/dev/null || true; fi
    if [ -n "$mn" ]; then
        kill -KILL "$mn" 2>/dev/null || true
        wait "$mn" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

NO_COLOR=1 "$dir/multinode" serve --workers 2 -l 127.0.0.1:0 --route round-robin --ready notify \
    -- "$dir/mn-http" >"$dir/log" 2>&1 &
mn=$!
tries=0
until [ "$(grep -c '\] ready' "$dir/log" || true)" -ge 2 ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 300 ] || { cat "$dir/log" >&2; exit 1; }
    sleep 0.1
done
# Wait until the supervisor sleeps (it reads /proc/PID/net/tcp after each `ready`).
quiet=0
while [ "$quiet" -lt 5 ]; do
    if [ "$(sed 's/.*) //' "/proc/$mn/stat" | awk '{print $1}')" = S ]; then
        quiet=$((quiet + 1))
    else
        quiet=0
    fi
    sleep 0.05
done
addr=$(grep -o 'listening on listen0 [^ ]*' "$dir/log" | head -1 | awk '{print $4}')
workers=$(pgrep -P "$mn" | tr '\n' ',' | sed 's/,$//') ||
    { echo "route-profile.sh: no worker processes under $mn" >&2; exit 1; }

wrk -t2 -c64 -d$((SECONDS_STAT + SECONDS_RECORD + 4))s -H 'Connection: close' "http://$addr/" \
    >"$dir/wrk" &
wrk_pid=$!
sleep 2
calls=(accept4 getpeername sendmsg close poll recvfrom recvmmsg recvmsg sendto clone3 mmap
    mprotect munmap)
ev=raw_syscalls:sys_enter,context-switches
for c in "${calls[@]}"; do ev+=",syscalls:sys_enter_$c"; done
# stat_of PIDS FILE: perf stat of the processes PIDS for SECONDS_STAT, into FILE; a failure is
# shown, not swallowed.
stat_of() {
    if ! perf stat -x, -e "$ev" -p "$1" -- sleep "$SECONDS_STAT" 2>"$2"; then
        echo "route-profile.sh: perf stat -p $1 failed:" >&2
        cat "$2" >&2
        return 1
    fi
}
stat_of "$workers" "$dir/workers.stat" &
stat_pid=$!
stat_of "$mn" "$dir/sup.stat"
wait "$stat_pid"
perf record -q -F 2999 -g -p "$mn" -o "$dir/sup.data" -- sleep "$SECONDS_RECORD" >/dev/null 2>&1
wait "$wrk_pid"
wrk_pid=

# count FILE EVENT: the figure perf stat gave for EVENT.
count() { awk -F, -v e="$2" '$3 == e { print $1 + 0 }' "$1"; }
conns=$(count "$dir/workers.stat" syscalls:sys_enter_close)
echo "connections closed by the workers in the ${SECONDS_STAT} s window: $conns"
echo
echo "| per connection | supervisor | workers |"
echo "|---|---:|---:|"
for e in raw_syscalls:sys_enter context-switches "${calls[@]/#/syscalls:sys_enter_}"; do
    s=$(count "$dir/sup.stat" "$e") w=$(count "$dir/workers.stat" "$e")
    [ "${s:-0}" = 0 ] && [ "${w:-0}" = 0 ] && continue
    awk -v n="$conns" -v s="${s:-0}" -v w="${w:-0}" -v e="${e#syscalls:sys_enter_}" \
        'BEGIN { printf "| %s | %.2f | %.2f |\n", e, s / n, w / n }'
done

rate=$(awk '/^Requests\/sec:/ {print $2}' "$dir/wrk")
samples=$(perf script -i "$dir/sup.data" -F time 2>/dev/null | wc -l)
echo
awk -v s="$samples" -v r="$rate" -v t="$SECONDS_RECORD" 'BEGIN {
    printf "supervisor CPU per connection: %.1f µs (%d samples at 2999 Hz over %d s, %.0f conn/s)\n",
        s / 2999 * 1e6 / (r * t), s, t, r }'
echo
echo "| supervisor, inclusive share of its CPU | % |"
echo "|---|---:|"
# Each system call's largest inclusive share among its entry symbols (__x64_sys_X, __sys_X,
# do_sys_X: which one carries the call graph varies), and schedule (the context switches).
perf report -i "$dir/sup.data" --children --sort sym --stdio -g none 2>/dev/null |
    awk '$3 == "[k]" {
        name = $4
        if (name == "schedule") { key = "schedule (context switches)" }
        else if (match(name, /^(__x64_sys|__sys|do_sys)_(accept4|getpeername|sendmsg|close|poll|recvfrom|recvmmsg)$/)) {
            key = name; sub(/^(__x64_sys|__sys|do_sys)_/, "", key)
        } else { next }
        v = $1; sub(/%/, "", v)
        if (v + 0 > best[key] + 0) best[key] = v
    }
    END { for (k in best) printf "| %s | %.1f%% |\n", k, best[k] }' | sort -t'|' -k3 -rn
