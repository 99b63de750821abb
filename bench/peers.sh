#!/usr/bin/env bash
# Head to head: the same hello worker under multinode and under its peers, measured
# interleaved in one run on this machine.
#
# Contenders (WORKERS processes each, 2 by default; every address is on 127.0.0.1):
#   node group: examples/node/hello.js, one unmodified file for every row
#     n-solo          no supervisor, 1 process             (bench/peers/launch.py)
#     n-launch        no supervisor, N processes on one shared socket (launch.py)
#     n-launch-rp     no supervisor, N processes, a SO_REUSEPORT socket each (launch.py --reuseport)
#     n-mn            multinode serve (shared)
#     n-mn-rp         multinode serve --balance reuseport
#     n-cluster-rr    Node's cluster module, SCHED_RR, the default (bench/peers/cluster.js)
#     n-cluster-none  Node's cluster module, NODE_CLUSTER_SCHED_POLICY=none
#     n-pm2           PM2 cluster mode (pm2 start hello.js -i N)
#   python group: bench/peers/app.py, one WSGI app, gunicorn sync workers
#     p-gunicorn      gunicorn -w N
#     p-mn            multinode serve, N slots of `gunicorn -w 1` on multinode's socket
#   rust group: examples/hello (release), for scale
#     r-launch, r-launch-rp, r-mn, r-mn-rp as above; r-mn-route  multinode --route round-robin
#
# Part "throughput", group by group: ROUNDS rounds; each round starts every contender of the
# group in turn (the order rotates from round to round), warms it up for WARMUP s, runs wrk -tTHREADS -cCONNS for
# DURATION s with keep-alive and DURATION s with a new connection per request
# (-H 'Connection: close'), and stops it, so that only one runs at a time. The report gives
# the median over the rounds, the spread (min–max), the errors wrk counted, and each row's
# ratio to its group's reference (n-launch, p-gunicorn, r-launch) measured in the same round,
# the CPU time the server's processes (supervisor and workers) used per request, read from
# /proc before and after each wrk run (on a busy machine requests/s swing with what else runs,
# the CPU each request costs much less), and their number and resident memory after the run.
#
# Route mode needs a worker that receives its connections over multinode's route channel
# (examples/hello does, through the SDK); hello.js and gunicorn accept on a listening socket
# only, so route mode is measured in the rust group alone.
#
# Part "reload": for each contender that can reload (multinode: SIGHUP; PM2: pm2 reload;
# gunicorn: SIGHUP; Node's cluster module has no reload of its own: cluster.js does the
# rolling restart its documentation shows, on SIGHUP), wrk runs RELOAD_DURATION s in each load shape while a
# reload is started every RELOAD_EVERY s (each waited for until done); the report gives the
# requests wrk made, those that failed (its socket errors + non-2xx responses), and the
# reloads done and their median time.
#
# Installs what it lacks: wrk, nodejs and npm with apt-get (as root); PM2 (PM2_VERSION) with
# npm into target/bench-peers/npm (npm's cache in target/bench-peers/npm-cache); gunicorn
# (GUNICORN_VERSION) with pip into the venv target/bench-peers/venv (Debian's
# /usr/bin/python3). Nothing goes to the system's Node or Python, nor to $HOME. PM2 runs with
# a PM2_HOME of its own in a temporary directory, removed at the end. Every process it starts
# is stopped at the end (by its pid or process group), also on failure or Ctrl-C. All the
# load goes to 127.0.0.1.
#
# With LOCK=FILE it takes flock(1) on FILE for each part (one throughput part per group, then
# the reload part) and releases it in between, so that on a shared machine no other benchmark
# runs during a measurement and none waits for the whole run (about 15 minutes by default).
#
# Usage:  LOCK=/work/bench.lock bench/peers.sh
# Knobs:  PART=throughput|reload|all (all)  PROGRAMS="node python rust"  ONLY="id ..."
#         DURATION=5 ROUNDS=3 WARMUP=1 WORKERS=2 THREADS=2 CONNS=64
#         RELOAD_DURATION=10 RELOAD_EVERY=2  RECORD=1 (append the tables to bench/RESULTS.md)
#         LOCK=FILE (flock FILE for each part; none by default)
#         AUTOGROUP=off (as root: the kernel's autogroup scheduling off during the run, put back
#         at the end; see below) or keep
set -euo pipefail

PART=${PART:-all}
PROGRAMS_WANTED=${PROGRAMS:-node python rust}
ONLY=${ONLY:-}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
RELOAD_DURATION=${RELOAD_DURATION:-10}
RELOAD_EVERY=${RELOAD_EVERY:-2}
RECORD=${RECORD:-1}
PM2_VERSION=${PM2_VERSION:-7.0.4}
GUNICORN_VERSION=${GUNICORN_VERSION:-27.0.1}
LOCK=${LOCK:-}

me=bench/peers.sh
die() {
    echo "$me: $*" >&2
    exit 1
}
for knob in DURATION ROUNDS WARMUP WORKERS THREADS CONNS RELOAD_DURATION RELOAD_EVERY; do
    [[ ${!knob} =~ ^[1-9][0-9]*$ ]] || die "$knob=${!knob} must be a whole number of at least 1"
done
case $PART in throughput | reload | all) ;; *) die "PART=$PART must be throughput, reload or all" ;; esac
case ${AUTOGROUP:-off} in off | keep) ;; *) die "AUTOGROUP=$AUTOGROUP must be off or keep" ;; esac

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cache=$repo/target/bench-peers
mkdir -p "$cache"

# ---- what it needs ---------------------------------------------------------------------------

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "$1 is missing and only root can install it here (apt-get install $*)"
    fi
    echo "installing $* (apt-get)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}
command -v wrk >/dev/null || apt_install wrk
command -v node >/dev/null || apt_install nodejs
command -v npm >/dev/null || apt_install npm
python=/usr/bin/python3
if ! [ -x "$python" ] || ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
fi
node=$(command -v node)

pm2_dir=$cache/npm
pm2=$pm2_dir/node_modules/.bin/pm2
if ! [ -x "$pm2" ] || [ "$(cat "$pm2_dir/.stamp" 2>/dev/null)" != "pm2@$PM2_VERSION" ]; then
    echo "installing pm2@$PM2_VERSION into $pm2_dir (npm)" >&2
    rm -rf "$pm2_dir"
    mkdir -p "$pm2_dir"
    npm_config_cache=$cache/npm-cache npm_config_update_notifier=false \
        npm install --prefix "$pm2_dir" --no-save --no-audit --no-fund --loglevel=error \
        "pm2@$PM2_VERSION" >/dev/null
    echo "pm2@$PM2_VERSION" >"$pm2_dir/.stamp"
fi
venv=$cache/venv
gunicorn=$venv/bin/gunicorn
if ! [ -x "$gunicorn" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "gunicorn==$GUNICORN_VERSION" ]; then
    echo "installing gunicorn==$GUNICORN_VERSION into $venv (pip)" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "gunicorn==$GUNICORN_VERSION"
    echo "gunicorn==$GUNICORN_VERSION" >"$venv/.stamp"
fi
chmod -R a+rX "$cache"

echo "building (release)..." >&2
cargo build --release --workspace --bins --locked --quiet
target=${CARGO_TARGET_DIR:-$repo/target}/release

# ---- processes -------------------------------------------------------------------------------

cur_kind= # what runs now: mn (multinode's pid), group (a session of ours), pm2
cur_pid=
cur_log=
bg_pids=() # wrk and the reload loop, while they run
work=
autogroup=/proc/sys/kernel/sched_autogroup_enabled
autogroup_saved= # what to put back at the end

cleanup() {
    local pid
    for pid in "${bg_pids[@]}"; do
        pkill -KILL -P "$pid" 2>/dev/null || true
        kill -KILL "$pid" 2>/dev/null || true
    done
    declare -F stop_current >/dev/null && stop_current 1
    [ -z "$work" ] || rm -rf "$work"
    [ -z "$autogroup_saved" ] || echo "$autogroup_saved" >"$autogroup"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The kernel's autogroup scheduling shares the CPU out by session first, then by process within
# a session. multinode starts each worker in a session of its own, Node's cluster, PM2 and
# gunicorn keep theirs in one, and wrk runs in this script's: with autogroup on, the figures
# would mostly say how the CPU is split between sessions (wrk's and the workers', and other
# users' on a shared machine), not what each supervisor costs. So it is off for the run, and
# put back as it was at the end (AUTOGROUP=keep leaves it alone).
autogroup_state="not in this kernel"
if [ -e "$autogroup" ]; then
    autogroup_state="on"
    [ "$(cat "$autogroup")" = 1 ] || autogroup_state="off"
    if [ "$autogroup_state" = on ] && [ "${AUTOGROUP:-off}" = off ]; then
        if echo 0 2>/dev/null >"$autogroup"; then
            autogroup_saved=1
            autogroup_state="turned off for the run"
        else
            echo "note: autogroup scheduling is on and only root can turn it off; the figures depend on it" >&2
        fi
    fi
fi

# As root, multinode runs its workers as nobody: the programs must be where nobody can reach
# them. Every row runs these same copies.
work=$(mktemp -d /tmp/multinode-peers.XXXXXX)
chmod 755 "$work"
export PM2_HOME=$work/pm2
cp "$target/multinode" "$target/hello" examples/node/hello.js bench/peers/cluster.js \
    bench/peers/app.py bench/peers/launch.py bench/peers/probe.py bench/peers/tree.py "$work/"
chmod -R a+rX "$work"
mn_user=()
if [ "$(id -u)" = 0 ]; then
    reachable=1
    d=$venv
    while [ "$d" != / ]; do
        [ "$(($(stat -c '%#a' "$d") & 1))" = 1 ] || reachable=
        d=$(dirname "$d")
    done
    if [ -z "$reachable" ]; then
        echo "note: nobody cannot reach $venv; multinode runs the gunicorn workers as root" >&2
        mn_user=(--user root)
    fi
fi

# server_root: the pid whose process tree serves now.
server_root() {
    if [ "$cur_kind" = pm2 ]; then cat "$PM2_HOME/pm2.pid"; else echo "$cur_pid"; fi
}

# stop_current [FAST]: stops what runs now and waits until it is gone.
stop_current() {
    local fast=${1:-} pid killer
    case $cur_kind in
    mn | group)
        if [ -n "$fast" ]; then
            kill -TERM "$cur_pid" 2>/dev/null || true
            sleep 0.5
        fi
        kill -TERM "$cur_pid" 2>/dev/null || true
        # multinode: SIGKILL for it alone after 20 s (its guard then kills the workers);
        # a group of ours: SIGKILL for the whole group.
        if [ "$cur_kind" = mn ]; then
            (sleep 20 && kill -KILL "$cur_pid") 2>/dev/null &
        else
            (sleep 10 && kill -KILL -- "-$cur_pid") 2>/dev/null &
        fi
        killer=$!
        wait "$cur_pid" 2>/dev/null || true
        kill "$killer" 2>/dev/null || true
        wait "$killer" 2>/dev/null || true
        [ "$cur_kind" = group ] && { kill -KILL -- "-$cur_pid" 2>/dev/null || true; }
        ;;
    pm2)
        # pm2 kill stops the daemon and its workers; what is left of them then gets SIGKILL.
        local daemon left
        daemon=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null || true)
        left=$(pgrep -P "$daemon" 2>/dev/null || true)
        timeout 30 "$pm2" kill >/dev/null 2>&1 || true
        for pid in $daemon $left; do
            if grep -qs -e PM2 -e hello.js "/proc/$pid/cmdline"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        ;;
    esac
    cur_kind=
    cur_pid=
}

# spawn KIND COMMAND...: starts COMMAND in a session of its own, output to a fresh log.
spawn() {
    local kind=$1
    shift
    cur_log=$work/$id.log
    : >"$cur_log"
    setsid "$@" >>"$cur_log" 2>&1 </dev/null 9>&- &
    cur_pid=$!
    cur_kind=$kind
}

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# mn ARGS... -- PROGRAM...: multinode with WORKERS workers; sets addr.
mn() {
    spawn mn env NO_COLOR=1 "$work/multinode" serve --workers "$WORKERS" --listen 127.0.0.1:0 \
        --color never "$@"
    local tries=0
    addr=
    until [ -n "$addr" ]; do
        addr=$(grep -o 'listening on listen0 [^ ]*' "$cur_log" | head -n1 | awk '{print $4}' || true)
        tries=$((tries + 1))
        if [ "$tries" -gt 600 ] || ! kill -0 "$cur_pid" 2>/dev/null; then
            cat "$cur_log" >&2
            die "$id: multinode did not start"
        fi
        [ -n "$addr" ] || sleep 0.1
    done
}

# start ID: starts contender ID and waits until all its workers answer; sets addr, expect.
start() {
    id=$1
    local port
    port=$(free_port)
    addr=127.0.0.1:$port
    expect=$WORKERS
    case $id in
    n-solo) expect=1 && spawn group "$python" "$work/launch.py" 1 "$port" -- "$node" "$work/hello.js" ;;
    n-launch) spawn group "$python" "$work/launch.py" "$WORKERS" "$port" -- "$node" "$work/hello.js" ;;
    n-launch-rp) spawn group "$python" "$work/launch.py" --reuseport "$WORKERS" "$port" -- "$node" "$work/hello.js" ;;
    n-mn) mn -- "$node" "$work/hello.js" ;;
    n-mn-rp) mn --balance reuseport -- "$node" "$work/hello.js" ;;
    n-cluster-rr) spawn group env NODE_CLUSTER_SCHED_POLICY=rr "$node" "$work/cluster.js" "$WORKERS" "$port" "$work/hello.js" ;;
    n-cluster-none) spawn group env NODE_CLUSTER_SCHED_POLICY=none "$node" "$work/cluster.js" "$WORKERS" "$port" "$work/hello.js" ;;
    n-pm2)
        cur_log=$work/$id.log
        cur_kind=pm2
        (cd "$work" && timeout 60 "$pm2" start "$work/hello.js" --name hello -i "$WORKERS" -- "$port") \
            >"$cur_log" 2>&1 9>&- || { cat "$cur_log" >&2; die "$id: pm2 start failed"; }
        ;;
    p-gunicorn) spawn group "$gunicorn" -w "$WORKERS" --no-control-socket --bind "$addr" --chdir "$work" app:app ;;
    p-mn) mn --ready notify "${mn_user[@]}" -- "$gunicorn" -w 1 --no-control-socket --chdir "$work" app:app ;;
    r-launch) spawn group "$python" "$work/launch.py" "$WORKERS" "$port" -- "$work/hello" ;;
    r-launch-rp) spawn group "$python" "$work/launch.py" --reuseport "$WORKERS" "$port" -- "$work/hello" ;;
    r-mn) mn --ready notify -- "$work/hello" ;;
    r-mn-rp) mn --ready notify --balance reuseport -- "$work/hello" ;;
    r-mn-route) mn --ready notify --route round-robin -- "$work/hello" ;;
    *) die "unknown contender $id" ;;
    esac
    if ! "$python" "$work/probe.py" "$addr" "$expect" 60 >/dev/null; then
        cat "$cur_log" >&2
        die "$id did not come up"
    fi
}

# ---- measuring -------------------------------------------------------------------------------

# wrk_run OUT SECONDS SHAPE: wrk against $addr; SHAPE keep or close.
wrk_run() {
    local out=$1 secs=$2 shape=$3 header=()
    [ "$shape" = close ] && header=(-H 'Connection: close')
    wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" "${header[@]}" "http://$addr/" >"$out" 2>&1 || true
}

# "rps requests connect read write timeout non2xx" from wrk's output.
wrk_figures() {
    awk '
        / requests in /    { req = $1 }
        /^Requests\/sec:/  { rps = $2 }
        /Socket errors:/   { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
        /Non-2xx or 3xx/   { n = $NF }
        END {
            if (rps == "") { print "wrk gave no figures" > "/dev/stderr"; exit 1 }
            printf "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", rps, req, c, r, w, t, n
        }' "$1"
}

warm_up() {
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "http://$addr/" >/dev/null 2>&1 || true
}

# reload_once: starts a reload of what runs now and waits until it is done (60 s at most);
# prints how long it took in ms, or fails.
reload_once() {
    local t0 before n old now
    t0=$(date +%s%N)
    case $id in
    n-mn | n-mn-rp | p-mn | r-mn | r-mn-rp | r-mn-route)
        before=$(grep -c 'reload (SIGHUP) done' "$cur_log" || true)
        kill -HUP "$cur_pid"
        for _ in $(seq 1200); do
            n=$(grep -c 'reload (SIGHUP) done' "$cur_log" || true)
            [ "$n" -gt "$before" ] && break
            grep -q 'reload to generation .* failed' "$cur_log" && return 1
            sleep 0.05
        done
        [ "$n" -gt "$before" ] || return 1
        ;;
    n-cluster-rr | n-cluster-none)
        before=$(grep -c 'cluster.js: reload done' "$cur_log" || true)
        kill -HUP "$cur_pid"
        for _ in $(seq 1200); do
            n=$(grep -c 'cluster.js: reload done' "$cur_log" || true)
            [ "$n" -gt "$before" ] && break
            sleep 0.05
        done
        [ "$n" -gt "$before" ] || return 1
        ;;
    p-gunicorn)
        # Done when the arbiter's workers are WORKERS new processes.
        old=" $(pgrep -P "$cur_pid" | tr '\n' ' ')"
        kill -HUP "$cur_pid"
        for _ in $(seq 1200); do
            now=$(pgrep -P "$cur_pid" || true)
            n=0
            for p in $now; do
                case $old in *" $p "*) n=-1000 ;; *) n=$((n + 1)) ;; esac
            done
            [ "$n" -eq "$WORKERS" ] && break
            sleep 0.05
        done
        [ "$n" -eq "$WORKERS" ] || return 1
        ;;
    n-pm2) timeout 60 "$pm2" reload hello >/dev/null 2>&1 || return 1 ;;
    *) die "$id cannot reload" ;;
    esac
    echo $((($(date +%s%N) - t0) / 1000000))
}

# ---- the contenders --------------------------------------------------------------------------

# id, group, program, run by. The first of each group is its reference.
contenders=(
    "n-launch|node|hello.js|no supervisor: $WORKERS processes, one shared socket (the ceiling)"
    "n-solo|node|hello.js|no supervisor: 1 process"
    "n-launch-rp|node|hello.js|no supervisor: $WORKERS processes, SO_REUSEPORT"
    "n-mn|node|hello.js|multinode (shared)"
    "n-mn-rp|node|hello.js|multinode --balance reuseport"
    "n-cluster-rr|node|hello.js|Node cluster, SCHED_RR (default)"
    "n-cluster-none|node|hello.js|Node cluster, SCHED_NONE"
    "n-pm2|node|hello.js|PM2 cluster mode (-i $WORKERS)"
    "p-gunicorn|python|app.py|gunicorn -w $WORKERS (sync)"
    "p-mn|python|app.py|multinode: $WORKERS × gunicorn -w 1 (sync)"
    "r-launch|rust|hello|no supervisor: $WORKERS processes, one shared socket (the ceiling)"
    "r-launch-rp|rust|hello|no supervisor: $WORKERS processes, SO_REUSEPORT"
    "r-mn|rust|hello|multinode (shared)"
    "r-mn-rp|rust|hello|multinode --balance reuseport"
    "r-mn-route|rust|hello|multinode --route round-robin"
)
reloadable="n-mn n-mn-rp n-cluster-rr n-cluster-none n-pm2 p-gunicorn p-mn r-mn r-mn-rp r-mn-route"

selected=()
for c in "${contenders[@]}"; do
    IFS='|' read -r cid group _ _ <<<"$c"
    case " $PROGRAMS_WANTED " in *" $group "*) ;; *) continue ;; esac
    [ -z "$ONLY" ] || case " $ONLY " in *" $cid "*) ;; *) continue ;; esac
    selected+=("$cid")
done
[ "${#selected[@]}" -gt 0 ] || die "no contender selected (PROGRAMS=$PROGRAMS_WANTED ONLY=$ONLY)"

stamp=$(date -u +%Y%m%dT%H%M%SZ)
results=$cache/results
mkdir -p "$results"
meta=$results/$stamp.meta
tsv=$results/$stamp.tsv
printf '%s\n' "${contenders[@]}" >"$meta"
: >"$tsv"

versions() {
    local cpu
    cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n1)
    echo "$(date -u +%Y-%m-%d) · commit $(git rev-parse --short HEAD 2>/dev/null || echo '?') ·" \
        "$(nproc) CPUs ($cpu) · Linux $(uname -r) ·" \
        "node $("$node" --version) · pm2 $("$node" -p "require('$pm2_dir/node_modules/pm2/package.json').version") ·" \
        "gunicorn $("$gunicorn" --version 2>&1 | grep -o '[0-9][0-9.]*' | head -n1) (Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())')) ·" \
        "wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}') ·" \
        "load average (1 min) at the start of each part: $(IFS=/ && echo "${loads[*]}") ·" \
        "autogroup scheduling: $autogroup_state"
}
loads=() # the load average (1 min) at the start of each part

# lock, unlock: take and release LOCK around a part (nothing without LOCK). The servers and wrk
# never get the lock's fd (spawn closes fd 9), so the lock is released when unlock says so.
lock() {
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
    [ -n "$LOCK" ] || return 0
    exec 9>>"$LOCK"
    echo "waiting for $LOCK" >&2
    flock 9
    loads[-1]=$(cut -d' ' -f1 /proc/loadavg)
}
unlock() {
    [ -n "$LOCK" ] || return 0
    flock -u 9
    exec 9>&-
}

if [ "$PART" != reload ]; then
    for group in node python rust; do
        members=()
        for c in "${contenders[@]}"; do
            IFS='|' read -r cid cgroup _ _ <<<"$c"
            [ "$cgroup" = "$group" ] || continue
            case " ${selected[*]} " in *" $cid "*) members+=("$cid") ;; esac
        done
        n=${#members[@]}
        [ "$n" -gt 0 ] || continue
        total=$((ROUNDS * n * (WARMUP + 2 * DURATION + 3)))
        lock
        echo "throughput, $group: $n contenders × $ROUNDS rounds, about $((total / 60 + 1)) min" >&2
        for round in $(seq "$ROUNDS"); do
            for k in $(seq 0 $((n - 1))); do
                cid=${members[$(((k + round - 1) % n))]}
                echo "round $round/$ROUNDS: $cid" >&2
                start "$cid"
                warm_up
                root=$(server_root)
                for shape in keep close; do
                    read -r cpu0 _ _ < <("$python" "$work/tree.py" "$root")
                    wrk_run "$work/wrk.out" "$DURATION" "$shape"
                    read -r cpu1 rss procs < <("$python" "$work/tree.py" "$root")
                    printf 'tp\t%s\t%s\t%s\t%s\t-\t-\t%s\t%s\t%s\n' "$round" "$cid" "$shape" \
                        "$(wrk_figures "$work/wrk.out")" "$((cpu1 - cpu0))" "$rss" "$procs" >>"$tsv"
                done
                stop_current
            done
        done
        unlock
    done
fi

if [ "$PART" != throughput ]; then
    todo=()
    for cid in "${selected[@]}"; do
        case " $reloadable " in *" $cid "*) todo+=("$cid") ;; esac
    done
    [ "${#todo[@]}" -eq 0 ] || lock
    for cid in "${todo[@]}"; do
        for shape in keep close; do
            echo "reload under load: $cid, $shape" >&2
            start "$cid"
            warm_up
            header=()
            [ "$shape" = close ] && header=(-H 'Connection: close')
            wrk -t"$THREADS" -c"$CONNS" -d"${RELOAD_DURATION}s" "${header[@]}" "http://$addr/" \
                >"$work/wrk.out" 2>&1 &
            wrk_pid=$!
            (
                done_ms=()
                sleep "$RELOAD_EVERY"
                while kill -0 "$wrk_pid" 2>/dev/null; do
                    if ms=$(reload_once); then done_ms+=("$ms"); else echo "$cid: a reload failed or timed out" >&2; fi
                    sleep "$RELOAD_EVERY"
                done
                echo "${#done_ms[@]} $(
                    IFS=,
                    echo "${done_ms[*]}"
                )" >"$work/reloads"
            ) &
            loop_pid=$!
            bg_pids=("$wrk_pid" "$loop_pid")
            wait "$wrk_pid" || true
            wait "$loop_pid" || true
            bg_pids=()
            read -r nreloads times <"$work/reloads"
            printf 'reload\t1\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\n' "$cid" "$shape" "$(wrk_figures "$work/wrk.out")" \
                "$nreloads" "${times:--}" >>"$tsv"
            stop_current
        done
    done
    [ "${#todo[@]}" -eq 0 ] || unlock
fi

machine=$(versions)
cmd="${LOCK:+LOCK=$LOCK }PART=$PART PROGRAMS=\"$PROGRAMS_WANTED\"${ONLY:+ ONLY=\"$ONLY\"} DURATION=$DURATION ROUNDS=$ROUNDS WARMUP=$WARMUP WORKERS=$WORKERS THREADS=$THREADS CONNS=$CONNS RELOAD_DURATION=$RELOAD_DURATION RELOAD_EVERY=$RELOAD_EVERY bench/peers.sh"
report=$results/$stamp.md
"$python" bench/peers/report.py "$meta" "$tsv" \
    --machine "$machine" --command "$cmd" --threads "$THREADS" --conns "$CONNS" \
    --workers "$WORKERS" --duration "$DURATION" --rounds "$ROUNDS" \
    --reload-duration "$RELOAD_DURATION" --reload-every "$RELOAD_EVERY" --clk-tck "$(getconf CLK_TCK)" >"$report"
cat "$report"
echo "raw figures: $tsv" >&2

if [ "$RECORD" = 1 ]; then
    # shellcheck source=bench/record.sh
    . bench/record.sh
    record_in_results "## Head to head: multinode and its peers (\`bench/peers.sh\`)" "$(cat "$report")"
fi
