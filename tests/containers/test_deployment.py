"""rest, two workers and the log listener in containers, run as the dev overlay's pod specs
say (command, environment, read-only root, uid 10001, no capabilities, /tmp tmpfs, limits,
grace periods), on private ports with a private Redis and a private RabbitMQ vhost.

Each test starts its own deployment and removes it afterwards (logs are kept in
.run/containers/logs/).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from tests.containers.conftest import Deploy, report, upload_name, variant_bytes
from tests.containers.harness import (
    LABEL,
    BrokerLog,
    Deployment,
    ProbeRun,
    container_of,
    http,
    iter_pairs,
    socket_owners,
    wait_all_done,
)
from tests.services import Photo, free_port, wait_until

pytestmark = pytest.mark.timeout(420, func_only=True)

# What a worker, rest or the listener must never print on start or while working.
TROUBLE = re.compile(r"\bERROR\b|\bCRITICAL\b|Traceback|Read-only file system|Errno \d+|"
                     r"Control server", re.I)
# Modules a liveness check has no business loading.
HEAVY = {"numpy", "dlib", "_dlib_pybind11", "face_recognition", "face_recognition_models",
         "PIL"}


Item = tuple[str, bytes, frozenset[str]]  # upload name, bytes, identities


def items(photos: list[Photo], variants: range | list[int]) -> list[Item]:
    """Uploads of the photos and of re-encoded copies of them (variant 1, 2, …).

    A copy shows the same faces as its photo: they share the photo's identities and, for
    the unnamed faces labels.csv leaves out, the photo itself.
    """
    return [(upload_name(p, v), variant_bytes(p, v) if v else p.data,
             p.identities | {f"photo:{p.path}"})
            for v in variants for p in photos]


def scan(d: Deployment, item: Item) -> str:
    status, body = http("POST", f"{d.rest_url}/scan/image/{item[0]}", data=item[1])
    assert status == 200, (item[0], status, body)
    return str(body["hash"])


def scan_all(d: Deployment, batch: list[Item], threads: int = 4) -> dict[str, Item]:
    with ThreadPoolExecutor(threads) as pool:
        hashes = list(pool.map(lambda item: scan(d, item), batch))
    return dict(zip(hashes, batch, strict=True))


def pair_mistakes(views: dict[str, Any], scanned: dict[str, Item]) -> tuple[int, list[str]]:
    """(decisions, wrong ones): two images share an identity ⇔ each lists the other."""
    mistakes, decisions = [], 0
    matches = {h: {m["hash"] for m in v["matches"]} for h, v in views.items()}
    for a, b in iter_pairs(sorted(scanned)):
        decisions += 1
        expected = bool(scanned[a][2] & scanned[b][2])
        if (b in matches[a]) != expected or (a in matches[b]) != expected:
            mistakes.append(f"{scanned[a][0]} / {scanned[b][0]}: expected "
                            f"{'match' if expected else 'no match'}, got "
                            f"{b in matches[a]} / {a in matches[b]}")
    return decisions, mistakes


def assert_processed_once(views: dict[str, Any], scanned: dict[str, Item],
                          meta: redis.Redis) -> None:
    from facerec.store import image_key

    for h, (name, _, _) in scanned.items():
        assert views[h]["status"] == "done", (name, views[h])
        assert name in views[h]["names"], (name, views[h]["names"])
        scans = meta.hget(image_key(h), "scans")
        assert scans == "1", f"{name} counted {scans} times"


def metric(port: int, name: str) -> float:
    status, text = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    raw = text.decode() if isinstance(text, bytes) else str(text)
    samples = [float(line.split()[-1]) for line in raw.splitlines()
               if line.startswith(name) and not line.startswith("#")]
    assert samples, f"no {name} in the metrics"
    return sum(samples)


# -- start, work, probes -------------------------------------------------------------------------

def test_rest_workers_and_listener_start_on_a_read_only_root_and_log_no_error(
        deploy: Deploy, shared_photos: list[Photo]) -> None:
    d = deploy()
    scanned = scan_all(d, items(shared_photos[:4], [0]))
    wait_all_done(d.rest_url, set(scanned))
    wait_until(lambda: ".worker." in d.logs(d.containers["logs"]), 30,
               "the listener to print the workers' log messages")
    for name, container in d.containers.items():
        trouble = [line for line in d.logs(container).splitlines() if TROUBLE.search(line)]
        assert not trouble, f"{name} logged:\n" + "\n".join(trouble[:20])


def test_the_26_shared_photos_give_every_pair_decision_right(
        deploy: Deploy, shared_photos: list[Photo], meta: redis.Redis) -> None:
    d = deploy()
    start = time.monotonic()
    scanned = scan_all(d, items(shared_photos, [0]))
    views = wait_all_done(d.rest_url, set(scanned))
    seconds = time.monotonic() - start
    assert_processed_once(views, scanned, meta)
    decisions, mistakes = pair_mistakes(views, scanned)
    assert decisions == 325
    assert not mistakes, "\n".join(mistakes)
    report(f"26 photos through rest + 2 workers in containers: {seconds:.1f} s, "
           f"325/325 pair decisions right")


def probe_table(runs: list[tuple[str, ProbeRun]]) -> list[str]:
    grouped: dict[tuple[str, str, str], list[ProbeRun]] = defaultdict(list)
    for phase, run in runs:
        grouped[(run.component, run.kind, phase)].append(run)
    lines = [f"{'container':<9} {'probe':<15} {'phase':<5} {'runs':>4} {'median s':>9} "
             f"{'max s':>6} {'timeout s':>9}"]
    for (component, kind, phase), group in sorted(grouped.items()):
        times = [r.seconds for r in group]
        lines.append(f"{component:<9} {kind:<15} {phase:<5} {len(times):>4} "
                     f"{statistics.median(times):>9.3f} {max(times):>6.3f} "
                     f"{group[0].timeout:>9.0f}")
    return lines


def test_every_probe_of_the_manifests_passes_inside_its_container_within_its_timeout(
        deploy: Deploy, shared_photos: list[Photo]) -> None:
    d = deploy()
    runs: list[tuple[str, ProbeRun]] = []
    for _ in range(3):
        for container in d.containers.values():
            for kind in container.spec.probes():
                runs.append(("idle", d.probe(container, kind)))
    scanned = scan_all(d, items(shared_photos, [0, 1]))
    for _ in range(3):  # while the workers process the 52 images
        for container in d.containers.values():
            for kind in container.spec.probes():
                runs.append(("load", d.probe(container, kind)))
    wait_all_done(d.rest_url, set(scanned))
    report("probes, run as the kubelet runs them (exec: docker exec; httpGet: GET):")
    for line in probe_table(runs):
        report(f"  {line}")
    failed = [r for _, r in runs if not r.ok or r.seconds >= r.timeout]
    assert not failed, "\n".join(f"{r.container} {r.kind}: ok={r.ok} {r.seconds:.2f}s "
                                 f"(timeout {r.timeout:.0f}s) {r.output[-500:]}" for r in failed)
    # The probes can fail: a worker whose heartbeat file is missing, a listener whose
    # broker port has no connection.
    worker = d.containers["worker-1"]
    assert not d.probe(worker, "livenessProbe", WORKER_HEARTBEAT_FILE="/tmp/absent").ok
    logs = d.containers["logs"]
    assert not d.probe(logs, "livenessProbe", RABBITMQ_PORT=str(free_port())).ok


def test_the_worker_liveness_check_reads_its_heartbeat_without_loading_numpy_or_dlib(
        deploy: Deploy) -> None:
    d = deploy(workers=1)
    worker = d.containers["worker-1"]
    result = d.docker("exec", worker.name, "python", "-X", "importtime", "-m", "worker",
                      "--check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    imported: dict[str, int] = {}
    for line in result.stderr.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if found:
            imported[found.group(3)] = int(found.group(1))
    assert imported, result.stderr[-2000:]
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY)
    total = sum(us for name, us in imported.items() if "." not in name) / 1e6
    report(f"worker --check: {len(imported)} modules, {total:.2f} s of imports; "
           f"heavy: {heavy or 'none'}")
    assert not heavy, f"python -m worker --check imports {heavy}"


# -- connections -------------------------------------------------------------------------------

HEARTBEAT = 4  # seconds: RABBITMQ_HEARTBEAT for this test (the default is 30)


def connections_by_container(d: Deployment) -> dict[str, str]:
    """Broker connection pid → which of our containers holds it."""
    owners = socket_owners()
    names = {d.docker.inspect(c.name)[0]["Id"]: name for name, c in d.containers.items()}
    found: dict[str, str] = {}
    for conn in d.user.connections():
        pid = owners.get(int(conn["peer_port"]))
        if pid is None:
            continue
        container = container_of(pid)
        # The listener reaches the broker through the test's forwarder (this process).
        found[conn["pid"]] = names.get(container or "", "logs (via the forwarder)")
    return found


def test_idle_connections_keep_their_heartbeats_and_the_next_request_reuses_them(
        deploy: Deploy, shared_photos: list[Photo]) -> None:
    d = deploy(heartbeat=HEARTBEAT)
    log = BrokerLog()
    first = scan_all(d, items(shared_photos[:4], [0]), threads=2)
    wait_all_done(d.rest_url, set(first))
    before = connections_by_container(d)
    holders = set(before.values())
    assert {"rest", "worker-1", "worker-2"} <= holders, before
    time.sleep(6 * HEARTBEAT)  # idle: nothing published, nothing consumed
    after_idle = connections_by_container(d)
    second = scan_all(d, items(shared_photos[4:6], [0]), threads=1)
    wait_all_done(d.rest_url, set(second))
    after_use = connections_by_container(d)
    # rabbitmqctl shows a connection as #PID<node.N.S>, the broker's log as <0.N.S>.
    ours = {re.sub(r"^#PID<\d+\.", "<0.", pid)
            for pid in set(before) | set(after_idle) | set(after_use)}
    missed = [r for r in log.records() if "missed heartbeats" in r
              and (any(pid in r for pid in ours) or d.user.name in r)]
    dropped = {pid: who for pid, who in before.items() if pid not in after_use}
    report(f"heartbeat {HEARTBEAT} s, idle {6 * HEARTBEAT} s: {len(before)} connections "
           f"({', '.join(sorted(holders))}); dropped {len(dropped)}; broker 'missed "
           f"heartbeats' lines: {len(missed)}")
    assert not missed, "the broker dropped idle connections:\n" + "\n".join(missed)
    assert not dropped, f"connections closed while idle or reopened for the next request: {dropped}"


# -- docker stop, mid-work ----------------------------------------------------------------------

def stop_line(what: str, code: int, seconds: float, grace: int) -> str:
    return f"docker stop {what:<22} exit {code:>3}  {seconds:6.2f} s  (grace {grace} s)"


def test_docker_stop_lets_a_busy_worker_finish_its_image_and_exit_0(
        deploy: Deploy, shared_photos: list[Photo], meta: redis.Redis) -> None:
    d = deploy()
    scanned = scan_all(d, items(shared_photos, [0, 1]))
    worker, other = d.containers["worker-1"], d.containers["worker-2"]

    def both_busy() -> bool:
        busy = [c for c in d.user.channels()
                if c["consumer_count"] >= 1 and c["messages_unacknowledged"] >= 1]
        return len(busy) == 2
    wait_until(both_busy, 60, "both workers to hold an image", interval=0.2)
    code, seconds = d.stop(worker)
    report(stop_line("worker (mid-image)", code, seconds, worker.spec.grace))
    assert code == 0, d.logs(worker)[-3000:]
    assert seconds < worker.spec.grace
    views = wait_all_done(d.rest_url, set(scanned))
    assert_processed_once(views, scanned, meta)
    # The image the stopped worker held was finished and acknowledged by it, not redelivered.
    assert metric(int(other.env["METRICS_PORT"]), "facerec_redeliveries_total") == 0
    decisions, mistakes = pair_mistakes(views, scanned)
    assert decisions == 52 * 51 // 2 and not mistakes, "\n".join(mistakes)


def test_docker_stop_of_rest_mid_upload_loses_no_accepted_image(
        deploy: Deploy, shared_photos: list[Photo], meta: redis.Redis) -> None:
    d = deploy()
    rest = d.containers["rest"]
    pending = items(shared_photos, [1, 2, 3])
    lock = threading.Lock()
    accepted: dict[str, Item] = {}
    refused_after_stop: list[str] = []
    stopping = threading.Event()

    def upload() -> None:
        while True:
            with lock:
                if not pending:
                    return
                item = pending.pop(0)
            try:
                status, body = http("POST", f"{d.rest_url}/scan/image/{item[0]}", data=item[1],
                                    timeout=30)
            except OSError:
                status, body = 0, None
            with lock:
                if status == 200:
                    accepted[str(body["hash"])] = item
                elif stopping.is_set():
                    refused_after_stop.append(item[0])
            time.sleep(0.05)

    threads = [threading.Thread(target=upload) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: len(accepted) >= 8, 60, "8 uploads to be accepted")
    stopping.set()
    code, seconds = d.stop(rest)
    for t in threads:
        t.join(120)
    report(stop_line("rest (mid-upload)", code, seconds, rest.spec.grace))
    assert code == 0, d.logs(rest)[-3000:]
    assert seconds < rest.spec.grace
    assert refused_after_stop, "the uploads ended before rest stopped: not a mid-upload stop"
    # Everything rest answered with a hash is processed (rest restarted only to ask).
    d.docker("start", rest.name)
    d.wait_ready(rest)
    views = wait_all_done(d.rest_url, set(accepted))
    assert_processed_once(views, accepted, meta)


def timed_stop(d: Deployment, name: str) -> float:
    start = time.monotonic()
    d.docker("stop", "--time", "30", name)
    return time.monotonic() - start


SIGTERM_EXITS = ("import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
                 "time.sleep(600)\n")


def test_docker_stop_ends_the_log_listener_within_a_second_with_exit_0(
        deploy: Deploy, shared_photos: list[Photo]) -> None:
    d = deploy(workers=1)
    logs = d.containers["logs"]
    # What `docker stop` itself costs here and now: a process that exits at once on SIGTERM,
    # in the same image with the listener's flags (its CPU limit included).
    control = f"{logs.name}-control"
    d.docker("run", "--detach", "--name", control, "--label", f"{LABEL}=containers",
             "--label", f"{LABEL}.session={d.session}", *logs.spec.run_flags(),
             "--entrypoint", "python", logs.spec.image, "-c", SIGTERM_EXITS)
    try:
        scanned = scan_all(d, items(shared_photos[:8], [0]))
        wait_until(lambda: ".worker." in d.logs(logs), 30, "the listener to print worker lines")
        # Both at once (the worker still busy with the batch), so both see the same load.
        with ThreadPoolExecutor(2) as pool:
            bare = pool.submit(timed_stop, d, control)
            code, seconds = d.stop(logs)
            baseline = bare.result()
    finally:
        d.docker("rm", "--force", control)
    report(stop_line("logs (while printing)", code, seconds, logs.spec.grace)
           + f"; a bare SIGTERM exit: {baseline:.2f} s")
    assert code == 0, f"exit {code} after {seconds:.1f} s:\n{d.logs(logs)[-2000:]}"
    assert seconds - baseline < 1.0, (
        f"the listener took {seconds:.2f} s to stop ({baseline:.2f} s for a bare exit)")
    wait_all_done(d.rest_url, set(scanned))
