"""Real services for the tests: a private redis-server, a private RabbitMQ vhost, and the
project's own processes (rest, worker) started as subprocesses with matching settings."""

from __future__ import annotations

import csv
import json
import threading
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pika
import redis

from facerec import broker as amqp
from facerec.settings import Settings
from facerec.store import DATABASES, HASH_TO_MATCHES, META, image_key

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "data" / "faces"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass(frozen=True)
class Photo:
    path: str
    identities: frozenset[str]

    @property
    def data(self) -> bytes:
        return (FACES / self.path).read_bytes()


def photos() -> list[Photo]:
    with open(FACES / "labels.csv", newline="") as f:
        return [Photo(r["path"], frozenset(r["identities"].split(";"))
                      - {"unknown_child", "unknown_adult"}) for r in csv.DictReader(f)]


class RedisServer:
    """A redis-server of our own on a free port, in a temporary directory."""

    def __init__(self, appendonly: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="facerec-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "RedisServer":
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (make test installs it)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", self.dir], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _pings(client), 10, f"redis-server on {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def client(self, db: int, decode: bool = True) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, decode_responses=decode)

    def flush(self) -> None:
        redis.Redis(port=self.port).flushall()

    def dump(self, db: int) -> dict[str, object]:
        """The whole content of one database, comparable across runs."""
        c = self.client(db, decode=False)
        out: dict[str, object] = {}
        for key in c.scan_iter(count=1000):
            kind = c.type(key)
            if kind == b"set":
                out[key.decode()] = sorted(c.smembers(key))
            elif kind == b"string":
                out[key.decode()] = c.get(key)
            elif kind == b"hash":
                out[key.decode()] = dict(sorted(c.hgetall(key).items()))
            elif kind == b"list":
                out[key.decode()] = c.lrange(key, 0, -1)
        return out

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, stdout=subprocess.DEVNULL,
                   timeout=60)


class Vhost:
    """A RabbitMQ virtual host of our own on the machine's broker (guest may use it)."""

    def __init__(self) -> None:
        self.name = f"facerec-test-{uuid.uuid4().hex[:8]}"

    def create(self) -> "Vhost":
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        rabbitmqctl("delete_vhost", self.name)


@dataclass
class Env:
    """The settings every process of one test uses, and handles on the services."""

    settings: Settings
    redis: RedisServer
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _metrics_ports: dict[int, int] = field(default_factory=dict)

    def environ(self, **extra: str) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(REDIS_HOST=s.redis_host, REDIS_PORT=str(s.redis_port),
                   RABBITMQ_HOST=s.rabbitmq_host, RABBITMQ_PORT=str(s.rabbitmq_port),
                   RABBITMQ_VHOST=s.rabbitmq_vhost, PYTHONUNBUFFERED="1",
                   WORKER_HEARTBEAT_FILE=tempfile.mktemp(prefix="facerec-hb-"),
                   METRICS_PORT=str(free_port()))
        env.update(extra)
        return env

    def broker(self) -> amqp.Broker:
        return amqp.Broker(self.settings)

    def queue_depth(self, queue: str = amqp.IMAGE_QUEUE) -> int:
        b = self.broker()
        try:
            return b.queue_depth(queue)
        finally:
            b.close()

    def start_worker(self, **extra: str) -> subprocess.Popen[bytes]:
        environ = self.environ(**extra)
        proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT, env=environ)
        self.procs.append(proc)
        self._metrics_ports[proc.pid] = int(environ["METRICS_PORT"])
        return proc

    def worker_metrics_port(self, proc: subprocess.Popen[bytes]) -> int:
        return self._metrics_ports[proc.pid]

    def start_rest(self, **extra: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "rest"], cwd=ROOT,
                                env=self.environ(PORT=str(port), **extra))
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _http_ok(url + "/healthz") or proc.poll() is not None, 30,
                   "rest to answer /healthz")
        assert proc.poll() is None, "rest exited at start-up"
        return url

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 60) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        return proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def statuses(self) -> dict[str, str]:
        meta = self.redis.client(META)
        return {k.split(":", 1)[1]: meta.hget(k, "status")
                for k in meta.scan_iter(match=image_key("*"))}

    def wait_processed(self, hashes: set[str], timeout: float = 300) -> None:
        def done() -> bool:
            st = self.statuses()
            return all(st.get(h) in ("done", "failed") for h in hashes)
        wait_until(done, timeout, f"{len(hashes)} images to be processed", interval=0.25)

    def matches(self) -> dict[str, object]:
        return self.redis.dump(HASH_TO_MATCHES)

    def databases(self) -> dict[int, dict[str, object]]:
        return {db: self.redis.dump(db) for db in DATABASES if db != META}


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def reset_vhost(settings: Settings) -> None:
    """Delete the project's queues in the test vhost so each test starts empty."""
    conn = pika.BlockingConnection(amqp.connection_parameters(settings))
    try:
        ch = conn.channel()
        for q in (amqp.IMAGE_QUEUE, amqp.DEAD_QUEUE):
            ch.queue_delete(q)
    finally:
        conn.close()


@dataclass
class Reply:
    status: int
    body: object  # parsed JSON, or the raw bytes when the body is not JSON
    headers: dict[str, str]


def http(method: str, url: str, data: bytes | None = None, json_body: object = None,
         headers: dict[str, str] | None = None, timeout: float = 30) -> Reply:
    """One HTTP request with the standard library; errors come back as a Reply too."""
    hdrs = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, rh = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, raw, rh = err.code, err.read(), dict(err.headers)
    try:
        body: object = json.loads(raw)
    except ValueError:
        body = raw
    return Reply(status, body, rh)


@contextmanager
def image_server(body: bytes) -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server answering every GET with `body` as a JPEG.

    Yields its base URL and the list of paths requested so far.
    """
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            requested.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requested
    finally:
        server.shutdown()
        server.server_close()


def read_queue(settings: Settings, queue: str, consume: bool = False
               ) -> list[tuple[dict[str, object], bytes]]:
    """Every message in `queue` as (headers, body); left in place unless `consume`."""
    conn = pika.BlockingConnection(amqp.connection_parameters(settings))
    out: list[tuple[dict[str, object], bytes]] = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=consume)
            if method is None:
                return out
            out.append((props.headers or {}, body))
    finally:
        conn.close()  # what was not acknowledged goes back to the queue
