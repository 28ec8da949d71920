"""Faults with real processes, killed and restarted for real.

Everything here runs against a RabbitMQ node of its own (started for this module, so
`rabbitmqctl stop_app` cannot disturb anyone else's tests) and a redis-server of its own
with AOF. Each test ends with `assert_consistent`: the invariants of the four databases,
and the same databases as a run of the same photos without any fault.

Faults inside a worker come from the hook tests/fault_worker.py installs in the pipeline
(FACEREC_FAULT, FACEREC_FAULT_NAME); everything else is done from outside: kill -9,
rabbitmqctl stop_app/start_app, redis-server killed and restarted.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from facerec import broker as amqp
from facerec.deadletters import list_dead
from facerec.messages import ImageMessage, sha256_hex
from facerec.settings import DELIVERY_CEILING, Settings
from facerec.store import (
    FACE_BYTES,
    FACE_LOG,
    HASH_TO_ENCODINGS,
    HASH_TO_MATCHES,
    HASH_TO_NAMES,
    META,
    NAME_TO_HASH,
    image_key,
)
from tests import fault_worker
from tests.services import (
    FACES,
    ROOT,
    Env,
    PrivateRabbit,
    RedisServer,
    http,
    image_server,
    publish_raw,
    reset_vhost,
    wait_until,
)

# A client's deadline for an answer while a dependency is down: an error answer in time.
FAIL_FAST = 10

# A handful of the shared photos: three of Obama, Kit and Rose alone and together, and
# Biden, who matches none of them. Small files, to keep the module fast.
PHOTOS = ("obama/obama_small.jpg", "obama/obama-240p.jpg", "obama/obama1.jpg",
          "kit_harington/john2.jpeg", "rose_leslie/img1.jpg", "groups/kit_with_rose.jpg",
          "biden/biden2.jpg")
EXPECTED_PAIRS = {frozenset(p) for p in (
    ("obama/obama_small.jpg", "obama/obama-240p.jpg"),
    ("obama/obama_small.jpg", "obama/obama1.jpg"),
    ("obama/obama-240p.jpg", "obama/obama1.jpg"),
    ("kit_harington/john2.jpeg", "groups/kit_with_rose.jpg"),
    ("rose_leslie/img1.jpg", "groups/kit_with_rose.jpg"))}


def data(path: str) -> bytes:
    return (FACES / path).read_bytes()


def hash_of(path: str) -> str:
    return sha256_hex(data(path))


def plain_image(i: int) -> bytes:
    """A small faceless PNG, different for every i."""
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (i * 7 % 256, 90, 255 - i * 11 % 256)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def rabbit() -> Iterator[PrivateRabbit]:
    node = PrivateRabbit()
    try:
        yield node.start()
    finally:
        node.stop()


@pytest.fixture(scope="module")
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


@pytest.fixture
def fenv(rabbit: PrivateRabbit, aof_redis: RedisServer) -> Iterator[Env]:
    """Empty databases and queues on the private services; processes stopped after."""
    if aof_redis.proc is None or aof_redis.proc.poll() is not None:
        aof_redis.start()  # a previous test left it stopped
    settings = Settings.from_env({}, redis_port=aof_redis.port, rabbitmq_port=rabbit.port,
                                 rabbitmq_vhost="/")
    aof_redis.flush()
    reset_vhost(settings)
    env = Env(settings, aof_redis)
    yield env
    env.stop_all()


# -- the run without faults, and the checks every test ends with --------------------------

@dataclass(frozen=True)
class Baseline:
    dbs: dict[int, dict[str, object]]


@pytest.fixture(scope="session")
def baseline() -> Iterator[Baseline]:
    """The databases after processing PHOTOS with no fault: once, in this process."""
    from facerec import faces
    from facerec.pipeline import Processor
    from facerec.store import Store

    server = RedisServer().start()
    try:
        settings = Settings.from_env({}, redis_port=server.port)
        store = Store(settings)
        processor = Processor(settings, store)
        faces.load_models()
        processor.load_index()
        for path in PHOTOS:
            processor.process(ImageMessage.for_image(data(path), path, "upload"))
        store.close()
        dbs = {db: server.dump(db) for db in (NAME_TO_HASH, HASH_TO_NAMES, HASH_TO_MATCHES)}
        dbs[HASH_TO_ENCODINGS] = {h: len(v) for h, v in server.dump(HASH_TO_ENCODINGS).items()}
        # The reference itself must be right, or comparing with it proves nothing.
        by_hash = {hash_of(p): p for p in PHOTOS}
        pairs = {frozenset((by_hash[h], by_hash[o.decode()]))
                 for h, others in dbs[HASH_TO_MATCHES].items() for o in others}
        assert pairs == EXPECTED_PAIRS
        yield Baseline(dbs)
    finally:
        server.close()


def assert_invariants(env: Env) -> None:
    """Every name points to a hash that lists it; every match is symmetric, between two
    processed images, never an image with itself; every processed image has its
    encodings, its names, and was counted once."""
    names = env.redis.client(NAME_TO_HASH)
    image_names = env.redis.client(HASH_TO_NAMES)
    encodings = env.redis.client(HASH_TO_ENCODINGS, decode=False)
    matches = env.redis.client(HASH_TO_MATCHES)
    meta = env.redis.client(META)
    done = {h for h, status in env.statuses().items() if status == "done"}
    for name in names.scan_iter():
        h = names.get(name)
        assert image_names.sismember(h, name), f"{name!r} -> {h}, whose names lack it"
    for h in image_names.scan_iter():
        assert h in done, f"database 2 lists unprocessed image {h}"
        for name in image_names.smembers(h):
            assert names.get(name) == h, f"{h} lists {name!r}, which points elsewhere"
    for h in matches.scan_iter():
        others = matches.smembers(h)
        assert h not in others, f"{h} matches itself"
        assert h in done and others <= done, f"a match of {h} is not a processed image"
        for o in others:
            assert matches.sismember(o, h), f"{h} -> {o} is not symmetric"
    for h in done:
        blob = encodings.get(h)
        assert blob is not None and len(blob) % FACE_BYTES == 0, f"{h} has no encodings"
        assert image_names.scard(h) >= 1, f"{h} has no name"
        assert meta.hget(image_key(h), "scans") == "1", f"{h} was counted more than once"
    log = meta.lrange(FACE_LOG, 0, -1)
    assert len(log) == len(set(log)), "an image entered the face log twice"
    assert set(log) == {h for h in done if encodings.strlen(h) > 0}


def assert_consistent(env: Env, baseline: Baseline) -> None:
    """The invariants, then the same databases as the run without a fault (for the
    photos; other images a test added may only add names and faceless entries)."""
    assert_invariants(env)
    assert env.redis.dump(HASH_TO_MATCHES) == baseline.dbs[HASH_TO_MATCHES]
    for db in (NAME_TO_HASH, HASH_TO_NAMES):
        dump = env.redis.dump(db)
        assert {k: dump.get(k) for k in baseline.dbs[db]} == baseline.dbs[db]
    sizes = {h: len(v) for h, v in env.redis.dump(HASH_TO_ENCODINGS).items()}
    assert {h: sizes.get(h) for h in baseline.dbs[HASH_TO_ENCODINGS]} == \
        baseline.dbs[HASH_TO_ENCODINGS]


# -- helpers --------------------------------------------------------------------------

@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def faults(self) -> int:
        return self.output().count(fault_worker.MARK)


def start_worker(env: Env, tmp_path: Path, **extra: str) -> Worker:
    """A worker process whose stdout and stderr go to a file the test can read; with
    FACEREC_FAULT in `extra`, the worker of tests/fault_worker.py."""
    log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
    module = "tests.fault_worker" if "FACEREC_FAULT" in extra else "worker"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT,
                                env=env.environ(**extra), stdout=out, stderr=subprocess.STDOUT)
    env.procs.append(proc)
    return Worker(proc, log)


def publish(env: Env, paths: tuple[str, ...] = PHOTOS) -> set[str]:
    broker = env.broker()
    try:
        for path in paths:
            broker.publish_image(ImageMessage.for_image(data(path), path, "upload"))
    finally:
        broker.close()
    return {hash_of(p) for p in paths}


def publish_one(env: Env, body: bytes, name: str) -> None:
    broker = env.broker()
    try:
        broker.publish_image(ImageMessage.for_image(body, name, "upload"))
    finally:
        broker.close()


def scans(env: Env, image_hash: str) -> str | None:
    return env.redis.client(META).hget(image_key(image_hash), "scans")


def all_photos_done(env: Env) -> set[str]:
    hashes = {hash_of(p) for p in PHOTOS}
    env.wait_processed(hashes, timeout=300)
    assert {env.statuses()[h] for h in hashes} == {"done"}
    wait_until(lambda: env.queue_depth() == 0, 30, "the queue to drain")
    return hashes


# -- the tests --------------------------------------------------------------------------

def test_a_worker_killed_mid_image_before_its_commit_loses_nothing(
        fenv: Env, baseline: Baseline, tmp_path: Path) -> None:
    target = "groups/kit_with_rose.jpg"
    publish(fenv, (target,))
    publish(fenv, tuple(p for p in PHOTOS if p != target))
    # The first worker detects the faces, then sleeps just before committing: kill -9 then.
    first = start_worker(fenv, tmp_path, FACEREC_FAULT="slow=600", FACEREC_FAULT_NAME=target)
    wait_until(lambda: first.faults() == 1, 120, "the worker to reach the commit")
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(30) == -signal.SIGKILL
    assert hash_of(target) not in fenv.statuses()  # nothing of it committed
    # The broker gives the unacknowledged message to the next worker.
    second = start_worker(fenv, tmp_path)
    all_photos_done(fenv)
    assert second.proc.poll() is None
    assert fenv.queue_depth(amqp.DEAD_QUEUE) == 0
    assert_consistent(fenv, baseline)


def test_a_worker_killed_after_its_commit_before_its_ack_counts_nothing_twice(
        fenv: Env, baseline: Baseline, tmp_path: Path) -> None:
    target = "obama/obama1.jpg"
    publish(fenv, (target,))
    publish(fenv, tuple(p for p in PHOTOS if p != target))
    first = start_worker(fenv, tmp_path, FACEREC_FAULT="crash_after_commit",
                         FACEREC_FAULT_NAME=target)
    assert first.proc.wait(120) == 137, first.output()
    # Committed, but never acknowledged: the message is back in the queue.
    assert fenv.statuses()[hash_of(target)] == "done"
    wait_until(lambda: fenv.queue_depth() == len(PHOTOS), 30, "the message to be returned")
    second = start_worker(fenv, tmp_path)
    all_photos_done(fenv)
    assert f"image {hash_of(target)} already processed" in second.output()
    assert scans(fenv, hash_of(target)) == "1"
    assert fenv.queue_depth(amqp.DEAD_QUEUE) == 0
    assert_consistent(fenv, baseline)


def test_twenty_images_posted_while_no_worker_runs_are_all_processed_once_workers_start(
        fenv: Env, baseline: Baseline, tmp_path: Path) -> None:
    rest = fenv.start_rest()
    extra = {f"plain/{i}.png": plain_image(i) for i in range(20 - len(PHOTOS))}
    posted = {p: data(p) for p in PHOTOS} | extra
    assert len(posted) == 20
    hashes = set()
    for name, body in posted.items():
        reply = http("POST", f"{rest}/scan/image/{name}", body)
        assert reply.status == 200, reply.body
        hashes.add(reply.body["hash"])
    assert len(hashes) == 20
    assert fenv.queue_depth() == 20
    assert set(fenv.statuses().values()) == {"queued"}
    for _ in range(2):
        start_worker(fenv, tmp_path)
    fenv.wait_processed(hashes, timeout=300)
    assert set(fenv.statuses().values()) == {"done"}
    wait_until(lambda: fenv.queue_depth() == 0, 30, "the queue to drain")
    assert_consistent(fenv, baseline)


@pytest.mark.timeout(600)
def test_with_rabbitmq_stopped_scans_fail_fast_matches_answer_and_all_recovers_alone(
        fenv: Env, rabbit: PrivateRabbit, baseline: Baseline, tmp_path: Path) -> None:
    with image_server(data("obama/obama-240p.jpg")) as (server, _requested):
        rest = fenv.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8")
        rest_proc = fenv.procs[-1]
        worker = start_worker(fenv, tmp_path)
        first = ("obama/obama_small.jpg", "obama/obama1.jpg")
        for path in first:
            assert http("POST", f"{rest}/scan/image/{path}", data(path)).status == 200
        fenv.wait_processed({hash_of(p) for p in first}, timeout=180)

        rabbit.ctl("stop_app")
        try:
            # Answered, not hung: each call has a client deadline of 10 s (FAIL_FAST).
            for attempt in range(3):  # several requests, so several of rest's threads
                reply = http("POST", f"{rest}/scan/image/late-{attempt}.jpg",
                             data("obama/obama-240p.jpg"), timeout=FAIL_FAST)
                assert reply.status == 503, reply.body
            reply = http("POST", f"{rest}/scan/url",
                         json_body={"url": f"{server}/o.jpg"}, timeout=FAIL_FAST)
            assert reply.status == 503, reply.body
            ready = http("GET", f"{rest}/readyz", timeout=FAIL_FAST)
            assert ready.status == 503 and ready.body == {"ready": False, "redis": True,
                                                          "rabbitmq": False}
            match = http("GET", f"{rest}/match/{hash_of('obama/obama_small.jpg')}")
            assert match.status == 200 and match.body == ["obama/obama1.jpg"]
            assert hash_of("obama/obama-240p.jpg") not in fenv.statuses()  # nothing queued
        finally:
            rabbit.ctl("start_app")

        # No restart of rest or the worker: both reconnect by themselves.
        wait_until(lambda: http("GET", f"{rest}/readyz").status == 200, 90,
                   "rest to be ready again")
        for path in PHOTOS:
            if path not in first:
                reply = http("POST", f"{rest}/scan/image/{path}", data(path))
                assert reply.status == 200, reply.body
        all_photos_done(fenv)
        assert rest_proc.poll() is None and worker.proc.poll() is None
        assert "RabbitMQ connection lost" in worker.output()
        assert_consistent(fenv, baseline)


@pytest.mark.timeout(600)
def test_redis_restarted_while_workers_run_keeps_every_acked_image(
        fenv: Env, baseline: Baseline, tmp_path: Path) -> None:
    hashes = publish(fenv)
    worker = start_worker(fenv, tmp_path, FACEREC_FAULT="slow=1.5")
    wait_until(lambda: sum(s == "done" for s in fenv.statuses().values()) >= 2, 180,
               "two images to be committed")
    acked = {h for h, s in fenv.statuses().items() if s == "done"}
    fenv.redis.stop(signal.SIGKILL)
    # Longer than the sleep before each commit and the Redis client's own quick retries,
    # so the worker meets the outage.
    time.sleep(10)
    fenv.redis.start()  # same port and directory: the append-only file is replayed
    assert acked <= {h for h, s in fenv.statuses().items() if s == "done"}
    fenv.wait_processed(hashes, timeout=300)
    all_photos_done(fenv)
    assert worker.proc.poll() is None
    assert "Redis unavailable during" in worker.output()
    assert fenv.queue_depth(amqp.DEAD_QUEUE) == 0
    assert_consistent(fenv, baseline)


def test_a_poison_image_and_a_malformed_header_are_dead_lettered_while_others_flow(
        fenv: Env, baseline: Baseline, tmp_path: Path) -> None:
    poison = plain_image(99)
    publish_one(fenv, poison, "poison.png")
    good = plain_image(98)
    publish_raw(fenv.settings, good, {"schema": 99, "hash": sha256_hex(good),
                                      "name": "v99.png", "kind": "upload"})
    publish(fenv)
    worker = start_worker(fenv, tmp_path, FACEREC_FAULT="fail_processing",
                          FACEREC_FAULT_NAME="poison.png")
    all_photos_done(fenv)
    fenv.wait_processed({sha256_hex(poison)}, timeout=120)
    wait_until(lambda: fenv.queue_depth(amqp.DEAD_QUEUE) == 2, 30, "two dead letters")
    assert worker.faults() == DELIVERY_CEILING  # bounded retries, then given up
    dead = {d.name: d for d in list_dead(fenv.settings)}
    assert dead["poison.png"].image_hash == sha256_hex(poison)
    assert dead["poison.png"].reason == (
        f"failed {DELIVERY_CEILING} times, last: "
        "RuntimeError('injected fault: fail_processing')")
    assert dead["poison.png"].count == DELIVERY_CEILING
    assert dead["v99.png"].reason == "invalid message: unsupported schema 99"
    assert dead["v99.png"].count == 1
    view = fenv.redis.client(META).hgetall(image_key(sha256_hex(poison)))
    assert view["status"] == "failed" and "injected fault" in view["reason"]
    assert worker.proc.poll() is None
    assert_consistent(fenv, baseline)


@pytest.mark.timeout(600)
def test_an_image_that_crashes_every_worker_is_dead_lettered_by_the_broker_after_the_limit(
        fenv: Env, rabbit: PrivateRabbit, baseline: Baseline, tmp_path: Path) -> None:
    poison = plain_image(97)
    publish_one(fenv, poison, "crash.png")
    publish(fenv)
    crashes = 0
    while fenv.queue_depth(amqp.DEAD_QUEUE) == 0:
        assert crashes < DELIVERY_CEILING, "still not dead-lettered"
        worker = start_worker(fenv, tmp_path, FACEREC_FAULT="crash_before_commit",
                              FACEREC_FAULT_NAME="crash.png")
        assert worker.proc.wait(180) == 137, worker.output()
        crashes += 1
        # The broker saw the connection drop: the message is returned or dead-lettered.
        wait_until(lambda: rabbit.unacked() == 0, 30, "the broker to take the message back")
    assert crashes == DELIVERY_CEILING
    [dead] = list_dead(fenv.settings)
    assert (dead.name, dead.image_hash, dead.count) == (
        "crash.png", sha256_hex(poison), DELIVERY_CEILING)
    assert dead.reason.startswith(f"delivered {DELIVERY_CEILING} times without being settled")
    # Nothing said "failed" while deliveries were still to come; the next worker learns of
    # the broker's dead letter (its copy on toWorker.dead.events) and says so: not "queued"
    # for ever.
    meta = fenv.redis.client(META)
    assert meta.hget(image_key(sha256_hex(poison)), "status") is None  # never marked queued
    start_worker(fenv, tmp_path)
    wait_until(lambda: meta.hget(image_key(sha256_hex(poison)), "status") == "failed", 60,
               "the dead letter to reach the image's status")
    assert meta.hget(image_key(sha256_hex(poison)), "reason").startswith(
        f"delivered {DELIVERY_CEILING} times without being settled")
    all_photos_done(fenv)
    assert_consistent(fenv, baseline)


@pytest.mark.timeout(300)
def test_max_deliveries_of_two_dead_letters_an_image_that_crashed_two_workers(
        fenv: Env, rabbit: PrivateRabbit, tmp_path: Path) -> None:
    poison = plain_image(96)
    publish_one(fenv, poison, "crash.png")
    crash = {"MAX_DELIVERIES": "2", "FACEREC_FAULT": "crash_before_commit",
             "FACEREC_FAULT_NAME": "crash.png"}
    worker = start_worker(fenv, tmp_path, **crash)
    assert worker.proc.wait(180) == 137, worker.output()
    wait_until(lambda: rabbit.unacked() == 0, 30, "the broker to take the message back")
    # The second and last delivery hangs, then its worker is killed: while it runs, the
    # status must not already say it failed.
    slow = start_worker(fenv, tmp_path, MAX_DELIVERIES="2", FACEREC_FAULT="slow=600",
                        FACEREC_FAULT_NAME="crash.png")
    wait_until(lambda: slow.faults() == 1, 120, "the last delivery to be under way")
    meta = fenv.redis.client(META)
    assert meta.hget(image_key(sha256_hex(poison)), "status") != "failed"
    fenv.stop(slow.proc, signal.SIGKILL)
    wait_until(lambda: rabbit.unacked() == 0, 30, "the broker to take the message back")
    assert fenv.queue_depth(amqp.DEAD_QUEUE) == 0  # the broker's own ceiling is not reached
    # The third delivery is refused unprocessed: the hook that would crash never runs.
    worker = start_worker(fenv, tmp_path, **crash)
    wait_until(lambda: fenv.queue_depth(amqp.DEAD_QUEUE) == 1, 120, "the dead letter")
    assert worker.faults() == 0
    assert worker.proc.poll() is None
    [dead] = list_dead(fenv.settings)
    assert (dead.name, dead.count) == ("crash.png", 3)
    assert dead.reason.startswith("delivered 2 times without being settled")
    view = fenv.redis.client(META).hgetall(image_key(sha256_hex(poison)))
    assert view["status"] == "failed"
    assert view["reason"].startswith("delivered 2 times without being settled")
    assert fenv.queue_depth() == 0


def test_a_long_job_with_a_short_heartbeat_keeps_its_connection_and_is_not_redelivered(
        fenv: Env, rabbit: PrivateRabbit, baseline: Baseline, tmp_path: Path) -> None:
    target = "groups/kit_with_rose.jpg"
    worker = start_worker(fenv, tmp_path, RABBITMQ_HEARTBEAT="2", FACEREC_FAULT="slow=15",
                          FACEREC_FAULT_NAME=target)
    publish(fenv, (target,))
    wait_until(lambda: worker.faults() == 1, 120, "the slow job to start")

    def worker_connections() -> list[object]:
        # The consumer's connection (its log publisher has one of its own).
        return [(c["peer_port"], c["timeout"]) for c in rabbit.connections()
                if c["name"] == "facerec-worker"]

    during = worker_connections()
    assert [timeout for _port, timeout in during] == [2]  # one, with the 2 s heartbeat
    fenv.wait_processed({hash_of(target)}, timeout=120)
    publish(fenv, tuple(p for p in PHOTOS if p != target))
    all_photos_done(fenv)
    assert worker_connections() == during  # the same connection all along
    assert worker.faults() == 1  # delivered once: no redelivery of the slow image
    assert "RabbitMQ connection lost" not in worker.output()
    assert scans(fenv, hash_of(target)) == "1"
    assert_consistent(fenv, baseline)
