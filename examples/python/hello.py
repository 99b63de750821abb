#!/usr/bin/env python3
"""hello.py: a multinode worker in plain Python (stdlib only, no SDK).

Run: cargo build --release --workspace && ./target/release/multinode serve --workers 4 --listen 127.0.0.1:8080 -- python3 examples/python/hello.py

It takes the sockets multinode passes by the systemd socket-activation
protocol (fds 3.. with LISTEN_FDS=n and LISTEN_PID=<its pid>), or binds
127.0.0.1:8080 when run standalone (`python3 examples/python/hello.py [PORT]`).
HTTP/1.1 with keep-alive; every request gets 200 with the body

    process=<pid>; worker=<MULTINODE_WORKER_ID or ->; reqno=<n>

(n counts this process's requests). `/sleep/<ms>` answers after sleeping.
It sends READY=1 to $NOTIFY_SOCKET once serving, and on SIGTERM/SIGINT stops
accepting, finishes the requests in flight and exits.

Under `multinode serve --watchdog D` (or systemd's WatchdogSec=), it reads WATCHDOG_USEC and
WATCHDOG_PID as sd_watchdog_enabled(3) does and sends WATCHDOG=1 every D/2 from each accept
loop (socketserver's serve_forever, whose select() then times out at least every D/4), so an
idle worker pings and one whose accept loop is stuck does not. Without a watchdog it runs as
before.
"""

import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN_FDS_START = 3


def inherited_sockets():
    """The listening sockets passed to this process (sd_listen_fds(3))."""
    pid = os.environ.pop("LISTEN_PID", None)
    count = os.environ.pop("LISTEN_FDS", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or not pid.isdigit() or int(pid) != os.getpid():
        return []  # meant for another process, or not socket-activated
    if not count.isdigit():
        sys.exit(f"hello.py: LISTEN_FDS={count!r} is not a number")
    socks = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        s = socket.socket(fileno=fd)  # family and type are read from the fd
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if s.type != socket.SOCK_STREAM or not listening:
            sys.exit(f"hello.py: fd {fd} is not a listening stream socket")
        os.set_inheritable(fd, False)
        # socketserver polls, then accepts. On a socket shared by several
        # workers another one may take the connection in between, and a
        # blocking accept would then hang (and with it the shutdown).
        # Non-blocking, the accept fails and the poll resumes. The flag is
        # shared by every worker holding the socket (Node sets it too).
        s.setblocking(False)
        socks.append(s)
    return socks


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
            print(f"hello.py: notify: {e}", file=sys.stderr)


def watchdog_interval():
    """The watchdog interval in seconds the supervisor asked for, or None: WATCHDOG_USEC
    microseconds, ours when WATCHDOG_PID is unset or our pid (sd_watchdog_enabled(3)). Both
    variables are removed, so programs this one starts do not take the watchdog for theirs."""
    usec = os.environ.pop("WATCHDOG_USEC", None)
    pid = os.environ.pop("WATCHDOG_PID", None)
    if usec is None:
        return None
    if not (usec.isascii() and usec.isdigit()) or int(usec) in (0, 2**64 - 1) or int(usec) >= 2**64:
        sys.exit(f"hello.py: WATCHDOG_USEC={usec!r} is not a number of microseconds")
    if pid is not None:
        if not (pid.isascii() and pid.isdigit()) or int(pid) == 0:
            sys.exit(f"hello.py: WATCHDOG_PID={pid!r} is not a process id")
        if int(pid) != os.getpid():
            return None  # meant for another process
    return int(usec) / 1e6


class Watchdog:
    """WATCHDOG=1 at most every half interval, as sd_watchdog_enabled(3) advises."""

    def __init__(self, interval):
        self.interval = interval
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def ping_if_due(self):
        now = time.monotonic()
        with self.lock:
            if now - self.last < self.interval / 2:
                return
            self.last = now
        notify("WATCHDOG=1")


WORKER = os.environ.get("MULTINODE_WORKER_ID", "-")
PID = os.getpid()
lock = threading.Lock()
reqno = 0
in_flight = 0  # requests between their head and their response
idle = 0  # open connections waiting for their next (or first) request
changed = threading.Condition(lock)
# While draining, how long an idle connection may take to send one more request, which is
# then answered with `Connection: close` (a client may have sent it already).
IDLE_GRACE = 2.0
stopping = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive (HTTP/1.0 requests still close)
    # Buffer each response and send it in one write (flushed after every request): headers
    # and body in two writes would wait for a delayed ACK on kept-alive connections (Nagle).
    wbufsize = 1 << 16

    def setup(self):
        global idle
        super().setup()
        self.idle = True
        with lock:
            idle += 1

    def finish(self):
        global idle
        super().finish()
        with lock:
            if self.idle:
                idle -= 1
                changed.notify_all()

    def answer(self):
        # In flight from here (the head has been read) to the response.
        global reqno, in_flight, idle
        with lock:
            reqno += 1
            n = reqno
            in_flight += 1
            if self.idle:
                self.idle = False
                idle -= 1
        try:
            self.respond(n)
        finally:
            with lock:
                in_flight -= 1
                if not self.close_connection:
                    self.idle = True
                    idle += 1
                changed.notify_all()

    def respond(self, n):
        # Discard a request body.
        length = self.headers.get("Content-Length")
        if length and length.isdigit():
            self.rfile.read(int(length))
        path = self.path.split("?", 1)[0]
        if path.startswith("/sleep/"):
            ms = path[len("/sleep/"):]
            if not ms.isdigit():
                self.send_error(400, explain="bad /sleep/<ms>: <ms> must be a decimal number")
                return
            time.sleep(int(ms) / 1000)
        body = f"process={PID}; worker={WORKER}; reqno={n}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if stopping.is_set():
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = answer

    def log_message(self, format, *args):
        pass  # quiet (also: a Unix socket peer has no address to log)


class Server(ThreadingHTTPServer):
    def service_actions(self):
        # serve_forever calls this on every round of its accept loop: after each select()
        # that timed out (poll_interval) and after each accepted connection. A ping from here
        # says that this loop still comes round; a thread of its own would keep pinging while
        # the loop hung.
        super().service_actions()
        if watchdog is not None:
            watchdog.ping_if_due()


def server_for(sock):
    """A ThreadingHTTPServer on an existing listening socket."""
    server = Server(("", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.address_family = sock.family
    server.server_address = sock.getsockname()
    return server


watchdog = None


def main():
    global watchdog
    socks = inherited_sockets()
    interval = watchdog_interval()
    # select() in serve_forever times out this often, so a ping is never late by more than a
    # quarter of the interval.
    poll_interval = 0.5
    if interval is not None:
        watchdog = Watchdog(interval)
        poll_interval = min(poll_interval, interval / 4)
    if not socks:
        port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
        s = socket.create_server(("127.0.0.1", port))
        socks = [s]
    servers = [server_for(s) for s in socks]

    def on_stop(signum, frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)

    threads = [
        threading.Thread(target=s.serve_forever, args=(poll_interval,), daemon=True)
        for s in servers
    ]
    for t in threads:
        t.start()
    print(f"hello.py: worker {WORKER} pid {PID} serving {len(servers)} socket(s)", flush=True)
    notify("READY=1")

    while not stopping.wait(0.5):
        pass
    notify("STOPPING=1")
    for s in servers:
        s.shutdown()  # stop accepting; waits for serve_forever to return
    # Finish the requests in flight, and give idle connections (kept alive, or
    # accepted just before the stop) a moment to send one more request: it is
    # answered with `Connection: close`. What is still idle after that ends
    # with the process.
    deadline = time.monotonic() + IDLE_GRACE
    with lock:
        while in_flight or (idle and time.monotonic() < deadline):
            changed.wait(0.1)


if __name__ == "__main__":
    main()
