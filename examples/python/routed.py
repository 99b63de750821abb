#!/usr/bin/env python3
"""A route-mode worker in plain Python (stdlib only, no SDK): receives each connection from
multinode over the route channel with socket.recv_fds and answers HTTP/1.1.

Run:  multinode serve --route ip-hash --workers 3 -l 127.0.0.1:8080 -- python3 examples/python/routed.py

The channel is fd 3 (LISTEN_FDS=1), a Unix SOCK_SEQPACKET socket. Each datagram is
  header  8 bytes : b"MNRT", version 1, flags 0, count (u16 little-endian)
  record 32 bytes : seq u64 LE, family u8 (0/4/6), 0, port u16 LE, address 16 bytes, 4 zero bytes
with `count` connected sockets attached as SCM_RIGHTS, in record order. Writing
b"MNRC" 1 0 count(u16 LE) + count x seq(u64 LE) back tells multinode those connections are
closed (it feeds --route least-conn).

Under `multinode serve --watchdog D` it sends WATCHDOG=1 to NOTIFY_SOCKET every D/2 from its
receive loop, whose recv times out at least every D/4 (so an idle worker pings, a stuck loop
does not); WATCHDOG_USEC and WATCHDOG_PID are read as sd_watchdog_enabled(3) reads them.
"""
import ipaddress
import os
import signal
import socket
import struct
import sys
import threading
import time

MAX_BATCH = 253
HEADER = struct.Struct("<4sBBH")
RECORD = struct.Struct("<QBxH16s4x")

pid = os.getpid()
worker = os.environ.get("MULTINODE_WORKER_ID", "-")
reqno = 0
lock = threading.Lock()
stopping = threading.Event()


def notify(state):
    """sd_notify(3): one datagram to $NOTIFY_SOCKET, if set."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(state.encode(), addr)
        except OSError as e:
            print(f"routed.py: notify: {e}", file=sys.stderr)


def watchdog_interval():
    """The watchdog interval in seconds, or None: WATCHDOG_USEC microseconds, ours when
    WATCHDOG_PID is unset or our pid (sd_watchdog_enabled(3)). Both variables are removed."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    wpid = os.environ.pop("WATCHDOG_PID", None)
    if usec is None:
        return None
    if not (usec.isascii() and usec.isdigit()) or int(usec) in (0, 2**64 - 1) or int(usec) >= 2**64:
        sys.exit(f"routed.py: WATCHDOG_USEC={usec!r} is not a number of microseconds")
    if wpid is not None:
        if not (wpid.isascii() and wpid.isdigit()) or int(wpid) == 0:
            sys.exit(f"routed.py: WATCHDOG_PID={wpid!r} is not a process id")
        if int(wpid) != pid:
            return None  # meant for another process
    return int(usec) / 1e6


def channel():
    if os.environ.get("LISTEN_PID") != str(pid) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("routed.py: run me under multinode serve --route ... (no route channel)")
    ch = socket.socket(fileno=3)
    if ch.type != socket.SOCK_SEQPACKET:
        sys.exit("routed.py: fd 3 is not a route channel; start multinode with --route")
    return ch


def decode(data, fds):
    magic, version, _flags, count = HEADER.unpack_from(data)
    if magic != b"MNRT" or version != 1 or count != len(fds):
        for fd in fds:
            os.close(fd)
        raise ValueError("bad route message")
    out = []
    for i, fd in enumerate(fds):
        seq, family, port, addr = RECORD.unpack_from(data, HEADER.size + i * RECORD.size)
        if family == 4:
            peer = f"{ipaddress.IPv4Address(addr[:4])}:{port}"
        elif family == 6:
            peer = f"[{ipaddress.IPv6Address(addr)}]:{port}"
        else:
            peer = "-"
        out.append((socket.socket(fileno=fd), seq, peer))
    return out


def serve(conn, seq, peer, ch):
    global reqno
    try:
        f = conn.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                break
            keep = not line.rstrip().endswith(b"HTTP/1.0")
            while True:
                h = f.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                if h.lower().startswith(b"connection:") and b"close" in h.lower():
                    keep = False
            with lock:
                reqno += 1
                n = reqno
            if stopping.is_set():
                keep = False
            body = f"process={pid}; worker={worker}; reqno={n}; seq={seq}; client={peer}\n".encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
            head += "Connection: keep-alive\r\n\r\n" if keep else "Connection: close\r\n\r\n"
            conn.sendall(head.encode() + body)
            if not keep:
                break
    except OSError:
        pass
    finally:
        conn.close()
        try:
            ch.send(HEADER.pack(b"MNRC", 1, 0, 1) + struct.pack("<Q", seq))
        except OSError:
            pass


def main():
    ch = channel()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    interval = watchdog_interval()
    # The receive loop comes round at least this often: it pings the watchdog from there.
    ch.settimeout(0.2 if interval is None else min(0.2, interval / 4))
    last_ping = time.monotonic()
    print(f"routed.py: worker {worker} pid {pid} reading the route channel", flush=True)
    while True:
        if interval is not None and time.monotonic() - last_ping >= interval / 2:
            last_ping = time.monotonic()
            notify("WATCHDOG=1")
        if stopping.is_set():
            # Take what is already in the channel, then stop.
            ch.setblocking(False)
        try:
            data, fds, _flags, _addr = socket.recv_fds(ch, HEADER.size + MAX_BATCH * RECORD.size, MAX_BATCH)
        except (socket.timeout, BlockingIOError):
            if stopping.is_set():
                break
            continue
        if not data:
            break
        for conn, seq, peer in decode(data, fds):
            threading.Thread(target=serve, args=(conn, seq, peer, ch), daemon=False).start()
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join()


if __name__ == "__main__":
    main()
