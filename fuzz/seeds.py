#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target to fuzz/corpus/<target>/seed-*: valid examples
of each format (and a few near misses), from which the fuzzers start. bench/fuzz.sh runs it
before fuzzing, so a target whose corpus was minimized back to nothing still starts from
real inputs; `cargo fuzz cmin` then keeps of them what adds coverage.

Usage: fuzz/seeds.py [OPTIONS_OF_SERVE]   (the second argument: serve's value options, one
per line, in the order serve_args picks them; bench/fuzz.sh passes them)
"""

import ipaddress
import os
import struct
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)


def put(target, name, data):
    d = os.path.join(FUZZ, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# proxy: PROXY v1 and v2 headers, some followed by a request.
V2_SIG = b"\r\n\r\n\0\r\nQUIT\n"


def v2(cmd, fam, body):
    return V2_SIG + bytes([cmd, fam]) + struct.pack(">H", len(body)) + body


def v2_addrs(c, s, cp, sp):
    c, s = ipaddress.ip_address(c), ipaddress.ip_address(s)
    return c.packed + s.packed + struct.pack(">HH", cp, sp)


proxy = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 443\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-addrs": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    "v1-partial": b"PROXY TCP4 192.0.2.7 10.0",
    "v2-tcp4": v2(0x21, 0x11, v2_addrs("198.51.100.4", "10.0.0.1", 6000, 80)) + b"GET /",
    "v2-tcp6": v2(0x21, 0x21, v2_addrs("2001:db8::5", "2001:db8::1", 7000, 443)),
    "v2-udp4": v2(0x21, 0x12, v2_addrs("198.51.100.4", "10.0.0.1", 53, 53)),
    "v2-local": v2(0x20, 0x00, b""),
    "v2-tlv": v2(0x21, 0x11, v2_addrs("192.0.2.1", "192.0.2.2", 1, 2) + b"\x01\x00\x02h2"),
    "v2-unix": v2(0x21, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")),
    "v2-short": v2(0x21, 0x11, b"\x01\x02\x03"),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, data in proxy.items():
    put("proxy", name, data)

# cidr: --proxy-from networks.
for i, s in enumerate(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "::ffff:10.0.0.0/104",
                       "0.0.0.0/0", "::/0", "10.0.0.1/8", "172.16.0.0/12", "fe80::/10"]):
    put("cidr", str(i), s)

# route_wire: batches and close notices.


def batch(records):
    out = b"MNRT\x01\x00" + struct.pack("<H", len(records))
    for seq, peer in records:
        rec = bytearray(32)
        rec[:8] = struct.pack("<Q", seq)
        if peer:
            ip, port = ipaddress.ip_address(peer[0]), peer[1]
            rec[8] = 4 if ip.version == 4 else 6
            rec[10:12] = struct.pack("<H", port)
            rec[12:12 + len(ip.packed)] = ip.packed
        out += bytes(rec)
    return out


def notice(seqs):
    return b"MNRC\x01\x00" + struct.pack("<H", len(seqs)) + b"".join(struct.pack("<Q", s) for s in seqs)


put("route_wire", "batch-1", batch([(1, ("192.0.2.1", 4242))]))
put("route_wire", "batch-3", batch([(7, ("192.0.2.1", 4242)), (8, ("2001:db8::1:2", 443)), (9, None)]))
put("route_wire", "notice-3", notice([1, 2, 3]))
put("route_wire", "notice-0", notice([]))

# sd_notify: datagrams, and NOTIFY_SOCKET values.
for i, s in enumerate(["READY=1", "STATUS=2/2 workers ready\nREADY=1", "WATCHDOG=1", "WATCHDOG=trigger",
                       "WATCHDOG_USEC=1000000", "STOPPING=1\r\nSTATUS=bye\r\n", "MAINPID=4242\nX=a=b",
                       "/run/multinode/notify", "@multinode-notify", "STATUS=caf\xe9"]):
    put("sd_notify", str(i), s)

# listen_env: flags (1 LISTEN_PID, 2 LISTEN_FDS, 4 LISTEN_FDNAMES, 8 the pid is ours), then
# the values one per line.
put("listen_env", "ours-named", b"\x0f4242\n2\nhttp:admin")
put("listen_env", "ours-unnamed", b"\x0b100\n3\n")
put("listen_env", "empty-names", b"\x0f7\n3\nhttp::")
put("listen_env", "others", b"\x074243\n1\nx")
put("listen_env", "watchdog", b"\x0b4242\n1500000\n")
put("listen_env", "bad-fds", b"\x0b4242\n+1\n")

# control: request lines and reply lines.
for i, s in enumerate([
    '{"cmd":"status"}', '{"cmd":"reload"}', '{"cmd":"scale","workers":6}', '{"cmd":"stop"}',
    '{"cmd":"explode"}', '{"reloaded":{"generation":3}}', '{"scaled":{"workers":2}}', '"stopping"',
    '{"exited":{"status":0}}', '{"failed":{"error":"not a valid request"}}',
    '{"status":{"name":"hello","pid":42,"generation":1,"workers":1,"ready":true,"reloading":null,'
    '"stopping":false,"unhealthy":null,"reloads_ok":0,"reloads_failed":0,"version":"0.1.0",'
    '"control":"/run/multinode/hello/control.sock","slots":[{"slot":0,"pid":43,"state":"ready",'
    '"generation":1,"uptime_ms":1200,"restarts":0,"restart_causes":{"crash":0,"watchdog":0,'
    '"memory":0,"requests":0},"last_exit":null,"status":"ok","cpu_seconds":0.25,'
    '"memory_bytes":1048576}]}}',
]):
    put("control", str(i), s)

# config_file: the annotated example, and small files.
with open(os.path.join(ROOT, "examples", "multinode.toml"), "rb") as f:
    put("config_file", "example", f.read())
for i, s in enumerate([
    'workers = 2\nlisten = ["127.0.0.1:8080"]\ncommand = ["/bin/true"]\n',
    'command = ["sh", "-c", "exec sleep 1"]\ngrace = "2s"\nmax-memory = "512M"\n[env]\nA = "b"\n',
    'listen = ["web=:8080", "unix:sock"]\nroute = "ip-hash"\nproxy-protocol = true\n'
    'proxy-from = ["10.0.0.0/8"]\ncommand = ["/bin/true"]\n',
    'workers = 0\n', 'grace = 1.5\nready = "delay:2s"\nverbose = 2\ncommand = []\n',
    'listen = []\n', 'wrokers = 3\n', 'metrics = "127.0.0.1:9090"\nwatch = ["."]\ncommand = ["./app"]\n',
]):
    put("config_file", str(i), s)

# duration and size.
for i, s in enumerate(["250ms", "1.5s", "2m", "1h", "10", "0.001", "8760h", "delay:2s", "notify",
                       "5 min", "1e3"]):
    put("duration", str(i), s)
for i, s in enumerate(["512M", "1.5G", "200MiB", "64k", "1048576", "1T", "2kB", "0.5"]):
    put("size", str(i), s)

# listen: --listen values.
for i, s in enumerate(["127.0.0.1:8080", ":80", "*:80", "[::1]:9000", "localhost:1",
                       "unix:/run/app.sock", "admin=unix:/run/a=b.sock", "web=:8080", "::1:80",
                       "[::ffff:192.0.2.1]:443"]):
    put("listen", str(i), s)

# serve_args: a value for each option, picked by its index.
VALUES = {
    "workers": "4", "listen": "127.0.0.1:8080", "env": "KEY=VALUE", "socket-mode": "660",
    "proxy-from": "10.0.0.0/8", "proxy-timeout": "5s", "grace": "10s", "stop-signal": "TERM",
    "ready": "delay:1s", "watchdog-signal": "SIGABRT", "max-memory": "512M", "metrics": ":9090",
    "balance": "reuseport", "route": "least-conn", "restart": "on-failure", "cgroup": "auto",
    "log-format": "json", "color": "never", "max-requests": "1000", "user": "nobody",
    "config": "/etc/multinode/hello.toml", "name": "hello", "control": "/run/hello.sock",
    "workdir": "/srv", "backlog": "1024", "group": "nogroup", "max-restarts": "5",
    "reload-parallel": "2", "max-requests-jitter": "100", "watch": "app.py", "watch-ignore": "*.pyc",
    "watch-debounce": "300ms",
}
if len(sys.argv) > 1:
    with open(sys.argv[1]) as f:
        options = [l.strip() for l in f if l.strip()]
    for i, opt in enumerate(options):
        put("serve_args", opt, bytes([i]) + VALUES.get(opt, "1s").encode())

# guard_wire: a cut byte, then frames.


def frame(tag, payload):
    return tag + struct.pack("<I", len(payload)) + payload


put("guard_wire", "requests", b"\x03" + frame(b"T", struct.pack("<i", 42)) + frame(b"U", struct.pack("<i", -1))
    + frame(b"F", b"/run/multinode/a/control.sock") + frame(b"D", b"/run/multinode/a")
    + frame(b"G", b"/sys/fs/cgroup/multinode-a.1") + frame(b"S", b"") + frame(b"R", b"") + frame(b"X", b""))
put("guard_wire", "replies", b"\x07" + frame(b"C", b"workers = 2\n") + frame(b"E", b"permission denied"))
put("guard_wire", "too-large", b"\x00" + b"F\xff\xff\xff\x7f")

# proc_stat: a name, then numbers; and real files.
put("proc_stat", "sleep", b"sleep\0\0\0\0\0\0\0\0\0\0" + bytes(range(40)))
put("proc_stat", "odd-name", b"a) \xff\n(b\\ \t)  x" + bytes(range(40, 80)))
for f in ["stat", "status"]:
    with open("/proc/self/" + f, "rb") as src:
        put("proc_stat", "self-" + f, src.read())

# metrics_http: a cut byte, then what a client sends.
for i, s in enumerate([b"\x05GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00HEAD /healthz HTTP/1.0\n\n",
                       b"\x10POST /metrics HTTP/1.1\r\n\r\n", b"\x02GET / HTTP/1.1\r\n\r\n",
                       b"\x01GET /healthz?verbose HTTP/1.1\r\nA: b\r\n\r\nrest"]):
    put("metrics_http", str(i), s)

# http: a cut byte, then a connection's bytes.
put("http", "pipelined", b"\x00GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /sleep/1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
put("http", "chunked", b"\x01POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n"
    b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
put("http", "bad", b"\x02\r\n\r\nGET / HTTP/2.0\r\n\r\n")

# upgrade_state: states of other formats, and broken ones (the corpus also holds whole states
# a running multinode handed over, captured by executing a wrapper that copies the memfd).
for i, s in enumerate([
    '{"format": 1, "multinode": "0.1.0"}', '{"format": 2, "multinode": "9.0.0", "pid": 1}',
    '{"format": 0, "multinode": "0.0.1"}', '{"format": 1}', '{"multinode": "0.1.0"}',
    '{"format": 4294967296, "multinode": ""}', '[1, "0.1.0"]', '{"format": 1, "multinode": "0.1.0", "pid": 7,',
]):
    put("upgrade_state", str(i), s)
