#!/usr/bin/env bash
# Client-IP affinity in the kernel vs reuseport without affinity, interleaved in one run:
#   A: multinode serve --balance reuseport                   (the kernel's own hash)
#   B: multinode serve --balance reuseport --route ip-hash   (multinode's BPF program)
# both serving the same worker (tests/workers mn-http), both up for the whole run, loaded in
# turn (A B, then B A, ...) by bench/loadgen (mn-load), whose connections come from SOURCES
# addresses of 127.0.0.0/8: a new connection per request (the connection rate) and
# keep-alive. mn-load also reports how many addresses were answered by more than one worker
# ("split"): 0 means every address stuck to one worker.
#
# Usage: flock /work/bench.lock bench/kaffinity.sh     (as root or not)
# Knobs: ROUNDS=5 DURATION=5 WORKERS=2 CONNS=64 THREADS=2 SOURCES=1000
# CONTROL=1: B is plain reuseport too (A/A'), to show how far B/A strays on this machine when
# nothing differs.
# Appends the figures and the command to bench/RESULTS.md under
# "## Client-IP affinity in the kernel".
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WORKERS=${WORKERS:-2}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
SOURCES=${SOURCES:-1000}
CONTROL=${CONTROL:-0}
CMDLINE="ROUNDS=$ROUNDS DURATION=$DURATION WORKERS=$WORKERS CONNS=$CONNS THREADS=$THREADS SOURCES=$SOURCES"
[ "$CONTROL" = 1 ] && CMDLINE+=" CONTROL=1"
CMDLINE+=" flock /work/bench.lock bench/kaffinity.sh"

echo "building (release)..." >&2
cargo build --release --locked --quiet -p multinode -p multinode-test-workers -p mn-load

# Workers run as nobody when we are root: give them copies they can reach.
dir=$(mktemp -d /tmp/multinode-kaffinity.XXXXXX)
chmod 755 "$dir"
cp target/release/multinode target/release/mn-http target/release/mn-load "$dir/"
pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT

# start NAME MODE_ARGS...: starts a service, waits for every worker to be ready, sets $addr.
start() {
    local name=$1
    shift
    local log="$dir/$name.log"
    NO_COLOR=1 "$dir/multinode" serve --name "kaffinity-$name-$$" --workers "$WORKERS" \
        -l 127.0.0.1:0 --ready notify "$@" -- "$dir/mn-http" >"$log" 2>&1 &
    pids+=($!)
    local tries=0
    # (the log may not exist yet: no count is 0)
    until n=$(grep -c '\] ready' "$log" 2>/dev/null); [ "${n:-0}" -ge "$WORKERS" ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 300 ] || ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "bench/kaffinity.sh: $name did not get ready:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    addr=$(grep -o 'listening on listen0 [^ ]*' "$log" | head -1 | awk '{print $4}')
}

start plain --balance reuseport
addr_a=$addr
b_label="B: reuseport + ip-hash"
if [ "$CONTROL" = 1 ]; then
    b_label="B: reuseport again (control)"
    start control --balance reuseport
else
    start iphash --balance reuseport --route ip-hash
fi
addr_b=$addr

# load ADDR [--keepalive]: prints mn-load's key=value line.
load() {
    local addr=$1
    shift
    "$dir/mn-load" --addr "$addr" --sources "$SOURCES" --conns "$CONNS" --threads "$THREADS" \
        --duration "$DURATION" "$@" | tail -1
}
field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k {print $2}'; }

# Warm-up: both services, both modes, one second each.
for a in "$addr_a" "$addr_b"; do
    DURATION=1 load "$a" >/dev/null
    DURATION=1 load "$a" --keepalive >/dev/null
done

loadavg=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A rps errs split
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order="a b"; else order="b a"; fi
    for kind in close keepalive; do
        flag=()
        [ "$kind" = keepalive ] && flag=(--keepalive)
        for svc in $order; do
            addr=$addr_a
            [ "$svc" = b ] && addr=$addr_b
            line=$(load "$addr" "${flag[@]}")
            echo "round $round $kind $svc: $line" >&2
            rps[$svc.$kind]+="$(field rps "$line") "
            errs[$svc.$kind]=$((${errs[$svc.$kind]:-0} + $(field errors "$line")))
            split[$svc.$kind]=$((${split[$svc.$kind]:-0} + $(field split "$line")))
        done
    done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
sum() { tr ' ' '\n' <<<"$1" | grep . | awk '{s += $1} END {print s}'; }

rows=()
for kind in close keepalive; do
    label="new connection per request"
    [ "$kind" = keepalive ] && label="keep-alive"
    ma=$(median "${rps[a.$kind]}")
    mb=$(median "${rps[b.$kind]}")
    ratio=$(awk -v a="$(sum "${rps[a.$kind]}")" -v b="$(sum "${rps[b.$kind]}")" 'BEGIN {printf "%.3f", b / a}')
    # B/A of each round (A and B run back to back in it), then their median: what drifts in
    # the machine's background load over the run cancels out within a round.
    paired=$(paste -d' ' <(tr ' ' '\n' <<<"${rps[a.$kind]}" | grep .) <(tr ' ' '\n' <<<"${rps[b.$kind]}" | grep .) |
        awk '{printf "%.3f ", $2 / $1}')
    rows+=("| $label | ${rps[a.$kind]% } | $ma | ${errs[a.$kind]} | ${split[a.$kind]} | ${rps[b.$kind]% } | $mb | ${errs[b.$kind]} | ${split[b.$kind]} | $ratio | $(median "$paired") |")
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo "?")
table=$(
    echo "| load | A: reuseport, req/s per round | A median | A errors | A split | $b_label, req/s per round | B median | B errors | B split | B/A (sums) | B/A (median of rounds) |"
    echo "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
)
block=$(
    echo
    echo "$(date -u +%Y-%m-%d) · commit $commit · $(nproc) CPUs (shared VM) · Linux $(uname -r) · mn-load $CONNS connections, $THREADS threads, ${DURATION}s × $ROUNDS rounds per cell, $SOURCES client addresses · $WORKERS mn-http workers · load average at the start $loadavg"
    echo
    echo '```'
    echo "$CMDLINE"
    echo '```'
    echo
    echo "$table"
)
echo "$table"

# shellcheck source=bench/record.sh
. bench/record.sh
record_in_results "## Client-IP affinity in the kernel" "$block"
