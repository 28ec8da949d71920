"""python -m rest: serve the REST API with gunicorn (threads per worker process).

Slow clients cost no request thread (README "Hostile input"): each gunicorn process's
event loop reads a request's head itself, and hands the connection to a thread only once
the head is complete; a head that takes longer than HEAD_SECONDS is dropped. The loop also
answers `GET /healthz` itself, so liveness never waits for a free thread: it says that the
process's event loop runs, whatever its threads are doing. (Slow bodies and URL fetches
are bounded by rest.scan's slots.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import selectors
import shutil
import socket
import sys
import tempfile
import time
from functools import partial
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from facerec.settings import Settings

HEAD_SECONDS = 10.0
# A head larger than this goes to a thread as it is: gunicorn's parser refuses it.
HEAD_LIMIT = 64 * 1024
_LIVENESS = re.compile(rb"GET /healthz(?:\?[^ ]*)? HTTP/1\.[01]\r\n")
# What rest.ops.healthz answers, byte for byte.
_ALIVE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n"
          b"Connection: close\r\n\r\n{\"status\":\"ok\"}\n")


class HeadFirstWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker, except that a connection reaches the thread pool only
    with a complete request head, and /healthz is answered by the event loop.

    Every connection goes to the pool through `enqueue_req` (new, kept alive, or with
    bytes left over from its last request): this reads what has arrived without blocking,
    waits on the loop's poller for the rest, and submits it once the head is whole.
    """

    def init_process(self) -> None:
        self.heads: dict[Any, float] = {}  # connection -> deadline of its head
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        if self.cfg.is_ssl:  # a TLS handshake would block the loop: not for us
            super().enqueue_req(conn)
            return
        conn.init()  # the HTTP/1.1 parser; reads nothing
        conn.sock.setblocking(False)
        self.heads[conn] = time.monotonic() + HEAD_SECONDS
        self._gather(conn)

    def _gather(self, conn: Any) -> None:
        unreader = conn.parser.unreader
        held = unreader.take_buffered()
        try:
            while b"\r\n\r\n" not in held and len(held) < HEAD_LIMIT:
                chunk = conn.sock.recv(HEAD_LIMIT)
                if not chunk:
                    if not held:  # closed between requests: nothing to answer
                        self._drop(conn)
                        return
                    break  # closed mid-head: the parser says so, in a thread
                held += chunk
        except BlockingIOError:
            unreader.unread(held)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._readable, conn))
            return
        except OSError:
            self._drop(conn)
            return
        unreader.unread(held)
        del self.heads[conn]
        if _LIVENESS.match(held):
            self._alive(conn)
            return
        conn.sock.setblocking(True)
        super().enqueue_req(conn)

    def _readable(self, conn: Any, sock: socket.socket) -> None:
        self.poller.unregister(sock)
        self._gather(conn)

    def _alive(self, conn: Any) -> None:
        try:
            conn.sock.send(_ALIVE)  # a fresh socket's buffer takes it whole
        except OSError:
            pass
        self.nr_conns -= 1
        conn.close()

    def _drop(self, conn: Any) -> None:
        self.heads.pop(conn, None)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """gunicorn's pending connections, and heads past their deadline (each loop turn)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c, deadline in self.heads.items() if deadline <= now]:
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self._drop(conn)


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.web_concurrency,
            "threads": self.settings.web_threads,
            "worker_class": HeadFirstWorker,
            # Fetching a URL may take up to 3 x FETCH_TIMEOUT.
            "timeout": int(3 * self.settings.fetch_timeout) + 30,
            "graceful_timeout": 20,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "child_exit": _child_exit,
            # gunicorn's control socket (for gunicornc) would go under $HOME/.gunicorn/: the
            # home is /nonexistent and the root read-only in the images. Nothing uses it.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # In each gunicorn process, after the fork: connections and threads are per process.
        from facerec.topiclog import setup_logging
        from rest.app import create_app

        setup_logging(self.settings, "rest")
        return create_app(self.settings)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def release_large_frees() -> None:
    """Serve every large allocation (a decoded image, a body) from mmap, so freeing it
    gives it back to the OS at once.

    glibc raises its mmap threshold (up to 32 MiB) after the first large block is freed,
    and keeps later ones in per-thread arenas: each request thread would keep the largest
    image it ever decoded, and the decoder memory budget (rest.scan) would bound nothing.
    A fixed threshold keeps the dynamic one from moving. Inherited by the forked workers;
    nothing to do where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def main() -> int:
    # Each gunicorn process counts into files here; /metrics sums them (see facerec.metrics).
    own_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="facerec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    release_large_frees()
    try:
        _Server(Settings.from_env()).run()
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
