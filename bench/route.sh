#!/usr/bin/env bash
# Route mode vs shared mode, in one run: requests/s with a new connection per request
# (wrk -H 'Connection: close', i.e. the connection rate) and with keep-alive connections.
#
# The main rows use ONE worker program for both modes: tests/workers mn-http, which serves fd 3
# whether it is a listening socket (shared) or a route channel (--route round-robin), so the
# difference is the supervisor's accept + SCM_RIGHTS hand-over. WITH_PYTHON=1 adds rows for
# the stdlib examples (hello.py shared, routed.py route): two different programs, for scale
# only (wrk counts a read error for every connection hello.py closes after `Connection: close`).
#
# ROUNDS=N repeats the mn-http pair N times, interleaved (shared, route; then route, shared;
# ...), and reports each round and the medians, with route ÷ shared. Each row also gives the
# CPU time per request of the supervisor and of the workers (utime+stime from /proc/PID/stat,
# exited threads included) and of wrk, which is steadier than the rates on a shared machine:
# when the CPUs are the limit, the rates go as the inverse of the total CPU per request, so
# "shared ÷ route" of the totals estimates the rate ratio on a machine of one's own.
# COMPARE=/path/to/another/multinode adds a route row with that binary to every round (a
# before/after in one run); its mn-http is this tree's.
#
# Usage: bench/route.sh            (as root or not; installs wrk with apt-get when missing)
# Knobs: DURATION=5s WORKERS=<nproc> CONNS=64 THREADS=2 ROUNDS=1 COMPARE= WITH_PYTHON=1
#        PYTHON=/usr/bin/python3 APPEND=0 (print only)
# Appends the table and the command to bench/RESULTS.md under "## Route mode vs shared".
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-$(nproc)}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/usr/bin/python3}
ROUNDS=${ROUNDS:-1}
COMPARE=${COMPARE:-}
CMDLINE="DURATION=$DURATION WORKERS=$WORKERS CONNS=$CONNS THREADS=$THREADS ROUNDS=$ROUNDS${COMPARE:+ COMPARE=$COMPARE}${WITH_PYTHON:+ WITH_PYTHON=1} bench/route.sh"

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y wrk >/dev/null
    else
        echo "bench/route.sh: wrk is not installed (apt-get install wrk)" >&2
        exit 1
    fi
fi

echo "building (release)..." >&2
cargo build --release --workspace --bins --locked --quiet

# Workers run as nobody when we are root: give them copies they can reach.
dir=$(mktemp -d /tmp/multinode-bench.XXXXXX)
chmod 755 "$dir"
cp target/release/multinode target/release/mn-http examples/python/hello.py \
    examples/python/routed.py "$dir/"
if [ -n "$COMPARE" ]; then
    cp "$COMPARE" "$dir/multinode-compare"
fi
mn_pid=
cleanup() {
    if [ -n "$mn_pid" ] && kill -0 "$mn_pid" 2>/dev/null; then
        kill -KILL "$mn_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# start MODE_ARGS... -- PROGRAM...: starts $bin (multinode), waits for every worker to be
# ready, sets $addr.
bin=multinode
start() {
    local log="$dir/multinode.log"
    # A fresh log: the previous run's `ready` lines must not count for this one.
    rm -f "$log"
    NO_COLOR=1 "$dir/$bin" serve --workers "$WORKERS" -l 127.0.0.1:0 "$@" >"$log" 2>&1 &
    mn_pid=$!
    local tries=0
    until n=$(grep -c '\] ready' "$log" 2>/dev/null || true); [ "${n:-0}" -ge "$WORKERS" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ] || ! kill -0 "$mn_pid" 2>/dev/null; then
            echo "bench/route.sh: multinode did not get ready:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    addr=$(grep -o 'listening on listen0 [^ ]*' "$log" | head -1 | awk '{print $4}')
    # After each `ready` the supervisor looks for sockets the worker bound itself (sock_diag
    # since 928fd02; before, a read of /proc/PID/net/tcp that took seconds on a machine with
    # many TIME_WAIT sockets). Measure once it sleeps again (state S in 5 samples 50 ms apart).
    local quiet=0
    tries=0
    while [ "$quiet" -lt 5 ] && [ "$tries" -lt 600 ]; do
        if [ "$(sed 's/.*) //' "/proc/$mn_pid/stat" | awk '{print $1}')" = S ]; then
            quiet=$((quiet + 1))
        else
            quiet=0
        fi
        tries=$((tries + 1))
        sleep 0.05
    done
}

stop() {
    kill -TERM "$mn_pid"
    local tries=0
    while kill -0 "$mn_pid" 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -gt 150 ]; then
            kill -KILL "$mn_pid" 2>/dev/null || true
        fi
        sleep 0.1
    done
    wait "$mn_pid" 2>/dev/null || true
    mn_pid=
}

# ticks PID...: the CPU clock ticks (utime+stime) the processes used so far, summed.
ticks() {
    local t=0 p f
    for p in "$@"; do
        # Fields 14 and 15; the command name (field 2) may hold spaces, so cut after ")".
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        t=$((t + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$t"
}

# wrk_rps [wrk args...]: prints "REQ_PER_S ERRORS SUP_US WORKERS_US WRK_US": the rate, the
# errors, and the CPU microseconds per request during the run of the supervisor, of the workers
# and of wrk itself (bash's `time`: user + sys of the child).
wrk_rps() {
    local out rps errs reqs workers s0 w0 s1 w1 wrk_cpu hz
    workers=$(pgrep -P "$mn_pid" | tr '\n' ' ')
    # shellcheck disable=SC2086
    s0=$(ticks "$mn_pid") w0=$(ticks $workers)
    local TIMEFORMAT='%3U %3S'
    { time wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$@" "http://$addr/" >"$dir/wrk.out"; } 2>"$dir/wrk.time"
    # shellcheck disable=SC2086
    s1=$(ticks "$mn_pid") w1=$(ticks $workers)
    out=$(cat "$dir/wrk.out")
    wrk_cpu=$(awk '{print $1 + $2}' "$dir/wrk.time")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); n = $4 + $6 + $8 + $10} /Non-2xx/ {n += $NF} END {print n + 0}' <<<"$out")
    hz=$(getconf CLK_TCK)
    awk -v r="$rps" -v e="$errs" -v n="$reqs" -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v hz="$hz" \
        -v c="$wrk_cpu" 'BEGIN { n = n > 0 ? n : 1;
            printf "%s %s %.1f %.1f %.1f\n", r, e, s * 1e6 / hz / n, w * 1e6 / hz / n, c * 1e6 / n }'
}

rows=()
# Per mode key: the round figures, space-separated (close rate, keep-alive rate, µs).
declare -A close_of keep_of sup_of wrk_of load_of total_of
# measure LABEL MODE_LABEL MODE_ARGS... -- PROGRAM...
measure() {
    local label=$1 mode=$2
    shift 2
    echo "$label, $mode..." >&2
    start "$@"
    wrk -t"$THREADS" -c"$CONNS" -d1s "http://$addr/" >/dev/null # warm-up
    read -r close_rps close_err close_sup close_wrk close_load < <(wrk_rps -H 'Connection: close')
    read -r keep_rps keep_err keep_sup keep_wrk keep_load < <(wrk_rps)
    stop
    rows+=("| $label | $mode | $close_rps | $close_err | $close_sup / $close_wrk / $close_load | $keep_rps | $keep_err | $keep_sup / $keep_wrk / $keep_load |")
    close_of[$mode]+="$close_rps "
    keep_of[$mode]+="$keep_rps "
    sup_of[$mode]+="$close_sup "
    wrk_of[$mode]+="$close_wrk "
    load_of[$mode]+="$close_load "
    total_of[$mode]+="$(awk -v a="$close_sup" -v b="$close_wrk" -v c="$close_load" 'BEGIN { print a + b + c }') "
}

# median VALUES...
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

shared_mode="shared"
route_mode="route round-robin"
compare_mode="route round-robin (COMPARE binary)"
pair_shared() { measure "mn-http (same program)" "$shared_mode" --ready notify -- "$dir/mn-http"; }
pair_route() {
    measure "mn-http (same program)" "$route_mode" --route round-robin --ready notify -- "$dir/mn-http"
    if [ -n "$COMPARE" ]; then
        bin=multinode-compare
        measure "mn-http (same program)" "$compare_mode" --route round-robin --ready notify -- "$dir/mn-http"
        bin=multinode
    fi
}
for round in $(seq "$ROUNDS"); do
    echo "round $round of $ROUNDS" >&2
    if [ $((round % 2)) = 1 ]; then
        pair_shared
        pair_route
    else
        pair_route
        pair_shared
    fi
done
summary=()
if [ "$ROUNDS" -gt 1 ]; then
    modes=("$shared_mode" "$route_mode")
    [ -n "$COMPARE" ] && modes+=("$compare_mode")
    # shellcheck disable=SC2086
    for m in "${modes[@]}"; do
        med_close=$(median ${close_of[$m]})
        med_keep=$(median ${keep_of[$m]})
        summary+=("| $m | $med_close | $med_keep | $(median ${sup_of[$m]}) / $(median ${wrk_of[$m]}) / $(median ${load_of[$m]}) |")
    done
    # shellcheck disable=SC2086
    sc=$(median ${close_of[$shared_mode]}) sk=$(median ${keep_of[$shared_mode]})
    for m in "${modes[@]:1}"; do
        # shellcheck disable=SC2086
        rc=$(median ${close_of[$m]}) rk=$(median ${keep_of[$m]})
        # shellcheck disable=SC2086
        ts=$(median ${total_of[$shared_mode]}) tr=$(median ${total_of[$m]})
        summary+=("| $m ÷ shared | $(awk -v a="$rc" -v b="$sc" 'BEGIN { printf "%.3f", a / b }') | $(awk -v a="$rk" -v b="$sk" 'BEGIN { printf "%.3f", a / b }') | CPU per request, shared ÷ this: $ts ÷ $tr = $(awk -v a="$ts" -v b="$tr" 'BEGIN { printf "%.3f", a / b }') |")
    done
fi
if [ -n "${WITH_PYTHON:-}" ]; then
    measure "python hello.py" "shared" --ready notify -- "$PYTHON" "$dir/hello.py"
    measure "python routed.py" "route round-robin" --route round-robin --ready delay:1s \
        -- "$PYTHON" "$dir/routed.py"
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
table=$(
    echo "| worker | mode | new connection per request (req/s) | errors | CPU µs/request: supervisor / workers / wrk | keep-alive (req/s) | errors | CPU µs/request: supervisor / workers / wrk |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
    if [ "${#summary[@]}" -gt 0 ]; then
        echo
        echo "Medians over $ROUNDS interleaved rounds (CPU: new connection per request):"
        echo
        echo "| mode | new connection per request (req/s) | keep-alive (req/s) | CPU µs/request: supervisor / workers / wrk |"
        echo "|---|---:|---:|---:|"
        printf '%s\n' "${summary[@]}"
    fi
)
block=$(
    echo
    echo "$(date -u +%Y-%m-%d) · commit $commit · $(nproc) CPUs · Linux $(uname -r) · wrk -t$THREADS -c$CONNS -d$DURATION, $WORKERS workers, loopback"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
    echo "$table"
    if [ -n "${WITH_PYTHON:-}" ]; then
        echo
        echo "The Python rows are two different programs, for scale only; wrk counts a read error for"
        echo "every connection hello.py closes after a \`Connection: close\` response."
    fi
)
echo "$table"

if [ "${APPEND:-1}" = 0 ]; then
    exit 0
fi
# shellcheck source=bench/record.sh
. bench/record.sh
record_in_results "## Route mode vs shared" "$block"
