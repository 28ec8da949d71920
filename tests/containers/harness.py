"""The container test's machinery: a docker client, the dev overlay's pod specs turned into
`docker run` flags, a running deployment (rest, workers, listener), its probes, and what
RabbitMQ knows about its connections.

Everything runs on the host network (the engine has no bridge) on private ports: a private
redis-server, a private RabbitMQ vhost and user on the machine's broker, rest and the
workers' metrics on free ports.
"""

from __future__ import annotations

import base64
import json
import re
import selectors
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.services import ROOT, free_port, wait_until

# Every container of every session carries this label; one session's also its own id.
LABEL = "facerec.test"
ENGINE = ROOT / "scripts" / "docker-engine.sh"
ARTIFACTS = ROOT / ".run" / "containers"


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"rabbitmqctl {' '.join(args)}: {result.stderr}"
    return result.stdout


# -- docker ---------------------------------------------------------------------------------

class Docker:
    """The docker client that scripts/docker-engine.sh picks (the engine's own)."""

    def __init__(self) -> None:
        self.client = subprocess.run([str(ENGINE), "client"], capture_output=True, text=True,
                                     check=True, timeout=30).stdout.strip()

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.client, *args], capture_output=True, text=True,
                                timeout=timeout, check=False, env=env)
        if check:
            assert result.returncode == 0, (
                f"docker {' '.join(args[:3])} … exited {result.returncode}:\n{result.stderr}")
        return result

    def answers(self) -> bool:
        return self("info", check=False, timeout=30).returncode == 0

    def inspect(self, *names: str) -> list[dict[str, Any]]:
        return json.loads(self("inspect", *names).stdout)  # type: ignore[no-any-return]

    def containers(self, label: str) -> list[str]:
        out = self("ps", "--all", "--quiet", "--filter", f"label={label}").stdout
        return out.split()

    def networks(self) -> set[str]:
        return set(self("network", "ls", "--format", "{{.Name}}").stdout.split())

    def layers(self, image: str) -> list[str]:
        return self.inspect(image)[0]["RootFS"]["Layers"]  # type: ignore[no-any-return]

    def history(self, image: str) -> list[tuple[int, str]]:
        """(size in bytes, instruction) per step, oldest first."""
        out = self("history", "--no-trunc", "--human=false", "--format",
                   "{{.Size}}\t{{.CreatedBy}}", image).stdout
        steps = [line.split("\t", 1) for line in out.splitlines()]
        return [(int(size), created) for size, created in reversed(steps)]

    def venv_layer(self, image: str) -> tuple[str, int]:
        """Digest and size of the virtualenv layer: the top one, made by COPY --from=build."""
        steps = self.history(image)
        sized = [step for step in steps if step[0]]
        size, created_by = sized[-1]
        assert re.search(r"COPY .*/opt/venv /opt/venv", created_by), (
            f"{image}: the top layer is not the virtualenv: {created_by}")
        return self.layers(image)[-1], size


# -- the manifests --------------------------------------------------------------------------

def render(kustomization: str) -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(ROOT / kustomization)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return [o for o in yaml.safe_load_all(result.stdout) if o]


# What this mapping knows how to turn into docker flags; anything else in a pod spec fails
# the test rather than being silently left out.
POD_FIELDS = {"containers", "securityContext", "volumes", "automountServiceAccountToken",
              "enableServiceLinks", "terminationGracePeriodSeconds",
              "topologySpreadConstraints"}
CONTAINER_FIELDS = {"name", "image", "command", "args", "env", "envFrom", "ports", "resources",
                    "securityContext", "volumeMounts", "livenessProbe", "readinessProbe",
                    "startupProbe", "imagePullPolicy"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def quantity(text: str) -> float:
    """A Kubernetes quantity: "250m" cores, "768Mi" bytes, "1" core."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match and (match.group(2) in units or not match.group(2)), text
    return float(match.group(1)) * units.get(match.group(2), 1)


@dataclass
class PodSpec:
    """One app's pod template from the rendered overlay, and what it needs resolved."""

    component: str
    pod: dict[str, Any]
    objects: list[dict[str, Any]]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        return container  # type: ignore[no-any-return]

    @property
    def image(self) -> str:
        return str(self.container["image"])

    @property
    def grace(self) -> int:
        return int(self.pod.get("terminationGracePeriodSeconds", 30))

    def probes(self) -> dict[str, dict[str, Any]]:
        return {kind: self.container[kind] for kind in PROBES if kind in self.container}

    def _find(self, kind: str, name: str) -> dict[str, Any]:
        (found,) = [o for o in self.objects
                    if o["kind"] == kind and o["metadata"]["name"] == name]
        return found

    def environment(self) -> dict[str, str]:
        """The container's environment as the kubelet builds it: envFrom, then env."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            (kind, ref), = source.items()
            assert kind == "configMapRef", source
            env.update(self._find("ConfigMap", ref["name"])["data"])
        for var in self.container.get("env", []):
            if "value" in var:
                env[var["name"]] = str(var["value"])
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            secret = [o for o in self.objects if o["kind"] == "Secret"
                      and o["metadata"]["name"] == ref["name"]]
            if not secret and ref.get("optional"):
                continue
            (found,) = secret
            if ref["key"] in found.get("data", {}):
                env[var["name"]] = base64.b64decode(found["data"][ref["key"]]).decode()
            else:
                assert ref.get("optional"), var
        return env

    def container_port(self, name_or_number: str | int) -> int:
        for port in self.container.get("ports", []):
            if name_or_number in (port.get("name"), port["containerPort"]):
                return int(port["containerPort"])
        raise AssertionError(f"{self.component}: no port {name_or_number}")

    def run_flags(self) -> list[str]:
        """The pod spec as `docker run` flags (securityContext, /tmp, limits, grace)."""
        unknown = set(self.pod) - POD_FIELDS | set(self.container) - CONTAINER_FIELDS
        assert not unknown, f"{self.component}: cannot map {sorted(unknown)} to docker"
        pod_sc = self.pod.get("securityContext", {})
        sc = {**pod_sc, **self.container.get("securityContext", {})}
        flags = ["--network", "host",
                 # The kubelet runs the manifest's probes; the image's HEALTHCHECK is ignored.
                 "--no-healthcheck",
                 "--stop-timeout", str(self.grace)]
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        assert uid and sc.get("runAsNonRoot") is True, f"{self.component}: may run as root"
        flags += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        if sc.get("readOnlyRootFilesystem"):
            flags.append("--read-only")
        assert not sc.get("privileged"), self.component
        if sc.get("allowPrivilegeEscalation") is False:
            flags += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            flags += ["--cap-drop", cap]
        for cap in sc.get("capabilities", {}).get("add", []):
            flags += ["--cap-add", cap]
        # RuntimeDefault is the engine's default seccomp profile.
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", self.component
        volumes = {v["name"]: v for v in self.pod.get("volumes", [])}
        for mount in self.container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            assert "emptyDir" in volume, f"{self.component}: cannot map volume {volume}"
            size = volume["emptyDir"].get("sizeLimit")
            options = "rw,exec,mode=1777" + (f",size={int(quantity(size))}" if size else "")
            flags += ["--tmpfs", f"{mount['mountPath']}:{options}"]
        resources = self.container.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        if "cpu" in limits:
            flags += ["--cpus", f"{quantity(limits['cpu']):g}"]
        if "memory" in limits:
            memory = str(int(quantity(limits["memory"])))
            flags += ["--memory", memory, "--memory-swap", memory]
        if "cpu" in requests:
            flags += ["--cpu-shares", str(max(2, int(1024 * quantity(requests["cpu"]))))]
        if "memory" in requests:
            flags += ["--memory-reservation", str(int(quantity(requests["memory"])))]
        return flags

    def command(self) -> tuple[str | None, list[str]]:
        """(entrypoint, arguments): `command` replaces the entrypoint, `args` the CMD."""
        command, args = self.container.get("command"), self.container.get("args")
        if command:
            return command[0], [*command[1:], *(args or [])]
        return None, list(args or [])


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, PodSpec]:
    return {o["metadata"]["name"]: PodSpec(o["metadata"]["name"], o["spec"]["template"]["spec"],
                                           objects)
            for o in objects if o["kind"] == "Deployment"
            and o["metadata"]["name"] in ("rest", "worker", "logs")}


# -- a TCP forwarder (the listener's own way to the broker) --------------------------------

class Forwarder:
    """127.0.0.1:<port> → 127.0.0.1:<target>, both ways, for any number of connections.

    The listener's probe looks for an established connection to RABBITMQ_PORT in
    /proc/net/tcp; on the host network that table is the host's, where other programs talk
    to 5672 too. Through a port of its own, only the listener's connection counts.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.server, selectors.EVENT_READ)
        self.peers: dict[socket.socket, socket.socket] = {}
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.server:
                    client, _ = self.server.accept()
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target), 5)
                    except OSError:
                        client.close()
                        continue
                    for a, b in ((client, upstream), (upstream, client)):
                        self.peers[a] = b
                        self.selector.register(a, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = self.peers.get(sock)
                if data and other is not None:
                    try:
                        other.sendall(data)
                        continue
                    except OSError:
                        pass
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        for s in (sock, self.peers.get(sock)):
            if s is not None and s in self.peers:
                self.peers.pop(s)
                self.selector.unregister(s)
                s.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        for sock in list(self.peers):
            self._drop(sock)
        self.server.close()


# -- RabbitMQ: a user of our own, its connections, the broker's log ------------------------

@dataclass
class RabbitUser:
    vhost: str
    password: str
    name: str = field(default_factory=lambda: f"facerec-ct-{uuid.uuid4().hex[:8]}")

    def create(self) -> RabbitUser:
        rabbitmqctl("add_user", self.name, self.password)
        rabbitmqctl("set_permissions", "-p", self.vhost, self.name, ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        rabbitmqctl("delete_user", self.name)

    def connections(self) -> list[dict[str, Any]]:
        out = rabbitmqctl("list_connections", "--formatter", "json", "pid", "user",
                          "peer_port", "client_properties", "connected_at")
        return [c for c in json.loads(out or "[]") if c["user"] == self.name]

    def channels(self) -> list[dict[str, Any]]:
        out = rabbitmqctl("list_channels", "--formatter", "json", "pid", "connection", "user",
                          "consumer_count", "messages_unacknowledged")
        return [c for c in json.loads(out or "[]") if c["user"] == self.name]


def broker_logs() -> list[Path]:
    paths = sorted(Path("/var/log/rabbitmq").glob("*.log"))
    paths = [p for p in paths if not p.name.endswith("_upgrade.log")]
    assert paths, "RabbitMQ's log is not in /var/log/rabbitmq"
    return paths


class BrokerLog:
    """What the broker logs from now on, as records (a timestamped line and its continuation)."""

    def __init__(self) -> None:
        self.start = {p: p.stat().st_size for p in broker_logs()}

    def records(self) -> list[str]:
        records: list[str] = []
        for path in broker_logs():
            with path.open("rb") as f:
                f.seek(self.start.get(path, 0))
                text = f.read().decode(errors="replace")
            for line in text.splitlines():
                if re.match(r"\d{4}-\d\d-\d\d[ T]", line) or not records:
                    records.append(line)
                else:
                    records[-1] += "\n" + line
        return records


def socket_owners() -> dict[int, int]:
    """Local TCP port → owning process, for every connection to the broker's port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    owners: dict[int, int] = {}
    for line in out.splitlines():
        parts = line.split()
        local = parts[2] if len(parts) > 4 else ""
        pid = re.search(r"pid=(\d+)", line)
        if pid and ":" in local:
            owners[int(local.rsplit(":", 1)[1])] = int(pid.group(1))
    return owners


def container_of(pid: int) -> str | None:
    """The docker container id a host process runs in (its cgroup says), or None."""
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    found = re.search(r"/docker/([0-9a-f]{64})", cgroups) or re.search(
        r"docker-([0-9a-f]{64})\.scope", cgroups)
    return found.group(1) if found else None


# -- HTTP ---------------------------------------------------------------------------------

def http(method: str, url: str, data: bytes | None = None,
         timeout: float = 30) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


# -- the deployment -------------------------------------------------------------------------

@dataclass
class Container:
    name: str
    component: str
    spec: PodSpec
    env: dict[str, str]

    @property
    def http_port(self) -> int | None:
        return int(self.env["PORT"]) if self.component == "rest" else None


@dataclass
class ProbeRun:
    container: str
    component: str
    kind: str
    ok: bool
    seconds: float
    timeout: float
    output: str


class Deployment:
    """rest, workers and the listener of one test, from the dev overlay's pod specs."""

    def __init__(self, docker: Docker, specs: dict[str, PodSpec], session: str,
                 overrides: dict[str, str], artifacts: Path, user: RabbitUser,
                 forwarder: Forwarder) -> None:
        self.docker, self.specs, self.session = docker, specs, session
        self.overrides = overrides
        self.user, self.forwarder = user, forwarder
        self.artifacts = artifacts
        self.id = uuid.uuid4().hex[:6]
        self.containers: dict[str, Container] = {}

    def env_for(self, component: str, extra: dict[str, str]) -> dict[str, str]:
        env = self.specs[component].environment()
        # Only addresses and names change: the private Redis, vhost, user and ports.
        for key in self.overrides:
            assert key in env or key == "RABBITMQ_HEARTBEAT", f"{component} has no {key}"
        env.update(self.overrides)
        if component == "rest":
            assert env["HOST"] == "0.0.0.0"
            env.update(HOST="127.0.0.1", PORT=str(free_port()))
        if component == "worker":
            env["METRICS_PORT"] = str(free_port())
        env.update(extra)
        return env

    def start(self, component: str, name: str, **extra: str) -> Container:
        spec = self.specs[component]
        env = self.env_for(component, extra)
        full = f"facerec-ct-{self.session}-{self.id}-{name}"
        entrypoint, args = spec.command()
        env_flags = [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]
        self.docker("run", "--detach", "--name", full,
                    "--label", f"{LABEL}=containers", "--label", f"{LABEL}.session={self.session}",
                    *spec.run_flags(), *env_flags,
                    *(("--entrypoint", entrypoint) if entrypoint else ()), spec.image, *args)
        container = Container(full, component, spec, env)
        self.containers[name] = container
        return container

    def start_all(self, extra: dict[str, dict[str, str]], workers: int = 2) -> None:
        """rest, `workers` workers and the listener, in parallel, until all are ready."""
        self.start("rest", "rest", **extra.get("rest", {}))
        for i in range(1, workers + 1):
            self.start("worker", f"worker-{i}", **extra.get("worker", {}))
        self.start("logs", "logs", **extra.get("logs", {}))
        with ThreadPoolExecutor(len(self.containers)) as pool:
            list(pool.map(self.wait_ready, self.containers.values()))

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.containers['rest'].http_port}"

    def state(self, container: Container) -> dict[str, Any]:
        return self.docker.inspect(container.name)[0]["State"]  # type: ignore[no-any-return]

    def pid(self, container: Container) -> int:
        return int(self.state(container)["Pid"])

    def logs(self, container: Container) -> str:
        result = self.docker("logs", container.name, check=False)
        return result.stdout + result.stderr

    def probe(self, container: Container, kind: str, **env: str) -> ProbeRun:
        """Run one of the manifest's probes the way the kubelet does, and time it."""
        probe = container.spec.probes()[kind]
        timeout = float(probe.get("timeoutSeconds", 1))
        start = time.monotonic()
        if "exec" in probe:
            env_flags = [f for k, v in env.items() for f in ("--env", f"{k}={v}")]
            result = self.docker("exec", *env_flags, container.name, *probe["exec"]["command"],
                                 check=False, timeout=timeout + 30)
            ok, output = result.returncode == 0, result.stdout + result.stderr
        else:
            get = probe["httpGet"]
            port = container.spec.container_port(get["port"])
            assert port == int(container.spec.environment()["PORT"]), "probe port is PORT"
            assert container.http_port is not None
            try:
                status, body = http("GET", f"http://127.0.0.1:{container.http_port}{get['path']}",
                                    timeout=timeout + 30)
            except OSError as exc:
                status, body = 0, repr(exc)
            ok, output = 200 <= status < 400, f"{status} {body!r}"
        return ProbeRun(container.name, container.component, kind, ok,
                        time.monotonic() - start, timeout, output)

    def wait_ready(self, container: Container, timeout: float = 180) -> None:
        """Until the readiness probe passes (the kubelet would then send traffic)."""
        def ready() -> bool:
            if not self.state(container)["Running"]:
                raise AssertionError(f"{container.name} exited:\n{self.logs(container)[-3000:]}")
            return self.probe(container, "readinessProbe").ok
        wait_until(ready, timeout, f"{container.name} to be ready", interval=0.5)

    def stop(self, container: Container) -> tuple[int, float]:
        """`docker stop` with the pod's grace period: (exit code, seconds)."""
        start = time.monotonic()
        self.docker("stop", "--time", str(container.spec.grace), container.name,
                    timeout=container.spec.grace + 60)
        seconds = time.monotonic() - start
        state = self.state(container)
        assert not state["OOMKilled"], container.name
        return int(state["ExitCode"]), seconds

    def save_logs(self, prefix: str) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        for name, container in self.containers.items():
            (self.artifacts / f"{prefix}-{name}.log").write_text(self.logs(container))

    def remove(self) -> None:
        names = [c.name for c in self.containers.values()]
        if names:
            self.docker("rm", "--force", "--volumes", *names, timeout=180)


def wait_all_done(rest_url: str, hashes: set[str], timeout: float = 300) -> dict[str, Any]:
    """Every image's view, read once all of them are done (or failed).

    Read again at the end: an image done early gains matches as later ones commit.
    """
    finished: set[str] = set()

    def view(h: str) -> dict[str, Any]:
        status, body = http("GET", f"{rest_url}/image/{h}")
        return body if status == 200 else {}  # type: ignore[no-any-return]

    def done() -> bool:
        finished.update(h for h in hashes - finished
                        if view(h).get("status") in ("done", "failed"))
        return finished == hashes

    wait_until(done, timeout, f"{len(hashes)} images to be processed", interval=0.5)
    return {h: view(h) for h in hashes}


def iter_pairs(items: list[str]) -> Iterator[tuple[str, str]]:
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            yield a, b
