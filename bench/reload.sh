#!/usr/bin/env bash
# Reload and upgrade under load: wrk against 4 hello workers for 20 s, three times: without
# reloads, while multinode gets a SIGHUP (rolling reload) every 2 s, and while it gets a SIGUSR2
# (an upgrade in place: it executes its own binary again, keeping pid, sockets and workers)
# every 2 s. Prints requests/s and wrk's error counts (socket errors, non-2xx/3xx responses)
# for each run and records them in bench/RESULTS.md under "## Reload under load".
#
# Usage: bench/reload.sh   (as root or not; builds the release binaries first)
# Tunables (environment): DURATION=20 WORKERS=4 THREADS=2 CONNECTIONS=64 HUP_EVERY=2 (also the
#   interval of the SIGUSR2s)
set -euo pipefail

DURATION=${DURATION:-20}
WORKERS=${WORKERS:-4}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-64}
HUP_EVERY=${HUP_EVERY:-2}

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

if ! command -v wrk >/dev/null; then
  echo "wrk is missing; installing it (apt-get install -y wrk)" >&2
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y wrk >/dev/null; }
fi

cargo build --release --workspace --bins --locked --quiet
target=${CARGO_TARGET_DIR:-$repo/target}/release

work=$(mktemp -d /tmp/multinode-bench.XXXXXX)
chmod 755 "$work"
mn_pid=
hup_pid=
cleanup() {
  [ -n "$hup_pid" ] && kill "$hup_pid" 2>/dev/null || true
  if [ -n "$mn_pid" ] && kill -0 "$mn_pid" 2>/dev/null; then
    kill -TERM "$mn_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$mn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mn_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# As root, multinode runs the workers as nobody, who may not be able to enter the checkout.
cp "$target/hello" "$work/hello"
chmod 755 "$work/hello"

# Starts multinode with $WORKERS hello workers; sets mn_pid and addr once all are ready.
start() {
  local log=$1
  "$target/multinode" serve --workers "$WORKERS" --listen 127.0.0.1:0 --ready notify \
    --color never -- "$work/hello" >"$log.out" 2>"$log" &
  mn_pid=$!
  addr=
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*listening on listen0 \([^ ]*\) .*/\1/p' "$log" | head -n1)
    ready=$(grep -c '] ready (' "$log" || true)
    if [ -n "$addr" ] && [ "$ready" -ge "$WORKERS" ]; then return 0; fi
    kill -0 "$mn_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "multinode did not start; its output:" >&2
  cat "$log" >&2
  exit 1
}

stop() {
  kill -TERM "$mn_pid"
  wait "$mn_pid" || true
  mn_pid=
}

# Runs wrk against $addr; prints its output to the terminal and keeps it in $1.
run_wrk() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "http://$addr/" | tee "$1"
}

# "rps requests connect read write timeout non2xx" from a wrk output file.
figures() {
  awk '
    /requests in/        { req = $1 }
    /^Requests\/sec:/    { rps = $2 }
    /Socket errors:/     { gsub(",", ""); c = $4; r = $6; w = $8; t = $10 }
    /Non-2xx or 3xx/     { n = $NF }
    END { printf "%s %s %s %s %s %s %s\n", rps, req, c + 0, r + 0, w + 0, t + 0, n + 0 }
  ' "$1"
}

echo "== plain: wrk ${DURATION}s against $WORKERS hello workers, no reloads" >&2
start "$work/plain.log"
run_wrk "$work/plain.wrk"
stop

# Runs wrk as run_wrk does while multinode gets signal $2 every $HUP_EVERY s; log file $1.
signalled() {
  local log=$1 sig=$2
  start "$log"
  (
    while sleep "$HUP_EVERY"; do kill "-$sig" "$mn_pid" 2>/dev/null || exit 0; done
  ) &
  hup_pid=$!
  run_wrk "$log.wrk"
  kill "$hup_pid" 2>/dev/null || true
  wait "$hup_pid" 2>/dev/null || true
  hup_pid=
  # Let a reload still rolling finish, so it is counted.
  sleep 1
  stop
}

echo "== reloads: the same, with a SIGHUP every ${HUP_EVERY}s" >&2
signalled "$work/hup.log" HUP
cp "$work/hup.log.wrk" "$work/hup.wrk"
sighups=$(grep -c 'SIGHUP: rolling' "$work/hup.log" || true)
done_count=$(grep -c 'reload (SIGHUP) done' "$work/hup.log" || true)
failed=$(grep -c 'reload to generation .* failed' "$work/hup.log" || true)

echo "== upgrades: the same, with a SIGUSR2 every ${HUP_EVERY}s" >&2
signalled "$work/usr2.log" USR2
cp "$work/usr2.log.wrk" "$work/usr2.wrk"
upgrades=$(grep -c 'upgrading in place' "$work/usr2.log" || true)
upgraded=$(grep -c 'upgraded in place' "$work/usr2.log" || true)
# "upgraded in place to ... in 6 ms: ...": the median of the N ms.
took=$(sed -n 's/.*upgraded in place to .* in \([0-9]*\) ms:.*/\1/p' "$work/usr2.log" | sort -n |
  awk '{ v[NR] = $1 } END { if (NR) printf "%s ms (median of %d; %s–%s)", v[int((NR + 1) / 2)], NR, v[1], v[NR]; else printf "none" }')

read -r p_rps p_req p_c p_r p_w p_t p_n <<<"$(figures "$work/plain.wrk")"
read -r h_rps h_req h_c h_r h_w h_t h_n <<<"$(figures "$work/hup.wrk")"
read -r u_rps u_req u_c u_r u_w u_t u_n <<<"$(figures "$work/usr2.wrk")"
p_err=$((p_c + p_r + p_w + p_t + p_n))
h_err=$((h_c + h_r + h_w + h_t + h_n))
u_err=$((u_c + u_r + u_w + u_t + u_n))

cmd="wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s http://ADDR/ against multinode serve --workers $WORKERS --listen 127.0.0.1:0 --ready notify -- hello (release)"
table="| run | requests/s | requests | socket errors (connect/read/write/timeout) | non-2xx/3xx | errors in all |
|---|---|---|---|---|---|
| no reloads | $p_rps | $p_req | $p_c/$p_r/$p_w/$p_t | $p_n | $p_err |
| SIGHUP every ${HUP_EVERY}s ($done_count reloads done of $sighups started, $failed failed) | $h_rps | $h_req | $h_c/$h_r/$h_w/$h_t | $h_n | $h_err |
| SIGUSR2 every ${HUP_EVERY}s ($upgraded upgrades done of $upgrades started; each took $took) | $u_rps | $u_req | $u_c/$u_r/$u_w/$u_t | $u_n | $u_err |"

echo
echo "$table"

results=bench/RESULTS.md
[ -f "$results" ] || echo "# multinode benchmark results" >"$results"
section=$(mktemp)
cat >"$section" <<EOF
## Reload under load

$(date -u +%Y-%m-%d), $(nproc) CPUs, Linux $(uname -r), wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}').
Command: \`bench/reload.sh\` (DURATION=$DURATION WORKERS=$WORKERS THREADS=$THREADS CONNECTIONS=$CONNECTIONS HUP_EVERY=$HUP_EVERY), which runs
\`$cmd\`, three times: plain, while multinode gets a SIGHUP every ${HUP_EVERY}s, and while it gets
a SIGUSR2 (upgrade in place, to the same binary) every ${HUP_EVERY}s.
Socket errors are wrk's; a read error is a connection closed or reset before its response was complete.

$table

EOF
# Replace an earlier "## Reload under load" section in place, or append one.
if grep -q '^## Reload under load$' "$results"; then
  awk -v new="$section" '
    /^## Reload under load$/ { while ((getline l < new) > 0) print l; skip = 1; next }
    skip && /^## / { skip = 0 }
    !skip { print }
  ' "$results" >"$results.tmp"
  mv "$results.tmp" "$results"
else
  { echo; cat "$section"; } >>"$results"
fi
rm -f "$section"
echo "recorded in $results" >&2
