#!/usr/bin/env bash
# Chaos and soak for multinode (issue 15). Each scenario starts its own multinode (release
# build, loopback only), does its damage for a bounded time, checks how multinode came out of
# it, prints a summary and records it in bench/RESULTS.md (a "### ..." subsection of "## Chaos
# and soak (bench/chaos.sh)", replaced on every run, with the command).
#
#   kill      kill -9 of a random worker every 200 ms for 60 s under load, in each mode
#             (shared, reuseport, route round-robin, route ip-hash)
#   stop      SIGSTOP of the supervisor for 10 s under load, then SIGCONT (shared, reuseport,
#             route)
#   logstall  the reader of multinode's output stops reading for 30 s; a worker crashes
#             meanwhile
#   emfile    the supervisor's open-files limit cut to what it has open, under route-mode load
#             and with a reload, for 10 s, then raised again
#   churn     10,000 crash-restarts, then 500 rolling reloads: fds, RSS, zombies
#   idle      10,000 concurrent idle connections in route mode
#
# Usage: bench/chaos.sh SCENARIO...|all     (as root: workers run as nobody, limits are changed)
# QUICK=1 runs a few seconds of each and records nothing (tests/chaos.rs runs `QUICK=1 all`).
# Each scenario checks what must hold (every slot ready again, supervisor fds back to where they
# were and RSS flat, no zombie, no failed request but those in flight on a killed worker, ...);
# the script exits 1 after the last scenario when a check failed, naming each.
# MULTINODE_BIN=PATH HELLO_BIN=PATH: those binaries instead of a release build of the checkout.
# Knobs: WORKERS=4 CONNS=32 KILL_SECS=60 STOP_SECS=10 STALL_SECS=30 EMFILE_SECS=10
#        CRASHES=10000 RELOADS=500 IDLE_CONNS=10000 LOCK=/work/bench.lock (when it exists;
#        each measured run holds it, so that two benchmarks never overlap; LOCK= for none)
#        KEEP=1 keeps the work directory (logs, samples) for a look afterwards
#
# Everything a scenario starts is killed and every file it made removed on exit, also on
# Ctrl-C or a failure (the EXIT trap); a stopped supervisor or reader is continued first.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

QUICK=${QUICK:-}
WORKERS=${WORKERS:-4}
CONNS=${CONNS:-32}
if [ -n "$QUICK" ]; then
    KILL_SECS=${KILL_SECS:-4} STOP_SECS=${STOP_SECS:-4} STALL_SECS=${STALL_SECS:-4}
    EMFILE_SECS=${EMFILE_SECS:-3} CRASHES=${CRASHES:-300} RELOADS=${RELOADS:-10}
    IDLE_CONNS=${IDLE_CONNS:-1000}
else
    KILL_SECS=${KILL_SECS:-60} STOP_SECS=${STOP_SECS:-10} STALL_SECS=${STALL_SECS:-30}
    EMFILE_SECS=${EMFILE_SECS:-10} CRASHES=${CRASHES:-10000} RELOADS=${RELOADS:-500}
    IDLE_CONNS=${IDLE_CONNS:-10000}
fi
LOCK=${LOCK-/work/bench.lock}
[ -e "$LOCK" ] || LOCK=
PYTHON=${PYTHON:-/usr/bin/python3}

if [ "$(id -u)" != 0 ]; then
    echo "bench/chaos.sh: run me as root (limits are raised, workers run as nobody)" >&2
    exit 2
fi
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
scenarios=("$@")
[ "${scenarios[*]}" = all ] && scenarios=(kill stop logstall emfile churn idle)
for s in "${scenarios[@]}"; do
    case $s in
        kill | stop | logstall | emfile | churn | idle) ;;
        *) echo "bench/chaos.sh: unknown scenario '$s' (kill stop logstall emfile churn idle all)" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d /tmp/multinode-chaos.XXXXXX)
chmod 755 "$work"
mn_pid=
declare -a helpers=() stopped=() supervisors=()

# Continues what we stopped, stops every multinode we started (TERM, then KILL after 10 s),
# kills our helpers, removes the work directory.
cleanup() {
    local p
    for p in "${stopped[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
    for p in "${helpers[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${supervisors[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${supervisors[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "bench/chaos.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'echo "bench/chaos.sh: line $LINENO: a command failed (status $?)" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

say() { echo "chaos: $*" >&2; }
die() { echo "bench/chaos.sh: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# check WHAT TEST...: TEST (a `test` expression) must hold; a failure is said now and counted,
# and the script exits 1 at the end.
failed_checks=()
check() {
    local what=$1
    shift
    if ! test "$@"; then
        failed_checks+=("$what")
        echo "bench/chaos.sh: CHECK FAILED: $what" >&2
    fi
}
# flat BEFORE AFTER: RSS (kB) grew by at most 1 MiB.
RSS_SLACK=${RSS_SLACK:-1024}

if [ -z "${MULTINODE_BIN:-}" ] || [ -z "${HELLO_BIN:-}" ]; then
    echo "building (release, nice)..." >&2
    nice -n 19 cargo build --release --workspace --bins --locked --quiet
    target=${CARGO_TARGET_DIR:-$repo/target}/release
    MULTINODE_BIN=$target/multinode HELLO_BIN=$target/hello
fi
nice -n 19 rustc -O --edition 2024 -o "$work/load" bench/chaos/load.rs
cp "$MULTINODE_BIN" "$work/multinode"
cp "$HELLO_BIN" "$work/hello"
cp bench/chaos/hold.py bench/chaos/spew.py "$work/"
chmod 755 "$work"/*
analyze() { "$PYTHON" bench/chaos/analyze.py "$@"; }

# Holds $LOCK (fd 9) for one measured run; unlock releases it.
lock() { if [ -n "$LOCK" ]; then exec 9>>"$LOCK"; flock 9; fi; }
unlock() { if [ -n "$LOCK" ]; then flock -u 9; exec 9>&-; fi; }

# start NAME OUT ARGS... -- PROGRAM...: starts multinode (JSON log to OUT), waits until every
# slot is ready; sets mn_pid, mn_name, addr. MN_LOG: where OUT's lines end up, when OUT is a pipe.
start() {
    mn_name="chaos$$-$1"
    local out=$2 log=${MN_LOG:-$2}
    shift 2
    "$work/multinode" serve --name "$mn_name" --log-format json --color never \
        -l 127.0.0.1:0 "$@" >"$out" 2>&1 &
    mn_pid=$!
    supervisors+=("$mn_pid")
    wait_ready 60 >/dev/null || { cat "$log" >&2; die "multinode $mn_name did not get ready"; }
    addr=$(sed -n 's/.*"event":"listening".*"addr":"\([^"]*\)".*/\1/p' "$log" | sed -n 1p)
    [ -n "$addr" ] || die "no listening address in $log"
}

# stop: multinode stop (drain), waits for the process.
stop() {
    timeout 30 "$work/multinode" stop --name "$mn_name" >/dev/null 2>&1 || kill -KILL "$mn_pid" 2>/dev/null || true
    wait "$mn_pid" 2>/dev/null || true
    mn_pid=
}

# status: `multinode status --json` (empty when it does not answer within 5 s).
status() { timeout 5 "$work/multinode" status --json --name "$mn_name" 2>/dev/null || true; }
# jq-like: status | field 'PYTHON EXPRESSION over s'
field() { "$PYTHON" -c "import json,sys; s=json.load(sys.stdin); print($1)"; }
restarts() { status | field 'sum(x["restarts"] for x in s["slots"])'; }

# wait_ready SECS: polls until every slot is ready; prints the milliseconds it took.
wait_ready() {
    local t0 end
    t0=$(now_ms)
    end=$((t0 + $1 * 1000))
    while [ "$(now_ms)" -lt "$end" ]; do
        if [ "$(status | field 's["ready"]' 2>/dev/null)" = True ]; then
            echo $(($(now_ms) - t0))
            return 0
        fi
        [ -n "$mn_pid" ] && ! kill -0 "$mn_pid" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

# fds PID, rss PID (kB), cpu PID (ticks of user + system time).
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
socks() { ls -l "/proc/$1/fd" 2>/dev/null | grep -c 'socket:' || true; }
children() { cat /proc/"$1"/task/*/children 2>/dev/null || true; }
# workers PID COMM: the supervisor's children running COMM.
workers() {
    local c
    for c in $(children "$1"); do
        [ "$(cat "/proc/$c/comm" 2>/dev/null)" = "$2" ] && echo "$c"
    done
    return 0
}
zombies() {
    local c n=0
    for c in $(children "$1"); do
        [ "$(awk '{print $3}' "/proc/$c/stat" 2>/dev/null)" = Z ] && n=$((n + 1))
    done
    echo "$n"
}

# sampler FILE: appends "FDS RSS_KB" of the supervisor to FILE every 200 ms, in the background;
# sets sampler_pid. The extremes say whether fds and memory grew.
sampler() {
    (while kill -0 "$mn_pid" 2>/dev/null; do echo "$(fds "$mn_pid") $(rss "$mn_pid")" >>"$1"; sleep 0.2; done) &
    sampler_pid=$!
    helpers+=("$sampler_pid")
}
maxcol() { awk -v c="$2" 'BEGIN {m = 0} $c > m {m = $c} END {print m}' "$1"; }

# record TITLE FILE: puts FILE's text in bench/RESULTS.md as "### TITLE" under "## Chaos and
# soak (bench/chaos.sh)", replacing an earlier one in place. Nothing is recorded under QUICK=1.
record() {
    if [ -n "$QUICK" ]; then return 0; fi
    analyze record bench/RESULTS.md "$1" "$2"
    say "recorded in bench/RESULTS.md under '### $1'"
}

machine() {
    echo "$(date -u +%Y-%m-%d) · commit $(git rev-parse --short HEAD) · $(nproc) CPUs (a shared VM: other" \
        "builds and tests ran meanwhile) · Linux $(uname -r) · release build · as root (workers as nobody," \
        "a cgroup each)"
}

# ---------------------------------------------------------------------------------------------
# kill: kill -9 of a random worker every 200 ms under load, in each mode.
scenario_kill() {
    local mode body rows=() n
    for mode in shared reuseport route-rr route-iphash; do
        local margs=()
        case $mode in
            shared) margs=(--balance shared) ;;
            reuseport) margs=(--balance reuseport) ;;
            route-rr) margs=(--route round-robin) ;;
            route-iphash) margs=(--route ip-hash) ;;
        esac
        local d="$work/kill-$mode"
        mkdir -p "$d"
        lock
        say "kill, $mode: $WORKERS hello workers, $CONNS clients (a new connection per request), a kill -9 every 200 ms for ${KILL_SECS}s"
        start "kill-$mode" "$d/log" --workers "$WORKERS" --ready notify --backoff-max 200ms \
            --min-uptime 1s "${margs[@]}" -- "$work/hello"
        local fd0 rss0 base w
        fd0=$(fds "$mn_pid")
        rss0=$(rss "$mn_pid")
        w=$(workers "$mn_pid" hello | sed -n 1p)
        base=$(socks "$w")
        sampler "$d/samples"
        "$work/load" run "$addr" --conns "$CONNS" --secs $((KILL_SECS + 2)) --close \
            --timeout-ms 5000 --fails "$d/fails" --timeline "$d/timeline" >"$d/load" &
        local load_pid=$!
        helpers+=("$load_pid")
        sleep 1
        local kl skipped
        kl=$(nice -n -10 "$PYTHON" bench/chaos/killer.py "$mn_pid" hello "$KILL_SECS" "$d/kills" 200 "$base")
        skipped=$(sed -n 's/.*skipped=//p' <<<"$kl")
        wait "$load_pid" || die "the load generator failed: $(cat "$d/load")"
        local ready_ms
        ready_ms=$(wait_ready 60) || die "not every slot was ready again within 60 s: $(status)"
        sleep 1
        local fd1 rss1 fdmax rssmax rst
        fd1=$(fds "$mn_pid")
        rss1=$(rss "$mn_pid")
        kill "$sampler_pid" 2>/dev/null || true
        fdmax=$(maxcol "$d/samples" 1)
        rssmax=$(maxcol "$d/samples" 2)
        rst=$(restarts)
        stop
        unlock
        local load k
        load=$(cat "$d/load")
        k=$(analyze kills "$d/kills" "$d/fails" 2>"$d/other")
        get() { sed -n "s/^$1=//p" <<<"$k"; }
        lget() { tr ' ' '\n' <<<"$load" | sed -n "s/^$1=//p"; }
        say "$mode: $load"
        say "$mode: $(tr '\n' ' ' <<<"$k")"
        say "$mode: ready again after ${ready_ms} ms; restarts $rst; fds $fd0/$fdmax/$fd1; RSS $rss0/$rssmax/$rss1 kB"
        [ -s "$d/other" ] && say "$mode: failures not in flight at a kill, e.g.: $(head -n3 "$d/other" | tr '\n' ';')"
        check "kill $mode: every failure in flight on a killed worker ($(get other) others)" "$(get other)" = 0
        check "kill $mode: supervisor fds back ($fd0 before, $fd1 after)" "$fd1" -le "$fd0"
        check "kill $mode: supervisor RSS flat ($rss0 kB before, $rss1 after)" "$rss1" -le $((rss0 + RSS_SLACK))
        check "kill $mode: some kills" "$(get kills)" -gt 0
        rows+=("| $mode | $(lget sent) | $(lget failed) | $(get kills) (${skipped} ticks with no worker up) | $(get victims_with_conns) / $(get held) | $(get dying_ms_median) / $(get dying_ms_max) | $(get in_flight) | $(get other) | $(get kinds) | $(get max_per_kill) | $(lget p99_ms) / $(lget max_ms) | ${ready_ms} ms, $rst restarts | $fd0 / $fdmax / $fd1 | $rss0 / $rssmax / $rss1 |")
    done
    body="$work/kill.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh kill      # WORKERS=$WORKERS CONNS=$CONNS KILL_SECS=$KILL_SECS"
        echo '```'
        echo
        echo "Per mode: \`multinode serve --workers $WORKERS --ready notify --backoff-max 200ms --min-uptime 1s MODE -- hello\`;"
        echo "$CONNS client threads of bench/chaos/load.rs, each sending \`GET /\` on a new connection per"
        echo "request (5 s timeout), for ${KILL_SECS} s + 2; from the second second on, every 200 ms a kill -9 of a random"
        echo "running worker. *Held*: connections the victims had open just before their kill (sockets in"
        echo "/proc/PID/fd beyond an idle worker's). *Dying*: from the kill until the victim's pidfd"
        echo "was readable (it had exited and the kernel had closed its fds; until then new connections can"
        echo "go to it: in route mode multinode hands them over its channel, not knowing it is dying)."
        echo "*In flight*: failed requests that ended after a kill and started before its victim was gone;"
        echo "*other*: failures that are not. Supervisor fds and RSS (kB): before the load / highest during"
        echo "it (sampled every 200 ms) / after every slot was ready again."
        echo
        echo "| mode | requests | failed | kills | victims with connections / connections held | dying, median / longest (ms) | failed in flight at a kill | other failures | failures by kind | most failures for one kill | p99 / slowest (ms) | all slots ready again after the last kill | supervisor fds | supervisor RSS (kB) |"
        echo "|---|---:|---:|---|---|---|---:|---:|---|---:|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
    } >"$body"
    cat "$body"
    record "kill -9 of a random worker every 200 ms under load" "$body"
}

# ---------------------------------------------------------------------------------------------
# stop: SIGSTOP of the supervisor for STOP_SECS under load, then SIGCONT.
scenario_stop() {
    local mode rows=() pre=3 post=5
    for mode in shared reuseport route-rr; do
        local margs=()
        case $mode in
            shared) margs=(--balance shared) ;;
            reuseport) margs=(--balance reuseport) ;;
            route-rr) margs=(--route round-robin) ;;
        esac
        local d="$work/stop-$mode"
        mkdir -p "$d"
        lock
        say "stop, $mode: SIGSTOP of the supervisor for ${STOP_SECS}s under load ($WORKERS hello workers, --watchdog 2s)"
        start "stop-$mode" "$d/log" --workers "$WORKERS" --ready notify --watchdog 2s \
            "${margs[@]}" -- "$work/hello"
        local total=$((pre + STOP_SECS + post)) r0 pids0
        r0=$(restarts)
        pids0=$(status | field '" ".join(str(x["pid"]) for x in s["slots"])')
        "$work/load" run "$addr" --conns "$CONNS" --secs "$total" --close --timeout-ms 60000 \
            --fails "$d/fails" --timeline "$d/timeline" >"$d/load" &
        local load_pid=$!
        helpers+=("$load_pid")
        sleep "$pre"
        local t_stop t_cont answer_ms ready_ms
        t_stop=$(now_ms)
        stopped+=("$mn_pid")
        kill -STOP "$mn_pid"
        sleep "$STOP_SECS"
        t_cont=$(now_ms)
        kill -CONT "$mn_pid"
        # How long until the control socket answers, then until every slot is ready.
        until [ -n "$(status)" ]; do sleep 0.05; done
        answer_ms=$(($(now_ms) - t_cont))
        ready_ms=$(wait_ready 60) || die "not ready again after SIGCONT: $(status)"
        wait "$load_pid" || die "the load generator failed"
        local r1 pids1 ev ph load
        r1=$(restarts)
        pids1=$(status | field '" ".join(str(x["pid"]) for x in s["slots"])')
        stop
        unlock
        ev=$(analyze events "$d/log" "$t_stop" $((t_cont + (post - 1) * 1000)))
        ph=$(analyze phases "$d/timeline" "$pre" $((pre + STOP_SECS)) "$total")
        load=$(cat "$d/load")
        get() { sed -n "s/^$1=//p" <<<"$ph"; }
        lget() { tr ' ' '\n' <<<"$load" | sed -n "s/^$1=//p"; }
        local same=yes
        [ "$pids0" = "$pids1" ] || same="no ($pids0 → $pids1)"
        say "$mode: $load"
        say "$mode: $(tr '\n' ' ' <<<"$ph")"
        say "$mode: status answered ${answer_ms} ms after SIGCONT, all ready after ${ready_ms} ms; restarts $r0 → $r1; same workers: $same"
        say "$mode: events from the stop to $((post - 1)) s after SIGCONT (the load ends at $post s): $(sed -n 's/^events=//p' <<<"$ev")"
        check "stop $mode: no failed request ($(lget failed))" "$(lget failed)" = 0
        check "stop $mode: the same workers after ($same)" "$same" = yes
        check "stop $mode: requests answered after SIGCONT" "$(get after_rps)" -gt 0
        # The workers accept by themselves in these modes: a stopped supervisor must not stop
        # them (their watchdog pings must not wait for it, nor their output).
        if [ "$mode" != route-rr ]; then
            check "stop $mode: requests answered in every second of the stop (fewest $(get during_min))" "$(get during_min)" -gt 0
        fi
        rows+=("| $mode | $(get before_rps) | $(get during_rps) ($(get during_min)) | $(get after_rps) | $(lget failed) | $(lget max_ms) | $answer_ms ms / $ready_ms ms | $r0 → $r1 | $same | $(sed -n 's/^events=//p' <<<"$ev") |")
    done
    local body="$work/stop.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh stop      # WORKERS=$WORKERS CONNS=$CONNS STOP_SECS=$STOP_SECS"
        echo '```'
        echo
        echo "Per mode: \`multinode serve --workers $WORKERS --ready notify --watchdog 2s MODE -- hello\` (hello pings"
        echo "the watchdog every second); $CONNS clients, a new connection per request (60 s timeout), for"
        echo "$pre s, then the supervisor gets SIGSTOP for ${STOP_SECS} s, then SIGCONT, then $post s more. Requests"
        echo "answered per second, by the second they were answered in. *Back*: from SIGCONT until"
        echo "\`multinode status\` answers / until it reports every slot ready. In shared and reuseport mode the"
        echo "workers accept by themselves and must go on serving (checked: answers in every second of the stop);"
        echo "in route mode multinode accepts every connection, so the clients wait in the listen backlog"
        echo "until SIGCONT (none may fail)."
        echo
        echo "| mode | answered/s before | answered/s while stopped (fewest in a second) | answered/s after | failed | slowest (ms) | back | restarts | same workers after | supervisor events from the stop to $((post - 1)) s after SIGCONT |"
        echo "|---|---:|---:|---:|---:|---:|---|---|---|---|"
        printf '%s\n' "${rows[@]}"
    } >"$body"
    cat "$body"
    record "SIGSTOP of the supervisor under load" "$body"
}

# ---------------------------------------------------------------------------------------------
# logstall: the process reading multinode's output stops for STALL_SECS.
scenario_logstall() {
    local d="$work/logstall" rate=5000
    mkdir -p "$d/spew"
    chmod 777 "$d/spew"
    mkfifo "$d/out.fifo"
    lock
    say "logstall: 2 spew workers ($rate lines/s each); the reader of multinode's output is stopped for ${STALL_SECS}s; a worker crashes meanwhile"
    cat "$d/out.fifo" >"$d/log" &
    local reader=$!
    helpers+=("$reader")
    MN_LOG="$d/log" start logstall "$d/out.fifo" --workers 2 --ready notify -- "$PYTHON" "$work/spew.py" "$d/spew" "$rate"
    sleep 2
    local t_stop t_cont cpu0 cpu1 victim pid2 crash_ms status_ms
    declare -A c0=() c1=()
    t_stop=$(now_ms)
    stopped+=("$reader")
    kill -STOP "$reader"
    cpu0=$(cpu "$mn_pid")
    sleep 2
    local f
    for f in "$d"/spew/count.*; do c0[$f]=$(cat "$f"); done
    # A crash in the middle of the stall: is it restarted while the output is stuck?
    sleep $((STALL_SECS / 2 - 2 > 0 ? STALL_SECS / 2 - 2 : 0))
    victim=$(status | field 's["slots"][0]["pid"]')
    local t_crash r0
    r0=$(restarts)
    t_crash=$(now_ms)
    touch "$d/spew/crash.$victim"
    pid2=
    while [ $(($(now_ms) - t_crash)) -lt $((STALL_SECS * 1000)) ]; do
        local st
        st=$(status)
        if [ -n "$st" ] && [ "$(field 's["slots"][0]["state"] == "ready" and s["slots"][0]["pid"] != '"$victim" <<<"$st")" = True ]; then
            pid2=$(field 's["slots"][0]["pid"]' <<<"$st")
            break
        fi
        sleep 0.05
    done
    crash_ms=$(($(now_ms) - t_crash))
    [ -n "$pid2" ] || die "slot 0 was not restarted within ${STALL_SECS}s of its crash: $(status)"
    local r1
    r1=$(restarts)
    status_ms=$(now_ms)
    status >/dev/null
    status_ms=$(($(now_ms) - status_ms))
    local rest=$((t_stop + STALL_SECS * 1000 - $(now_ms)))
    [ "$rest" -gt 0 ] && sleep "$(printf '%d.%03d' $((rest / 1000)) $((rest % 1000)))"
    for f in "$d"/spew/count.*; do c1[$f]=$(cat "$f"); done
    cpu1=$(cpu "$mn_pid")
    t_cont=$(now_ms)
    kill -CONT "$reader"
    sleep 3
    # Workers that kept writing during the stall (their count grew between the two readings).
    local grew=0 total=0
    for f in "${!c0[@]}"; do
        total=$((total + 1))
        [ "${c1[$f]:-0}" -gt "${c0[$f]}" ] && grew=$((grew + 1))
    done
    stop
    wait "$reader" 2>/dev/null || true
    unlock
    local a
    a=$(analyze logstall "$d/log" "$d/spew" "$t_stop" "$t_cont")
    get() { sed -n "s/^$1=//p" <<<"$a"; }
    say "logstall: $(tr '\n' ' ' <<<"$a")"
    # Lines lost and not counted would make this positive; it is negative by the supervisor's
    # own events dropped meanwhile (counted in `dropped` too).
    check "logstall: every line shown or counted as dropped (unaccounted $(get unaccounted))" "$(get unaccounted)" -le 0
    check "logstall: both workers kept writing during the stall ($grew of $total)" "$grew" = "$total"
    check "logstall: lines shown after the stall" "$(get shown_after_stall)" -gt 0
    say "logstall: slot 0 crashed (pid $victim) and was ready again (pid $pid2) ${crash_ms} ms later, during the stall; restarts $r0 → $r1"
    say "logstall: workers whose count grew during the stall: $grew of $total; status answered in ${status_ms} ms; supervisor CPU during the stall: $((cpu1 - cpu0)) ticks"
    local body="$work/logstall.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh logstall      # STALL_SECS=$STALL_SECS"
        echo '```'
        echo
        echo "\`multinode serve --workers 2 --ready notify --log-format json -- python3 bench/chaos/spew.py DIR $rate\`,"
        echo "its stdout and stderr a pipe read by \`cat\`; each worker writes $rate lines a second (blocking"
        echo "writes, so a worker whose pipe nobody read would stop) and keeps count. Two seconds in,"
        echo "\`cat\` gets SIGSTOP for ${STALL_SECS} s (the pipe fills, multinode's writer thread blocks, its"
        echo "queue fills); halfway through, slot 0's worker crashes (exit 3); then SIGCONT."
        echo
        echo "| what | figure |"
        echo "|---|---|"
        echo "| slot 0's crash during the stall: ready again (new pid) after | ${crash_ms} ms (restarts $r0 → $r1) |"
        echo "| \`multinode status\` during the stall | answered in ${status_ms} ms |"
        echo "| workers that kept writing during the stall | $grew of $total |"
        echo "| supervisor CPU during the ${STALL_SECS} s stall | $((cpu1 - cpu0)) ticks (100 = 1 s) |"
        echo "| lines the workers wrote | $(get written) |"
        echo "| lines shown / shown after the stall | $(get shown) / $(get shown_after_stall) |"
        echo "| lines reported dropped (\`dropped\` events: count) | $(get dropped_reported) ($(get dropped_notes)) |"
        echo "| written − shown − reported dropped | $(get unaccounted) |"
    } >"$body"
    cat "$body"
    record "A log reader that stops reading" "$body"
}

# ---------------------------------------------------------------------------------------------
# emfile: the supervisor out of file descriptors, under route-mode load, with a reload.
scenario_emfile() {
    local d="$work/emfile" pre=3 post=6
    mkdir -p "$d"
    lock
    say "emfile: route round-robin, 2 hello workers, $CONNS clients; the supervisor's nofile limit cut to its lowest free fd for ${EMFILE_SECS}s, SIGHUP in the middle"
    start emfile "$d/log" --workers 2 --ready notify --route round-robin -- "$work/hello"
    local total=$((pre + EMFILE_SECS + post + 5))
    "$work/load" run "$addr" --conns "$CONNS" --secs "$total" --close --timeout-ms 60000 \
        --fails "$d/fails" --timeline "$d/timeline" >"$d/load" &
    local load_pid=$!
    helpers+=("$load_pid")
    sleep "$pre"
    local orig lowest=0 t_low t_raise cpu0 cpu1 reload_ok fd_start
    fd_start=$(fds "$mn_pid")
    # The supervisor runs as nobody, and root here may lack CAP_SYS_RESOURCE (a container):
    # prlimit runs as the supervisor's own user and group, which may lower and raise the soft
    # limit of a process of theirs (not the hard one, which stays).
    as_sup() {
        setpriv --reuid="$(awk '/^Uid:/ {print $2}' "/proc/$mn_pid/status")" \
            --regid="$(awk '/^Gid:/ {print $2}' "/proc/$mn_pid/status")" --clear-groups "$@"
    }
    orig=$(as_sup prlimit --pid "$mn_pid" --nofile --output SOFT --noheadings | tr -d ' ')
    # The lowest free fd number: with the limit there, no new fd can be made at all.
    while [ -e "/proc/$mn_pid/fd/$lowest" ]; do lowest=$((lowest + 1)); done
    t_low=$(now_ms)
    cpu0=$(cpu "$mn_pid")
    as_sup prlimit --pid "$mn_pid" --nofile="$lowest:"
    sleep 1
    # The control socket meanwhile: does `multinode status` get an answer, or how does it fail?
    local st_low st_rc=0
    st_low=$(timeout 5 "$work/multinode" status --name "$mn_name" 2>&1 >/dev/null) || st_rc=$?
    st_low="exit $st_rc${st_low:+: $(head -n1 <<<"$st_low")}"
    sleep $((EMFILE_SECS / 2 > 1 ? EMFILE_SECS / 2 - 1 : 0))
    local t_hup
    t_hup=$(now_ms)
    kill -HUP "$mn_pid"
    sleep $((EMFILE_SECS - EMFILE_SECS / 2))
    cpu1=$(cpu "$mn_pid")
    t_raise=$(now_ms)
    as_sup prlimit --pid "$mn_pid" --nofile="$orig:"
    local ready_ms
    ready_ms=$(wait_ready 60) || die "not ready after the limit was raised: $(status)"
    # A reload after: it must work again.
    if timeout 60 "$work/multinode" reload --name "$mn_name" >"$d/reload" 2>&1; then
        reload_ok="done"
    else
        reload_ok="FAILED: $(cat "$d/reload")"
    fi
    wait "$load_pid" || die "the load generator failed"
    local fd_end
    fd_end=$(fds "$mn_pid")
    stop
    unlock
    local ev_low ev_after ph load
    ev_low=$(analyze events "$d/log" "$t_low" "$t_raise")
    ev_after=$(analyze events "$d/log" $((t_raise + 1)) $((t_raise + 60000)))
    ph=$(analyze phases "$d/timeline" "$pre" $((pre + EMFILE_SECS)) "$total")
    load=$(cat "$d/load")
    get() { sed -n "s/^$1=//p" <<<"$ph"; }
    lget() { tr ' ' '\n' <<<"$load" | sed -n "s/^$1=//p"; }
    local ticks=$((cpu1 - cpu0))
    say "emfile: limit $lowest (was $orig); $load"
    say "emfile: $(tr '\n' ' ' <<<"$ph")"
    say "emfile: supervisor CPU while out of fds: $ticks ticks in ${EMFILE_SECS}s"
    say "emfile: events while out of fds: $(tr '\n' ' ' <<<"$ev_low")"
    say "emfile: multinode status while out of fds: $st_low"
    say "emfile: events after the raise: $(tr '\n' ' ' <<<"$ev_after")"
    say "emfile: ready ${ready_ms} ms after the raise; a reload then: $reload_ok; fds $fd_start → $fd_end"
    check "emfile: a reload after the raise ($reload_ok)" "$reload_ok" = done
    check "emfile: no failed request ($(lget failed))" "$(lget failed)" = 0
    check "emfile: no busy loop while out of fds ($ticks ticks in ${EMFILE_SECS}s)" "$ticks" -lt $((EMFILE_SECS * 30))
    check "emfile: requests answered after the raise" "$(get after_rps)" -gt 0
    check "emfile: supervisor fds back ($fd_start before, $fd_end after)" "$fd_end" -le "$fd_start"
    local body="$work/emfile.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh emfile      # CONNS=$CONNS EMFILE_SECS=$EMFILE_SECS"
        echo '```'
        echo
        echo "\`multinode serve --workers 2 --ready notify --route round-robin -- hello\`, $CONNS clients (a new"
        echo "connection per request, 60 s timeout). After $pre s, \`prlimit --nofile=N:\` (the soft limit) on the supervisor with N its"
        echo "lowest free fd number (so no new fd at all: accept, pipe, socketpair all fail with EMFILE);"
        echo "a SIGHUP after $((EMFILE_SECS / 2)) s; the old limit back after ${EMFILE_SECS} s; then \`multinode reload\`."
        echo
        echo "| what | figure |"
        echo "|---|---|"
        echo "| limit while out of fds (was) | $lowest ($orig) |"
        echo "| supervisor CPU while out of fds | $ticks ticks in ${EMFILE_SECS} s (100 = 1 s) |"
        echo "| its events meanwhile | $(sed -n 's/^events=//p' <<<"$ev_low") |"
        echo "| \`multinode status\` meanwhile (5 s timeout) | $st_low |"
        echo "| most warnings of one kind in one second | $(sed -n 's/^max_warnings_per_second=//p' <<<"$ev_low") |"
        echo "| answered/s before / while out of fds / after | $(get before_rps) / $(get during_rps) / $(get after_rps) |"
        echo "| requests, failed, slowest | $(lget sent), $(lget failed) ($(lget connect) connect, $(lget timeout) timeout), $(lget max_ms) ms |"
        echo "| every slot ready after the raise | ${ready_ms} ms |"
        echo "| its events after the raise | $(sed -n 's/^events=//p' <<<"$ev_after") |"
        echo "| \`multinode reload\` after the raise | $reload_ok |"
        echo "| supervisor fds at the end | $fd_end |"
    } >"$body"
    cat "$body"
    record "EMFILE on the supervisor" "$body"
}

# ---------------------------------------------------------------------------------------------
# churn: CRASHES crash-restarts, then RELOADS rolling reloads.
scenario_churn() {
    local d="$work/churn"
    mkdir -p "$d"
    cat >"$work/crashy.sh" <<EOF
#!/bin/sh
# bench/chaos.sh churn: exits at once (code 3) while $d/crash exists, else runs hello.
[ -e "$d/crash" ] && exit 3
exec "$work/hello"
EOF
    chmod 755 "$work/crashy.sh" "$d"
    lock
    say "churn: $WORKERS workers; $CRASHES crash-restarts (--backoff-max 1ms), then $RELOADS reloads"
    start churn "$d/log" --workers "$WORKERS" --ready notify --backoff-max 1ms -- "$work/crashy.sh"
    local fd0 rss0 thr0
    fd0=$(fds "$mn_pid")
    rss0=$(rss "$mn_pid")
    thr0=$(awk '/^Threads/ {print $2}' "/proc/$mn_pid/status")
    : >"$d/samples"
    touch "$d/crash"
    local w
    for w in $(workers "$mn_pid" hello); do kill -KILL "$w"; done
    local t0 n=0 zmax=0 z deadline
    t0=$(now_ms)
    deadline=$((t0 + 1800 * 1000))
    while [ "$n" -lt "$CRASHES" ]; do
        [ "$(now_ms)" -lt "$deadline" ] || die "only $n crash-restarts in 30 minutes"
        sleep 0.5
        n=$(restarts)
        z=$(zombies "$mn_pid")
        [ "$z" -gt "$zmax" ] && zmax=$z
        echo "$n $(fds "$mn_pid") $(rss "$mn_pid") $z" >>"$d/samples"
    done
    rm -f "$d/crash"
    local crash_ms=$(($(now_ms) - t0))
    wait_ready 60 >/dev/null || die "not ready after the crash loop: $(status)"
    sleep 1
    local fd1 rss1 z1 n1
    n1=$(restarts)
    fd1=$(fds "$mn_pid")
    rss1=$(rss "$mn_pid")
    z1=$(zombies "$mn_pid")
    say "churn: $n1 crash-restarts in ${crash_ms} ms; fds $fd0 → $fd1, RSS $rss0 → $rss1 kB, zombies now $z1 (at most $zmax seen in passing)"
    local i t1 rfail=0 rmax=0
    t1=$(now_ms)
    : >"$d/rsamples"
    for i in $(seq "$RELOADS"); do
        local r0
        r0=$(now_ms)
        timeout 60 "$work/multinode" reload --name "$mn_name" >/dev/null 2>&1 || rfail=$((rfail + 1))
        r0=$(($(now_ms) - r0))
        [ "$r0" -gt "$rmax" ] && rmax=$r0
        if [ $((i % 10)) = 0 ]; then
            z=$(zombies "$mn_pid")
            [ "$z" -gt "$zmax" ] && zmax=$z
            echo "$i $(fds "$mn_pid") $(rss "$mn_pid") $z" >>"$d/rsamples"
        fi
    done
    local reload_ms=$(($(now_ms) - t1))
    wait_ready 60 >/dev/null || die "not ready after the reloads: $(status)"
    sleep 1
    local fd2 rss2 z2 thr2 gen ok
    fd2=$(fds "$mn_pid")
    rss2=$(rss "$mn_pid")
    z2=$(zombies "$mn_pid")
    thr2=$(awk '/^Threads/ {print $2}' "/proc/$mn_pid/status")
    gen=$(status | field 's["generation"]')
    ok=$(status | field 's["reloads_ok"]')
    local cfd cfdmax crss crssmax rfdmax rrssmax
    cfdmax=$(maxcol "$d/samples" 2)
    crssmax=$(maxcol "$d/samples" 3)
    rfdmax=$(maxcol "$d/rsamples" 2)
    rrssmax=$(maxcol "$d/rsamples" 3)
    cfd=$(awk 'NR == 1 {print $2}' "$d/samples")
    crss=$(awk 'NR == 1 {print $3}' "$d/samples")
    stop
    unlock
    check "churn: no zombie ($z1 after the crashes, $z2 after the reloads)" "$((z1 + z2))" = 0
    check "churn: every reload done ($rfail failed)" "$rfail" = 0
    check "churn: supervisor fds back ($fd0 at the start, $fd1 after the crashes, $fd2 after the reloads)" "$fd2" -le "$fd0" -a "$fd1" -le "$fd0"
    check "churn: supervisor RSS flat ($rss0 → $rss1 → $rss2 kB)" "$rss2" -le $((rss0 + RSS_SLACK))
    check "churn: supervisor threads ($thr0 → $thr2)" "$thr2" -le "$thr0"
    say "churn: $RELOADS reloads in ${reload_ms} ms ($rfail failed, slowest ${rmax} ms, generation $gen, $ok done); fds $fd1 → $fd2, RSS $rss1 → $rss2 kB, zombies $z2, threads $thr0 → $thr2"
    local body="$work/churn.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh churn      # WORKERS=$WORKERS CRASHES=$CRASHES RELOADS=$RELOADS"
        echo '```'
        echo
        echo "\`multinode serve --workers $WORKERS --ready notify --backoff-max 1ms -- crashy.sh\`, where crashy.sh"
        echo "exits 3 at once while a flag file exists and execs hello otherwise. The flag is set and the"
        echo "hello workers are killed, so every slot crash-loops (--backoff-max 1ms: the backoff, 100 ms"
        echo "doubling by default, is capped at 1 ms so that the run takes minutes, not hours) until the"
        echo "slots' restarts add up to $CRASHES; the flag goes, every slot is ready again; then"
        echo "$RELOADS \`multinode reload\` one after the other (each rolls all $WORKERS workers and waits for the"
        echo "outcome). Supervisor fds and RSS: at the start (hello workers ready) / highest sampled"
        echo "during the phase (every 0.5 s; every 10th reload) / at its end (workers ready again)."
        echo "Zombies: children of the supervisor in state Z."
        echo
        echo "| phase | count | time | supervisor fds | supervisor RSS (kB) | zombies at the end (most seen in passing) |"
        echo "|---|---:|---:|---|---|---|"
        echo "| crash-restarts | $n1 | $((crash_ms / 1000)) s ($((n1 * 1000 / (crash_ms > 0 ? crash_ms : 1)))/s) | $fd0 / $cfdmax / $fd1 | $rss0 / $crssmax / $rss1 | $z1 ($zmax) |"
        echo "| reloads | $RELOADS ($rfail failed; generation $gen) | $((reload_ms / 1000)) s (slowest ${rmax} ms) | $fd1 / $rfdmax / $fd2 | $rss1 / $rrssmax / $rss2 | $z2 |"
        echo
        echo "First sample of the crash loop: fds $cfd, RSS $crss kB. Supervisor threads: $thr0 at the start, $thr2 at the end."
    } >"$body"
    cat "$body"
    record "Soak: crash-restarts and reloads" "$body"
}

# ---------------------------------------------------------------------------------------------
# idle: IDLE_CONNS concurrent idle connections in route mode.
scenario_idle() {
    local d="$work/idle"
    mkdir -p "$d"
    # Room for the connections in the client and in the workers (route mode hands each
    # connection to a worker, which holds it); the supervisor raises its soft limit to the hard
    # one itself, and gives the workers this soft one. The hard limit is raised only when it is
    # too low (that takes CAP_SYS_RESOURCE, which a container's root may lack).
    local limit=$((IDLE_CONNS + 1024))
    if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$limit" ]; then
        ulimit -Hn "$limit" || die "idle: $IDLE_CONNS connections need a nofile limit of $limit; the hard limit is $(ulimit -Hn) and cannot be raised here"
    fi
    ulimit -Sn "$(ulimit -Hn)"
    limit=$(ulimit -Sn)
    lock
    say "idle: $IDLE_CONNS idle connections, route round-robin, 2 hold.py workers (one thread, epoll)"
    start idle "$d/log" --workers 2 --ready notify --route round-robin -- "$PYTHON" "$work/hold.py"
    local fd0 rss0 wfd0=0 w
    fd0=$(fds "$mn_pid")
    rss0=$(rss "$mn_pid")
    local ws
    ws=$(workers "$mn_pid" python3)
    for w in $ws; do wfd0=$((wfd0 + $(fds "$w"))); done
    sampler "$d/samples"
    local t0
    t0=$(now_ms)
    "$work/load" idle "$addr" --conns "$IDLE_CONNS" --status "$d/status" --hold-secs 300 \
        --timeout-ms 10000 >/dev/null &
    local load_pid=$!
    helpers+=("$load_pid")
    local deadline=$((t0 + 300 * 1000))
    until grep -q '^held' "$d/status" 2>/dev/null; do
        [ "$(now_ms)" -lt "$deadline" ] || die "the connections were not all open within 300 s"
        kill -0 "$load_pid" 2>/dev/null || die "the idle client exited early"
        sleep 0.2
    done
    local open_ms=$(($(now_ms) - t0)) held
    held=$(cat "$d/status")
    sleep 2
    local fd1 rss1 wfd1=0 wrss1=0 cpu_a cpu_b
    fd1=$(fds "$mn_pid")
    rss1=$(rss "$mn_pid")
    for w in $ws; do
        wfd1=$((wfd1 + $(fds "$w")))
        wrss1=$((wrss1 + $(rss "$w")))
    done
    cpu_a=$(cpu "$mn_pid")
    sleep 5
    cpu_b=$(cpu "$mn_pid")
    local st_ok
    st_ok=$(status | field 's["ready"]')
    touch "$d/status.release"
    local t1
    t1=$(now_ms)
    until grep -q '^closed' "$d/status" 2>/dev/null; do sleep 0.1; done
    wait "$load_pid" || true
    # Until the workers have seen every close.
    local wfd2
    while :; do
        wfd2=0
        for w in $ws; do wfd2=$((wfd2 + $(fds "$w"))); done
        [ "$wfd2" -le "$wfd0" ] && break
        [ $(($(now_ms) - t1)) -lt 60000 ] || break
        sleep 0.2
    done
    local close_ms=$(($(now_ms) - t1))
    sleep 1
    local fd2 rss2 fdmax rssmax
    fd2=$(fds "$mn_pid")
    rss2=$(rss "$mn_pid")
    kill "$sampler_pid" 2>/dev/null || true
    fdmax=$(maxcol "$d/samples" 1)
    rssmax=$(maxcol "$d/samples" 2)
    stop
    unlock
    check "idle: every connection held and answered ($held)" "$held" = "held $IDLE_CONNS answered $IDLE_CONNS failed 0"
    check "idle: supervisor fds back ($fd0 → $fd2)" "$fd2" -le "$fd0"
    check "idle: the workers closed every connection ($wfd0 → $wfd2 fds)" "$wfd2" -le "$wfd0"
    check "idle: every slot ready with them open" "$st_ok" = True
    say "idle: $held after ${open_ms} ms; supervisor fds $fd0 → $fd1 (highest $fdmax) → $fd2, RSS $rss0 → $rss1 (highest $rssmax) → $rss2 kB"
    say "idle: workers' fds $wfd0 → $wfd1 → $wfd2, workers' RSS $wrss1 kB with them open; supervisor CPU over 5 s idle with them open: $((cpu_b - cpu_a)) ticks; ready: $st_ok"
    local body="$work/idle.md"
    {
        machine
        echo
        echo '```'
        echo "bench/chaos.sh idle      # IDLE_CONNS=$IDLE_CONNS"
        echo '```'
        echo
        echo "\`multinode serve --workers 2 --ready notify --route round-robin -- python3 bench/chaos/hold.py\`"
        echo "(a worker holding every connection in one epoll set), nofile limit $limit. The client"
        echo "(bench/chaos/load.rs idle) opens $IDLE_CONNS connections from 127.0.0.1, then sends one request on each and"
        echo "reads every answer (so each reached a worker), keeps them open, then closes them all."
        echo
        echo "| what | before | $IDLE_CONNS open | after they closed |"
        echo "|---|---:|---:|---:|"
        echo "| supervisor fds (highest sampled: $fdmax) | $fd0 | $fd1 | $fd2 |"
        echo "| supervisor RSS, kB (highest sampled: $rssmax) | $rss0 | $rss1 | $rss2 |"
        echo "| workers' fds, both | $wfd0 | $wfd1 | $wfd2 |"
        echo "| workers' RSS, kB, both | | $wrss1 | |"
        echo
        echo "Client: \`$held\` after ${open_ms} ms; the workers had closed them all ${close_ms} ms after the"
        echo "client did. Supervisor CPU over 5 s with them open and idle: $((cpu_b - cpu_a)) ticks; every slot"
        echo "ready meanwhile: $st_ok."
    } >"$body"
    cat "$body"
    record "Idle connections in route mode" "$body"
}

for s in "${scenarios[@]}"; do
    "scenario_$s"
done
if [ ${#failed_checks[@]} -gt 0 ]; then
    echo "bench/chaos.sh: ${#failed_checks[@]} check(s) failed:" >&2
    printf '  %s\n' "${failed_checks[@]}" >&2
    exit 1
fi
say "every check passed (${scenarios[*]})"
