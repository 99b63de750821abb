#!/usr/bin/env python3
"""launch.py: the "no supervisor" rows of bench/peers.sh.

    launch.py [--reuseport] N PORT -- PROGRAM [ARGS...]

Binds 127.0.0.1:PORT (backlog 1024, multinode's default) and starts N copies of PROGRAM on it
by the systemd socket-activation protocol (the socket at fd 3, LISTEN_FDS=1, LISTEN_PID=<the
copy's pid>), the same way multinode passes its sockets, so a worker runs the same code path
here as under multinode. With --reuseport each copy gets a socket of its own, all bound to the
port with SO_REUSEPORT (the kernel spreads connections over them); without it, one socket is
shared by every copy. Then it only waits: it never accepts, routes, restarts or watches
anything, so nothing but the kernel sits between the load and the workers — the ceiling a
supervisor can at best reach. SIGTERM or SIGINT is passed on to the copies; it exits when they
have.
"""

import os
import signal
import socket
import sys


def die(msg):
    print(f"launch.py: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    args = sys.argv[1:]
    reuseport = False
    if args[:1] == ["--reuseport"]:
        reuseport = True
        args = args[1:]
    if len(args) < 4 or args[2] != "--" or not args[0].isdigit() or not args[1].isdigit():
        die("usage: launch.py [--reuseport] N PORT -- PROGRAM [ARGS...]")
    n, port, program = int(args[0]), int(args[1]), args[3:]
    if n < 1:
        die(f"N must be at least 1, not {n}")

    def bind():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            die(f"cannot bind 127.0.0.1:{port}: {e.strerror}")
        s.listen(1024)
        return s

    socks = [bind() for _ in range(n)] if reuseport else [bind()]
    children = []
    for i in range(n):
        sock = socks[i] if reuseport else socks[0]
        pid = os.fork()
        if pid == 0:
            # The child: the socket at fd 3, inheritable (dup2 makes it so, but does nothing
            # when the socket is fd 3 already; every other fd of ours is close-on-exec), the
            # activation variables, then the program.
            try:
                if sock.fileno() != 3:
                    os.dup2(sock.fileno(), 3)
                os.set_inheritable(3, True)
                env = dict(os.environ)
                env.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="listen0")
                os.execvpe(program[0], program, env)
            except OSError as e:
                print(f"launch.py: cannot run {program[0]}: {e.strerror}", file=sys.stderr)
            os._exit(127)
        children.append(pid)
    for s in socks:
        s.close()

    def forward(signum, frame):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f"launch.py: {n} process(es) on 127.0.0.1:{port}"
          f"{' (SO_REUSEPORT, a socket each)' if reuseport else ' (one shared socket)'}",
          flush=True)
    while children:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)


if __name__ == "__main__":
    main()
