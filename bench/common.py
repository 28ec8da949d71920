"""Shared pieces of the benchmarks: private services, the machine, timing, tables.

Every benchmark runs against a redis-server of its own on a free port and a RabbitMQ
virtual host of its own on the machine's broker (the same helpers the tests use).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))

from facerec.settings import Settings  # noqa: E402
from tests.services import Env, RedisServer, Vhost, reset_vhost  # noqa: E402

FACES = ROOT / "tests" / "data" / "faces"


@contextlib.contextmanager
def services(vhost: bool = True, **overrides: object) -> Iterator[Env]:
    """A private redis-server (and RabbitMQ vhost); their processes stopped on exit."""
    server = RedisServer().start()
    v = Vhost().create() if vhost else None
    try:
        settings = Settings.from_env(
            {}, redis_port=server.port, rabbitmq_vhost=v.name if v else "/",
            fetch_allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), **overrides)
        if v:
            reset_vhost(settings)
        env = Env(settings, server)
        try:
            yield env
        finally:
            env.stop_all()
    finally:
        if v:
            v.delete()
        server.close()


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        commit += " + uncommitted changes"
    return {"cores": str(os.cpu_count()), "cpu": model, "memory": mem,
            "python": platform.python_version(),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB, from /proc."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "**missed**")


@dataclass
class Section:
    """One benchmark's result: markdown tables and notes, plus raw figures for the plot."""

    title: str
    command: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines += ["| " + " | ".join(header) + " |",
                       "|" + "---|" * len(header)]
        self.lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        self.lines.append("")

    def note(self, text: str) -> None:
        self.lines += [text, ""]

    def markdown(self) -> str:
        return "\n".join([f"## {self.title}", "", f"`{self.command}`", "", *self.lines])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _log_file(name: str) -> object:
    directory = ROOT / ".run" / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    return open(directory / f"{name}.log", "ab")


def start_worker(env: Env, **extra: str) -> subprocess.Popen[bytes]:
    """A worker process whose output goes to .run/bench/worker.log, not the terminal."""
    proc = subprocess.Popen([sys.executable, "-m", "worker"], cwd=ROOT,
                            env=env.environ(**extra), stdout=_log_file("worker"),
                            stderr=subprocess.STDOUT)
    env.procs.append(proc)
    return proc


def start_rest(env: Env, **extra: str) -> str:
    """rest under gunicorn (python -m rest) on a free port; output to .run/bench/rest.log."""
    import urllib.request

    from tests.services import free_port, wait_until
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rest"], cwd=ROOT,
                            env=env.environ(PORT=str(port), **extra),
                            stdout=_log_file("rest"), stderr=subprocess.STDOUT)
    env.procs.append(proc)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return proc.poll() is not None
    wait_until(up, 30, "rest to answer /healthz")
    assert proc.poll() is None, "rest exited at start-up (see .run/bench/rest.log)"
    return url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Average number of cores busy (all processes on the machine) between two readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


def main(run: Callable[[bool], Section], doc: str | None) -> None:
    """Command line of one benchmark module: `python bench/X.py [--quick]` prints its table."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick).markdown())
