"""deploy-local-dev.sh against a fake kubectl that records its calls (no cluster here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy-local-dev.sh"
NAMESPACE = ["--namespace", "facerec-dev"]

# The fake kubectl: records argv (one JSON list per line), then acts like kubectl would.
# Behaviour is steered by FAKE_KUBECTL_* variables. A port-forward prints kubectl's
# "Forwarding from" lines and sleeps, like the real one; it stays a process whose command
# line says "kubectl ... port-forward", as the real one does.
FAKE_KUBECTL = r'''#!{python}
import json, os, sys, time
args = sys.argv[1:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
def fails(what):
    return what in os.environ.get("FAKE_KUBECTL_FAIL", "").split(",")
words = [a for a in args if not a.startswith("-")]
if args[:2] == ["config", "current-context"]:
    context = os.environ.get("FAKE_KUBECTL_CONTEXT", "kind-facerec")
    if not context:
        sys.exit("error: current-context is not set")
    print(context)
elif "--raw=/readyz" in args:
    if fails("readyz"):
        sys.exit("The connection to the server 127.0.0.1:6443 was refused")
    print("ok")
elif "apply" in args:
    print("namespace/facerec-dev unchanged")
elif "rollout" in args:
    target = words[words.index("status") + 1]
    if fails(target):
        sys.exit("error: timed out waiting for the condition")
    print(f'{target} successfully rolled out')
elif "port-forward" in args:
    target = words[words.index("port-forward") + 1]
    if fails(target):
        sys.exit("Unable to listen on port 5672: address already in use")
    for mapping in words[words.index(target) + 1:]:
        local, remote = mapping.split(":")
        print(f"Forwarding from 127.0.0.1:{local} -> {remote}", flush=True)
    time.sleep(300)
elif "secret" in args:
    key = args[-1].split(chr(34))[1]
    print(f"fake-{words[words.index('secret') + 1]}-{key}", end="")
else:
    sys.exit(f"fake kubectl: unexpected call {args}")
'''


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_dead(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


class Harness:
    """A fake kubectl on PATH, a private run directory, and the script's processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        kubectl = self.bin / "kubectl"
        kubectl.write_text(FAKE_KUBECTL.replace("{python}", sys.executable))
        kubectl.chmod(0o755)
        self.log = tmp_path / "kubectl-calls.jsonl"
        self.run_dir = tmp_path / "run"
        self.env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_KUBECTL_LOG": str(self.log),
            "FACEREC_RUN_DIR": str(self.run_dir),
            "FACEREC_ROLLOUT_TIMEOUT": "7s",
        }
        self.extra: list[subprocess.Popen[bytes]] = []

    def run(self, *args: str, **env: str) -> Run:
        result = subprocess.run(
            ["bash", str(SCRIPT), *args], env={**self.env, **env}, capture_output=True,
            text=True, timeout=25, check=False, stdin=subprocess.DEVNULL,
        )
        return Run(result.returncode, result.stdout, result.stderr)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def forward_pids(self) -> dict[str, int]:
        """Live fake port-forwards, by target, from the process table (not the script)."""
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            if str(self.bin / "kubectl") in argv and "port-forward" in argv and alive(
                    int(proc.name)):
                found[argv[argv.index("port-forward") + 1]] = int(proc.name)
        return found

    def start_unrelated(self, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), env=self.env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        self.extra.append(proc)
        return proc

    def cleanup(self) -> None:
        for pid in self.forward_pids().values():
            os.kill(pid, 9)
        for proc in self.extra:
            proc.kill()
            proc.wait()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.cleanup()


def without(calls: list[list[str]], *flags: str) -> list[list[str]]:
    return [[a for a in call if a not in flags] for call in calls]


# --- tests -------------------------------------------------------------------------------


def test_shellcheck_passes_on_the_script() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: apt-get install shellcheck")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout


def test_script_is_executable_and_says_how_to_use_it(harness: Harness) -> None:
    assert os.access(SCRIPT, os.X_OK)
    result = harness.run("--help")
    assert result.returncode == 0 and "--stop" in result.stdout
    wrong = harness.run("--everything")
    assert wrong.returncode == 2 and "Usage" in wrong.stderr
    assert not harness.calls()


def test_default_deploys_redis_and_rabbitmq_waits_and_forwards_their_ports(
    harness: Harness,
) -> None:
    result = harness.run()
    assert result.returncode == 0, result.stderr
    calls = harness.calls()
    applies = [c for c in calls if "apply" in c]
    assert applies == [["apply", "-k", str(REPO / "deploy/overlays/dev-infra")]]
    rollouts = [c for c in calls if "rollout" in c]
    assert without(rollouts, "--timeout=7s") == [
        [*NAMESPACE, "rollout", "status", "deployment/redis"],
        [*NAMESPACE, "rollout", "status", "statefulset/rabbitmq"],
    ]
    forwards = [c for c in calls if "port-forward" in c]
    assert forwards == [
        [*NAMESPACE, "port-forward", "svc/redis", "6379:6379"],
        [*NAMESPACE, "port-forward", "svc/rabbitmq", "5672:5672", "15672:15672"],
    ]
    order = [next(i for i, c in enumerate(calls) if c == x)
             for x in (applies[0], rollouts[-1], forwards[0])]
    assert order == sorted(order), "apply, then wait, then forward"
    assert set(harness.forward_pids()) == {"svc/redis", "svc/rabbitmq"}
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in result.stdout.splitlines())
    assert exports == {
        "REDIS_HOST": "localhost", "REDIS_PORT": "6379",
        "REDIS_PASSWORD": "fake-facerec-redis-password",
        "RABBITMQ_HOST": "localhost", "RABBITMQ_PORT": "5672",
        "RABBITMQ_USER": "fake-facerec-rabbitmq-username",
        "RABBITMQ_PASSWORD": "fake-facerec-rabbitmq-password", "RABBITMQ_VHOST": "/",
    }
    assert "kind-facerec" in result.stderr  # it says which cluster it touched


def test_all_deploys_everything_and_forwards_rest_to_port_5000(harness: Harness) -> None:
    result = harness.run("--all")
    assert result.returncode == 0, result.stderr
    calls = harness.calls()
    assert [c for c in calls if "apply" in c] == [
        ["apply", "-k", str(REPO / "deploy/overlays/dev")]]
    waited = [c[c.index("status") + 1] for c in calls if "rollout" in c]
    assert waited == ["deployment/redis", "statefulset/rabbitmq", "deployment/rest",
                      "deployment/worker", "deployment/logs"]
    assert [*NAMESPACE, "port-forward", "svc/rest", "5000:80"] in calls
    assert set(harness.forward_pids()) == {"svc/redis", "svc/rabbitmq", "svc/rest"}


def test_running_again_leaves_one_fresh_set_of_port_forwards(harness: Harness) -> None:
    assert harness.run().returncode == 0
    first = harness.forward_pids()
    second_run = harness.run()
    assert second_run.returncode == 0, second_run.stderr
    second = harness.forward_pids()
    assert set(second) == {"svc/redis", "svc/rabbitmq"}
    assert not set(first.values()) & set(second.values())
    assert all(wait_dead(pid) for pid in first.values())
    applies = [c for c in harness.calls() if "apply" in c]
    assert len(applies) == 2 and applies[0] == applies[1]


def test_stop_ends_exactly_the_port_forwards_it_started(harness: Harness) -> None:
    assert harness.run().returncode == 0
    ours = harness.forward_pids()
    # Someone else's port-forward (same kubectl, same service) and an unrelated process.
    theirs = harness.start_unrelated(str(harness.bin / "kubectl"), *NAMESPACE, "port-forward",
                                     "svc/redis", "16379:6379")
    sleeper = harness.start_unrelated("sleep", "300")
    time.sleep(0.3)
    result = harness.run("--stop")
    assert result.returncode == 0, result.stderr
    assert all(wait_dead(pid) for pid in ours.values())
    assert theirs.poll() is None and alive(theirs.pid)
    assert sleeper.poll() is None and alive(sleeper.pid)
    assert "no port-forwards to stop" in harness.run("--stop").stderr


def test_stop_spares_a_process_that_reused_a_recorded_pid(harness: Harness) -> None:
    sleeper = harness.start_unrelated("sleep", "300")
    harness.run_dir.mkdir()
    (harness.run_dir / "port-forwards.pids").write_text(f"{sleeper.pid} svc/redis\n")
    result = harness.run("--stop")
    assert result.returncode == 0, result.stderr
    time.sleep(0.2)
    assert sleeper.poll() is None


def test_stop_works_without_kubectl_or_a_cluster(harness: Harness, tmp_path: Path) -> None:
    assert harness.run().returncode == 0
    ours = harness.forward_pids()
    (harness.bin / "kubectl").rename(tmp_path / "kubectl.away")
    result = harness.run("--stop", PATH=path_without_kubectl(tmp_path))
    assert result.returncode == 0, result.stderr
    assert all(wait_dead(pid) for pid in ours.values())


def path_without_kubectl(tmp_path: Path) -> str:
    """A PATH with every tool of this machine except kubectl."""
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/bin"]:
        if not os.path.isdir(directory) or Path(directory) == tmp_path / "bin":
            continue
        for entry in os.scandir(directory):
            target = tools / entry.name
            if entry.name != "kubectl" and not target.exists() and not target.is_symlink():
                target.symlink_to(entry.path)
    return str(tools)


def test_missing_kubectl_is_reported_plainly(harness: Harness, tmp_path: Path) -> None:
    result = harness.run(PATH=path_without_kubectl(tmp_path))
    assert result.returncode != 0
    assert "kubectl is not installed" in result.stderr
    assert not harness.calls()


def test_missing_context_is_reported_plainly_and_nothing_is_applied(harness: Harness) -> None:
    result = harness.run(FAKE_KUBECTL_CONTEXT="")
    assert result.returncode != 0
    assert "no current context" in result.stderr and "use-context" in result.stderr
    assert not [c for c in harness.calls() if "apply" in c]


def test_unreachable_cluster_is_reported_plainly_and_nothing_is_applied(
    harness: Harness,
) -> None:
    result = harness.run(FAKE_KUBECTL_FAIL="readyz")
    assert result.returncode != 0
    assert "does not answer" in result.stderr and "kind-facerec" in result.stderr
    assert not [c for c in harness.calls() if "apply" in c]


def test_rollout_timeout_is_reported_and_no_port_forward_is_started(harness: Harness) -> None:
    result = harness.run(FAKE_KUBECTL_FAIL="statefulset/rabbitmq")
    assert result.returncode != 0
    assert "statefulset/rabbitmq did not become ready within 7s" in result.stderr
    assert not [c for c in harness.calls() if "port-forward" in c]
    assert not harness.forward_pids()


def test_failed_port_forward_ends_the_ones_already_started(harness: Harness) -> None:
    result = harness.run(FAKE_KUBECTL_FAIL="svc/rabbitmq")
    assert result.returncode != 0
    assert "address already in use" in result.stderr
    assert next(c for c in harness.calls() if "port-forward" in c)[3] == "svc/redis"
    deadline = time.monotonic() + 5
    while harness.forward_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not harness.forward_pids(), "an orphaned port-forward was left behind"
    assert not (harness.run_dir / "port-forwards.pids").exists()
