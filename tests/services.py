"""Real services for the tests: a private redis-server, a private RabbitMQ vhost, and the
project's own processes (rest, worker) started as subprocesses with matching settings."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pika
import redis

from facerec import broker as amqp
from facerec.messages import CONTENT_TYPE
from facerec.settings import Settings
from facerec.store import DATABASES, HASH_TO_MATCHES, META, image_key

ROOT = Path(__file__).resolve().parent.parent
FACES = ROOT / "tests" / "data" / "faces"


def _ephemeral_floor() -> int:
    """The first port the kernel hands out as a connection's own local port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1, for a server started a moment later. It is chosen
    below the ephemeral range: a port the kernel picked (bind to 0) can be taken, before the
    server binds it, as the local port of any outgoing connection on the machine (seen in
    CI: a worker container's metrics port, 'Address already in use')."""
    floor = _ephemeral_floor()
    for _ in range(1000):
        port = random.randrange(10_000, floor)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 10000..{floor - 1}")


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

    def __init__(self, appendonly: bool = False, maxmemory: int = 0) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="facerec-redis-")
        self.appendonly = appendonly
        # As the manifests configure it: at most this many bytes, writes refused beyond.
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (make test installs it)"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", self.dir,
             *(["--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"]
               if self.maxmemory else [])], stdout=subprocess.DEVNULL)
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


# -- a RabbitMQ node of our own ---------------------------------------------------------

class PrivateRabbit:
    """A RabbitMQ node of its own (name, AMQP and distribution ports, data and logs in a
    temporary directory), so stopping it cannot touch the machine's shared broker."""

    def __init__(self) -> None:
        self.node = f"facerec-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="facerec-rabbit-"))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node, RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "pid"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")
        return env

    def start(self) -> PrivateRabbit:
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            assert shutil.which(tool), f"{tool} is not installed (make test installs it)"
        # The server runs as the rabbitmq user (the Debian wrapper switches to it).
        self.dir.chmod(0o777)
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        subprocess.run(["rabbitmq-server", "-detached"], env=self._env(), check=True,
                       timeout=60)
        # await_startup fails at once while the node has not registered yet: ask again.
        deadline = time.monotonic() + 180
        while True:
            try:
                self.ctl("--timeout", "120", "await_startup", timeout=150)
                return self
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        return subprocess.run(["rabbitmqctl", "-q", "-n", self.node, *args], env=self._env(),
                              check=True, capture_output=True, text=True,
                              timeout=timeout).stdout

    def connections(self) -> list[dict[str, object]]:
        """The node's client connections: peer port, negotiated heartbeat (timeout) and the
        name the client gave (facerec.broker's connection_name)."""
        out = self.ctl("list_connections", "peer_port", "timeout", "client_properties",
                       "--formatter", "json")
        found = []
        for c in json.loads(out):
            props = {p[0]: p[2] for p in c.pop("client_properties", [])}
            found.append({**c, "name": props.get("connection_name", "")})
        return found

    def unacked(self, queue: str = amqp.IMAGE_QUEUE) -> int:
        out = self.ctl("list_queues", "name", "messages_unacknowledged", "--formatter", "json")
        return sum(int(q["messages_unacknowledged"]) for q in json.loads(out)
                   if q["name"] == queue)

    def stop(self) -> None:
        try:
            self.ctl("stop", timeout=60)
        except (subprocess.SubprocessError, OSError):
            pid = (self.dir / "pid").read_text().strip() if (self.dir / "pid").exists() else ""
            if pid.isdigit():
                os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, stdout=subprocess.DEVNULL,
                   timeout=60)


class Vhost:
    """A RabbitMQ virtual host of our own on the machine's broker (guest may use it)."""

    def __init__(self) -> None:
        self.name = f"facerec-test-{uuid.uuid4().hex[:8]}"

    def create(self) -> Vhost:
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

    def start_rest(self, stderr: Path | None = None, **extra: str) -> str:
        """rest under gunicorn on a free port (its stderr, its log lines, to `stderr`)."""
        port = free_port()
        out = stderr.open("wb") if stderr is not None else None
        proc = subprocess.Popen([sys.executable, "-m", "rest"], cwd=ROOT, stderr=out,
                                env=self.environ(PORT=str(port), **extra))
        if out is not None:
            out.close()
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


@contextmanager
def shared_rest(redis_server: RedisServer, vhost: Vhost, **extra: str
                ) -> Iterator[tuple[Env, str]]:
    """One rest process for a module's many refusals (starting one per case is slow)."""
    env = Env(Settings.from_env({}, redis_port=redis_server.port, rabbitmq_vhost=vhost.name),
              redis_server)
    try:
        yield env, env.start_rest(**extra)
    finally:
        env.stop_all()


@contextmanager
def nothing_kept(env: Env) -> Iterator[None]:
    """Empty databases and queues; afterwards, nothing queued or recorded (a refusal)."""
    env.redis.flush()
    reset_vhost(env.settings)
    yield
    assert env.queue_depth() == 0, "a refused request was queued"
    assert env.statuses() == {}, "a refused request was recorded"


def reset_vhost(settings: Settings) -> None:
    """Delete the project's queues in the test vhost so each test starts empty."""
    conn = pika.BlockingConnection(amqp.connection_parameters(settings))
    try:
        ch = conn.channel()
        for q in (amqp.IMAGE_QUEUE, amqp.DEAD_QUEUE, amqp.DEAD_EVENTS_QUEUE, amqp.SEARCH_QUEUE):
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
        def do_GET(self) -> None:
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


def publish_raw(settings: Settings, body: bytes, headers: dict[str, object] | None,
                content_type: str | None = CONTENT_TYPE, exchange: str = amqp.WORK_EXCHANGE,
                routing_key: str = amqp.IMAGE_ROUTING_KEY) -> None:
    """Publish a message as any client could, unchecked (confirmed by the broker)."""
    broker = amqp.Broker(settings, name="facerec-test")
    try:
        broker.publish(exchange, routing_key, body, headers, content_type)
    finally:
        broker.close()


@dataclass(frozen=True)
class Queued:
    headers: dict[str, object]
    body: bytes
    content_type: str | None


def read_queue(settings: Settings, queue: str, consume: bool = False) -> list[Queued]:
    """Every message in `queue`; left in place unless `consume`."""
    conn = pika.BlockingConnection(amqp.connection_parameters(settings, "facerec-test"))
    out: list[Queued] = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=consume)
            if method is None:
                return out
            out.append(Queued(props.headers or {}, body, props.content_type))
    finally:
        conn.close()  # what was not acknowledged goes back to the queue


# -- second hostile-input round: processes' memory, rest's stderr ---------------------------

def gunicorn_workers(master_pid: int) -> list[int]:
    """The pids of a gunicorn master's worker processes."""
    return [int(p) for p in
            Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]


def memory_kib(pid: int, field: str = "VmHWM") -> int:
    """A process's resident memory: VmHWM (its peak so far) or VmRSS (now), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")
