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
# Usage: bench/route.sh            (as root or not; installs wrk with apt-get when missing)
# Knobs: DURATION=5s WORKERS=<nproc> CONNS=64 THREADS=2 WITH_PYTHON=1 PYTHON=/usr/bin/python3
# Appends the table and the command to bench/RESULTS.md under "## Route mode vs shared".
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-$(nproc)}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
PYTHON=${PYTHON:-/usr/bin/python3}
CMDLINE="DURATION=$DURATION WORKERS=$WORKERS CONNS=$CONNS THREADS=$THREADS${WITH_PYTHON:+ WITH_PYTHON=1} bench/route.sh"

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
mn_pid=
cleanup() {
    if [ -n "$mn_pid" ] && kill -0 "$mn_pid" 2>/dev/null; then
        kill -KILL "$mn_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# start MODE_ARGS... -- PROGRAM...: starts multinode, waits for every worker to be ready,
# sets $addr.
start() {
    local log="$dir/multinode.log"
    NO_COLOR=1 "$dir/multinode" serve --workers "$WORKERS" -l 127.0.0.1:0 "$@" >"$log" 2>&1 &
    mn_pid=$!
    local tries=0
    until [ "$(grep -c '\] ready' "$log" || true)" -ge "$WORKERS" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ] || ! kill -0 "$mn_pid" 2>/dev/null; then
            echo "bench/route.sh: multinode did not get ready:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    addr=$(grep -o 'listening on listen0 [^ ]*' "$log" | head -1 | awk '{print $4}')
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

# wrk_rps [wrk args...]: prints "REQ_PER_S ERRORS".
wrk_rps() {
    local out rps errs
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" "$@" "http://$addr/")
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$out")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); n = $4 + $6 + $8 + $10} /Non-2xx/ {n += $NF} END {print n + 0}' <<<"$out")
    echo "$rps $errs"
}

rows=()
# measure LABEL MODE_LABEL MODE_ARGS... -- PROGRAM...
measure() {
    local label=$1 mode=$2
    shift 2
    echo "$label, $mode..." >&2
    start "$@"
    wrk -t"$THREADS" -c"$CONNS" -d1s "http://$addr/" >/dev/null # warm-up
    read -r close_rps close_err < <(wrk_rps -H 'Connection: close')
    read -r keep_rps keep_err < <(wrk_rps)
    stop
    rows+=("| $label | $mode | $close_rps | $close_err | $keep_rps | $keep_err |")
}

measure "mn-http (same program)" "shared" --ready notify -- "$dir/mn-http"
measure "mn-http (same program)" "route round-robin" --route round-robin --ready notify -- "$dir/mn-http"
if [ -n "${WITH_PYTHON:-}" ]; then
    measure "python hello.py" "shared" --ready notify -- "$PYTHON" "$dir/hello.py"
    measure "python routed.py" "route round-robin" --route round-robin --ready delay:1s \
        -- "$PYTHON" "$dir/routed.py"
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
table=$(
    echo "| worker | mode | new connection per request (req/s) | errors | keep-alive (req/s) | errors |"
    echo "|---|---|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
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

results=bench/RESULTS.md
[ -f "$results" ] || echo "# Benchmark results (newest last in each section)" >"$results"
if ! grep -qx '## Route mode vs shared' "$results"; then
    printf '\n## Route mode vs shared\n' >>"$results"
fi
# Insert at the end of that section (before the next "## " heading, if any).
tmp=$(mktemp)
BLOCK=$block awk '
    BEGIN { block = ENVIRON["BLOCK"] }
    /^## / && inside { print block; print ""; done = 1; inside = 0 }
    { print }
    $0 == "## Route mode vs shared" && !done { inside = 1 }
    END { if (inside) print block }
' "$results" >"$tmp"
mv "$tmp" "$results"
echo "appended to $results" >&2
