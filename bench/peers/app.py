"""app.py: the WSGI hello of bench/peers.sh, the one Python program of that bench.

It runs under gunicorn on its own (`gunicorn -w 2 app:app`) and under multinode (one gunicorn
arbiter with one sync worker per slot, on the socket multinode passes), so the two rows differ
only in who supervises. Every request gets 200 with the body

    process=<pid>; worker=<MULTINODE_WORKER_ID or ->; reqno=<n>

like examples/hello, hello.js and hello.py (n counts this process's requests); the bench tells
the workers apart by `process=`.
"""

import itertools
import os

WORKER = os.environ.get("MULTINODE_WORKER_ID", "-")
_reqno = itertools.count(1)


def app(environ, start_response):
    # The pid is read per request: gunicorn imports the app before it forks its workers.
    body = f"process={os.getpid()}; worker={WORKER}; reqno={next(_reqno)}\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
