#!/usr/bin/env bash
# Several hosts behind HAProxy, on one machine: the topology tests/haproxy.rs checks, to try by
# hand. As root (network namespaces):
#
#   cargo build --release --workspace --locked
#   sudo examples/haproxy/demo.sh            # runs until Ctrl-C, at most DEMO_SECONDS (600)
#
# It makes five network namespaces and removes them when it ends (Ctrl-C, the time limit, an
# error): three "hosts" each running `multinode serve --route ip-hash --proxy-protocol` with
# 2 affinity workers, a balancer running HAProxy with examples/haproxy/haproxy.cfg, and a client
# with several addresses. Addresses are from 198.18.0.0/15 (reserved for benchmarks) and never
# leave the namespaces:
#
#   client 198.19.1.1-8 --- 198.19.0.1:80 [balancer: haproxy] 198.18.N.1 --- 198.18.N.2 [host N]
#                                                                              :8080 service
#                                                                              :9100 /healthz
#
# Environment: BIN_DIR (where `multinode` and `affinity` are; default target/release),
# DEMO_SECONDS (default 600; 0 = show the affinity, then clean up and exit).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin_dir=${BIN_DIR:-$repo/target/release}
seconds=${DEMO_SECONDS:-600}
hosts=3
prefix="mnhademo-$$"
nsdir=/run/netns

die() { echo "demo.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (it creates network namespaces)"
command -v haproxy >/dev/null || die "haproxy is not installed (apt-get install haproxy)"
command -v curl >/dev/null || die "curl is not installed"
command -v ip >/dev/null || die "ip (iproute2) is not installed"
for b in multinode affinity; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: cargo build --release --workspace --locked (or set BIN_DIR)"
done

# Leftovers of a demo that was killed outright (its pid is gone): its namespaces, and what runs
# in them.
for ns in $(ip netns list | awk '{print $1}' | grep '^mnhademo-' || true); do
  pid=${ns#mnhademo-}; pid=${pid%%-*}
  if [ ! -d "/proc/$pid" ]; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  fi
done
for d in /run/multinode/mnhademo-*; do
  [ -d "$d" ] || continue
  pid=${d#/run/multinode/mnhademo-}; pid=${pid%%-*}
  [ -d "/proc/$pid" ] || rm -rf "$d"
done

tmp=$(mktemp -d /tmp/mnhademo.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
  trap - EXIT INT TERM HUP
  echo "demo.sh: cleaning up"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  # multinode drains (2 s of --stop-delay, then the workers finish); wait a little, then kill.
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive -eq 0 ] && break
    sleep 0.1
  done
  for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix-" || true); do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
  done
  # The control sockets of a multinode that had to be killed.
  for h in $(seq $hosts); do rm -rf "/run/multinode/$prefix-h$h"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

in_ns() { local ns=$1; shift; nsenter --net="$nsdir/$prefix-$ns" "$@"; }

# The namespaces and their links: every veth is created inside them, so nothing is added to
# the machine's own network, and deleting a namespace deletes its links.
ip netns add "$prefix-lb"
ip netns add "$prefix-client"
in_ns lb ip link set lo up
in_ns client ip link set lo up
ip -n "$prefix-lb" link add client type veth peer name eth0 netns "$prefix-client"
ip -n "$prefix-lb" addr add 198.19.0.1/16 dev client
ip -n "$prefix-lb" link set client up
ip -n "$prefix-client" link set eth0 up
for c in $(seq 8); do ip -n "$prefix-client" addr add "198.19.1.$c/16" dev eth0; done
for h in $(seq $hosts); do
  ip netns add "$prefix-h$h"
  in_ns "h$h" ip link set lo up
  ip -n "$prefix-lb" link add "h$h" type veth peer name eth0 netns "$prefix-h$h"
  ip -n "$prefix-lb" addr add "198.18.$h.1/24" dev "h$h"
  ip -n "$prefix-lb" link set "h$h" up
  ip -n "$prefix-h$h" addr add "198.18.$h.2/24" dev eth0
  ip -n "$prefix-h$h" link set eth0 up
done

# Workers run as nobody: the program must be where nobody can execute it.
cp "$bin_dir/affinity" "$tmp/affinity"
chmod 755 "$tmp/affinity"

# Each in a session of its own (setsid), so that a Ctrl-C reaches only this script, whose
# cleanup then stops them in order.
start_host() {
  local h=$1
  setsid nsenter --net="$nsdir/$prefix-h$h" "$bin_dir/multinode" serve --name "$prefix-h$h" --workers 2 \
    --route ip-hash --proxy-protocol --proxy-from "198.18.$h.1" \
    --listen "198.18.$h.2:8080" --metrics "198.18.$h.2:9100" --stop-delay 2s \
    -- "$tmp/affinity" >"$tmp/h$h.log" 2>&1 &
  pids+=($!)
  echo $! >"$tmp/h$h.pid"
}
for h in $(seq $hosts); do start_host "$h"; done

env MN_FRONTEND=198.19.0.1:80 MN_HOST1=198.18.1.2 MN_HOST2=198.18.2.2 MN_HOST3=198.18.3.2 \
  MN_STATS_SOCKET="$tmp/haproxy.sock" \
  setsid nsenter --net="$nsdir/$prefix-lb" haproxy -db -f "$here/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
pids+=($!)

# Ready when every host's /healthz says 200 and a request goes through.
ok=0
for _ in $(seq 150); do
  ok=1
  for h in $(seq $hosts); do
    in_ns lb curl -sf -o /dev/null --max-time 1 "http://198.18.$h.2:9100/healthz" || ok=0
  done
  # (from the last client address, so that the ones shown below start at visits=1)
  [ $ok -eq 1 ] && in_ns client curl -sf -o /dev/null --max-time 1 --interface 198.19.1.8 \
    http://198.19.0.1/ || ok=0
  [ $ok -eq 1 ] && break
  sleep 0.2
done
if [ $ok -ne 1 ]; then
  echo "demo.sh: the topology did not come up; logs:" >&2
  tail -n 20 "$tmp"/*.log >&2
  exit 1
fi

echo "Three requests from each of four client addresses, through HAProxy (balance source, PROXY v2)"
echo "and multinode (ip-hash on the address the PROXY header names):"
for c in 1 2 3 4; do
  for _ in 1 2 3; do
    printf '  198.19.1.%s -> %s\n' "$c" \
      "$(in_ns client curl -s --max-time 5 --interface "198.19.1.$c" http://198.19.0.1/)"
  done
done
echo "Each client address keeps its worker (process=), sees its own address (client=), and its"
echo "visits climb: the state lives in that one worker."

if [ "$seconds" -eq 0 ]; then
  exit 0
fi

cat <<EOF

Try, in another terminal (as root):

  # a request from client address 198.19.1.N (N = 1..8):
  nsenter --net=$nsdir/$prefix-client curl -s --interface 198.19.1.3 http://198.19.0.1/
  # HAProxy's view of the hosts (UP/DOWN, check status):
  nsenter --net=$nsdir/$prefix-lb curl -s http://198.18.1.2:9100/healthz
  echo 'show servers state' | nsenter --net=$nsdir/$prefix-lb socat - $tmp/haproxy.sock   # needs socat
  # a rolling reload of host 1, a lame-duck stop of host 2 (HAProxy sees /healthz 503 first):
  $bin_dir/multinode reload --name $prefix-h1
  kill -TERM \$(cat $tmp/h2.pid)
  # logs: $tmp/h1.log h2.log h3.log haproxy.log

Running for at most $seconds s; Ctrl-C stops it and removes everything it made.
EOF
end=$((SECONDS + seconds))
while [ $SECONDS -lt $end ]; do sleep 1; done
