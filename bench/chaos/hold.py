#!/usr/bin/env python3
"""A route-mode worker for bench/chaos.sh idle: holds any number of connections in one thread.

It reads connections from its route channel (fd 3, the wire format of examples/python/routed.py),
keeps each in one epoll set, answers every request head it reads (up to its blank line) with
`200` and `process=<pid>`, and closes a connection when the client does, reporting the close to
multinode (so `least-conn` and the route metrics stay right). One thread and one fd per
connection: what 10,000 idle connections cost a worker is their sockets, not 10,000 threads.
Sends READY=1 once reading the channel; exits when the channel closes or on SIGTERM.
"""
import os
import select
import signal
import socket
import struct
import sys

MAX_BATCH = 253
HEADER = struct.Struct("<4sBBH")
RECORD = struct.Struct("<QBxH16s4x")

pid = os.getpid()


def notify(state):
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), addr)


def main():
    if os.environ.get("LISTEN_PID") != str(pid) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("hold.py: run me under multinode serve --route ... with one --listen")
    ch = socket.socket(fileno=3)
    if ch.type != socket.SOCK_SEQPACKET:
        sys.exit("hold.py: fd 3 is not a route channel; start multinode with --route")
    ch.setblocking(False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ep = select.epoll()
    ep.register(ch.fileno(), select.EPOLLIN)
    conns = {}  # fd -> (socket, seq, pending bytes)
    body = f"process={pid}\n".encode()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    notify("READY=1")
    while True:
        for fd, _ev in ep.poll():
            if fd == ch.fileno():
                while True:
                    try:
                        data, fds, _f, _a = socket.recv_fds(
                            ch, HEADER.size + MAX_BATCH * RECORD.size, MAX_BATCH
                        )
                    except BlockingIOError:
                        break
                    if not data:
                        return
                    magic, version, _flags, count = HEADER.unpack_from(data)
                    if magic != b"MNRT" or version != 1 or count != len(fds):
                        sys.exit("hold.py: bad route message")
                    for i, cfd in enumerate(fds):
                        (seq,) = struct.unpack_from("<Q", data, HEADER.size + i * RECORD.size)
                        s = socket.socket(fileno=cfd)
                        s.setblocking(False)
                        conns[cfd] = (s, seq, b"")
                        ep.register(cfd, select.EPOLLIN)
                continue
            s, seq, buf = conns[fd]
            try:
                data = s.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd]
                s.close()
                try:
                    ch.send(HEADER.pack(b"MNRC", 1, 0, 1) + struct.pack("<Q", seq))
                except OSError:
                    pass
                continue
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                try:
                    s.send(answer)
                except OSError:
                    pass
            conns[fd] = (s, seq, buf)


if __name__ == "__main__":
    main()
