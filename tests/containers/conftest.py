"""Fixtures of the container test.

The session: a Docker engine (started by scripts/docker-engine.sh only when none answers,
and then stopped at the end, with a check that it left no process, container or network
behind), both images built by scripts/images.sh exactly as `make images` builds them, the
dev overlay's rendered pod specs, and a private redis-server with the overlay's Redis
password. Each deployment test gets a fresh RabbitMQ vhost and user, empty Redis databases
and its own containers.

`pytest` alone (make test) does not collect this directory: it needs a Docker engine and
takes minutes. Name it: `make test-containers` or `pytest tests/containers`.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image

from tests.containers.harness import (
    ARTIFACTS,
    ENGINE,
    LABEL,
    Deployment,
    Docker,
    Forwarder,
    PodSpec,
    RabbitUser,
    pod_specs,
    render,
)
from tests.services import ROOT, Photo, RedisServer, Vhost, photos

HERE = Path(__file__).resolve().parent
OVERLAY = "deploy/overlays/dev"
ENGINE_COMMANDS = {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2"}
SESSION = uuid.uuid4().hex[:6]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    inside = collection_path == HERE or HERE in collection_path.parents
    if not inside:
        return None
    for arg in config.args:
        asked = Path(arg.split("::")[0]).resolve()
        if asked == HERE or HERE in asked.parents:
            return None
    return True


# -- what the session measured, printed at the end (and kept in .run/containers/) ----------

REPORT: list[str] = []
STARTS: list[float] = []  # seconds from `docker run` to every container ready, per deployment


def report(line: str) -> None:
    REPORT.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if STARTS:
        report(f"deployments: {len(STARTS)}, each ready (every readiness probe passing) in "
               f"{min(STARTS):.1f}-{max(STARTS):.1f} s")
    if not REPORT:
        return
    terminalreporter.section("container test measurements")
    for line in REPORT:
        terminalreporter.write_line(line)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "report.txt").write_text("\n".join(REPORT) + "\n")


# -- the engine and the images ---------------------------------------------------------------

def engine_processes() -> set[int]:
    pids = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in ENGINE_COMMANDS:
                pids.add(int(comm.parent.name))
        except OSError:
            continue
    return pids


def engine_mounts() -> set[str]:
    return {line for line in Path("/proc/self/mounts").read_text().splitlines()
            if "/run/docker/" in line or "/var/lib/docker/" in line}


@pytest.fixture(scope="session")
def docker() -> Iterator[Docker]:
    before, mounts_before = engine_processes(), engine_mounts()
    client = Docker() if Path(ENGINE).exists() else None
    started = client is None or not client.answers()
    if started:
        start = time.monotonic()
        result = subprocess.run([str(ENGINE), "start"], capture_output=True, text=True,
                                timeout=900, check=False)
        assert result.returncode == 0, f"{ENGINE} start:\n{result.stdout}{result.stderr}"
        report(f"engine: installed if absent and started in {time.monotonic() - start:.1f} s")
        client = Docker()
    else:
        report("engine: one was running already (left running)")
    assert client is not None and client.answers()
    networks = client.networks()
    session_label = f"{LABEL}.session={SESSION}"
    yield client
    leftovers = client.containers(session_label)
    if leftovers:
        client("rm", "--force", "--volumes", *leftovers, timeout=180)
    assert client.networks() == networks, "the test changed the engine's networks"
    assert not client.containers(session_label)
    if started:
        result = subprocess.run([str(ENGINE), "stop"], capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, f"{ENGINE} stop:\n{result.stdout}{result.stderr}"
        left = engine_processes() - before
        assert not left, f"engine processes left behind: {sorted(left)}"
        mounts = engine_mounts() - mounts_before
        assert not mounts, f"the engine left mounts behind: {sorted(mounts)}"
    assert not leftovers, f"containers left behind by the tests: {leftovers}"


class Images:
    """What scripts/images.sh built: the dev overlay's two tags, on which base, its log."""

    def __init__(self, log: str, seconds: float) -> None:
        self.log, self.seconds = log, seconds
        self.rest, self.worker = "facerec-rest:dev", "facerec-worker:dev"
        marker = "built facerec-rest:dev on "
        (line,) = [line for line in log.splitlines() if line.startswith(marker)]
        self.base = line[len(marker):].split()[0]


@pytest.fixture(scope="session")
def images(docker: Docker) -> Images:
    start = time.monotonic()
    result = subprocess.run([str(ROOT / "scripts" / "images.sh")], capture_output=True,
                            text=True, timeout=2400, check=False,
                            env={**os.environ, "TAG": "dev"})
    seconds = time.monotonic() - start
    log = result.stdout + result.stderr
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "images.log").write_text(log)
    assert result.returncode == 0, f"scripts/images.sh failed:\n{log[-6000:]}"
    built = Images(log, seconds)
    report(f"images: scripts/images.sh took {seconds:.1f} s (base {built.base})")
    for line in log.splitlines():
        if line.startswith("built ") or line.startswith("facerec-"):
            report(f"  {line}")
    return built


# -- the manifests and the services ----------------------------------------------------------

@pytest.fixture(scope="session")
def manifests() -> list[dict[str, object]]:
    return render(OVERLAY)  # type: ignore[return-value]


@pytest.fixture(scope="session")
def specs(manifests: list[dict[str, object]]) -> dict[str, PodSpec]:
    found = pod_specs(manifests)  # type: ignore[arg-type]
    assert sorted(found) == ["logs", "rest", "worker"]
    return found


@pytest.fixture(scope="session")
def redis_password(specs: dict[str, PodSpec]) -> str:
    return specs["worker"].environment()["REDIS_PASSWORD"]


@pytest.fixture(scope="session")
def redis_server(redis_password: str) -> Iterator[RedisServer]:
    server = RedisServer().start()
    # The overlay's Secret holds the password; the apps must use it, as in the cluster.
    redis.Redis(port=server.port).config_set("requirepass", redis_password)
    yield server
    server.close()


@pytest.fixture
def meta(redis_server: RedisServer, redis_password: str) -> redis.Redis:
    from facerec.store import META

    return redis.Redis(port=redis_server.port, password=redis_password, db=META,
                       decode_responses=True)


Deploy = Callable[..., Deployment]


@pytest.fixture
def deploy(docker: Docker, images: Images, specs: dict[str, PodSpec],
           redis_server: RedisServer, redis_password: str,
           request: pytest.FixtureRequest) -> Iterator[Deploy]:
    """deploy(heartbeat=None, workers=2): a fresh deployment, removed after the test."""
    made: list[tuple[Deployment, Vhost, RabbitUser, Forwarder]] = []

    def make(heartbeat: int | None = None, workers: int = 2) -> Deployment:
        redis.Redis(port=redis_server.port, password=redis_password).flushall()
        vhost = Vhost().create()
        user = RabbitUser(vhost.name, specs["worker"].environment()["RABBITMQ_PASSWORD"])
        user.create()
        forwarder = Forwarder(int(specs["logs"].environment()["RABBITMQ_PORT"]))
        overrides = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_server.port),
                     "RABBITMQ_HOST": "127.0.0.1", "RABBITMQ_VHOST": vhost.name,
                     "RABBITMQ_USER": user.name}
        if heartbeat is not None:
            overrides["RABBITMQ_HEARTBEAT"] = str(heartbeat)
        deployment = Deployment(docker, specs, SESSION, overrides, ARTIFACTS / "logs",
                                user, forwarder)
        made.append((deployment, vhost, user, forwarder))
        start = time.monotonic()
        deployment.start_all({"logs": {"RABBITMQ_PORT": str(forwarder.port)}}, workers)
        STARTS.append(time.monotonic() - start)
        return deployment

    yield make
    for deployment, vhost, user, forwarder in made:
        deployment.save_logs(request.node.name)
        deployment.remove()
        forwarder.close()
        user.delete()
        vhost.delete()


# -- photos ------------------------------------------------------------------------------------

def upload_name(photo: Photo, variant: int = 0) -> str:
    stem = photo.path.replace("/", "__")
    return stem if not variant else f"v{variant}__{stem}"


def variant_bytes(photo: Photo, variant: int) -> bytes:
    """The photo re-encoded with one corner pixel changed: new hash, same faces."""
    image = Image.open(io.BytesIO(photo.data)).convert("RGB")
    image.putpixel((0, 0), ((variant * 53) % 256, (variant * 97) % 256, (variant * 31) % 256))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    return out.getvalue()


@pytest.fixture(scope="session")
def shared_photos() -> list[Photo]:
    found = photos()
    assert len(found) == 26, "tests/data/faces/labels.csv lists the 26 shared photos"
    return found
