"""Redis full (issue 16, item 4): `maxmemory` with `noeviction`, as the manifests set it.

A redis-server of this module's own, capped at a few MiB, is filled with filler keys in
database 0 (which facerec never uses) until it refuses writes. rest must then answer 503
having queued nothing; an image already queued must wait in the worker without using its
delivery attempts, and be processed once Redis has room again. Capacity (bytes per image,
face, name, match) is measured by bench/redis_capacity.py and recorded in README.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from facerec import broker as amqp
from facerec.messages import sha256_hex
from facerec.settings import Settings
from tests.fault_worker import MARK
from tests.services import FACES, ROOT, Env, RedisServer, Vhost, http, reset_vhost, wait_until

OBAMA = (FACES / "obama" / "obama_small.jpg").read_bytes()
BIDEN = (FACES / "biden" / "biden.jpg").read_bytes()
MAXMEMORY = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def small_redis() -> Iterator[RedisServer]:
    server = RedisServer(maxmemory=MAXMEMORY).start()
    yield server
    server.close()


@pytest.fixture
def full_env(small_redis: RedisServer, vhost: Vhost) -> Iterator[Env]:
    small_redis.flush()
    settings = Settings.from_env({}, redis_port=small_redis.port, rabbitmq_vhost=vhost.name)
    reset_vhost(settings)
    env = Env(settings, small_redis)
    yield env
    env.stop_all()


def fill(server: RedisServer) -> int:
    """Write filler keys into database 0 until Redis refuses writes; how many it took.

    Redis refuses a write only while it is over maxmemory, and it may fall back under it
    right after a refusal (client buffers freed): the limit is then lowered to half of what
    it holds, so that it stays full until make_room."""
    filler = server.client(0, decode=False)
    for i in range(10_000):
        try:
            filler.set(f"filler:{i}", b"x" * 65536)
        except redis.exceptions.OutOfMemoryError:
            used = int(filler.info("memory")["used_memory"])
            filler.config_set("maxmemory", used // 2)
            return i
    raise AssertionError("Redis never refused a write: is maxmemory set?")


def make_room(server: RedisServer) -> None:
    client = server.client(0)
    client.flushdb()
    client.config_set("maxmemory", MAXMEMORY)


def test_with_redis_refusing_writes_a_scan_answers_503_queues_nothing_and_reads_still_work(
        full_env: Env) -> None:
    rest = full_env.start_rest()
    assert http("POST", f"{rest}/scan/image/before.jpg", BIDEN).status == 200
    assert fill(full_env.redis) > 0
    reply = http("POST", f"{rest}/scan/image/obama.jpg", OBAMA)
    assert reply.status == 503, reply.body
    assert "Redis unavailable" in reply.body["error"] and "maxmemory" in reply.body["error"]
    assert full_env.queue_depth() == 1  # only the image scanned before Redis filled up
    assert sha256_hex(OBAMA) not in full_env.statuses()
    # Reads are not refused: queries answer, and readiness stays (see README "Capacity").
    assert http("GET", f"{rest}/image/{sha256_hex(BIDEN)}").body["status"] == "queued"
    assert http("GET", f"{rest}/match/{sha256_hex(BIDEN)}").body == []
    ready = http("GET", f"{rest}/readyz")
    assert (ready.status, ready.body["redis"]) == (200, True)
    metrics = http("GET", f"{rest}/metrics").body
    assert b'facerec_scans_rejected_total{kind="upload",reason="redis_unavailable"} 1.0' \
        in metrics
    make_room(full_env.redis)
    assert http("POST", f"{rest}/scan/image/obama.jpg", OBAMA).status == 200
    assert full_env.queue_depth() == 2


def test_an_image_in_the_worker_when_redis_starts_refusing_writes_waits_and_is_committed(
        full_env: Env) -> None:
    rest = full_env.start_rest()
    listener = subprocess.Popen([sys.executable, "-m", "logs", "--pattern", "*.worker.info"],
                                cwd=ROOT, env=full_env.environ(), stdout=subprocess.PIPE,
                                text=True)
    full_env.procs.append(listener)
    logged: list[str] = []
    threading.Thread(target=lambda: logged.extend(listener.stdout or ()), daemon=True).start()
    # A worker that pauses just before its commit: Redis fills up meanwhile.
    environ = full_env.environ(FACEREC_FAULT="slow=5")
    worker = subprocess.Popen([sys.executable, "-m", "tests.fault_worker"], cwd=ROOT,
                              env=environ, stdout=subprocess.PIPE, text=True)
    full_env.procs.append(worker)
    wait_until(lambda: any("consuming images" in line for line in logged), 60,
               "the worker to consume")
    h = http("POST", f"{rest}/scan/image/obama.jpg", OBAMA).body["hash"]
    assert worker.stdout is not None and MARK in worker.stdout.readline()
    fill(full_env.redis)
    wait_until(lambda: any("Redis unavailable during commit" in line for line in logged), 60,
               "the worker to meet the refusal")
    assert "maxmemory" in "".join(logged)
    assert full_env.statuses()[h] == "queued" and full_env.queue_depth() == 0
    make_room(full_env.redis)
    full_env.wait_processed({h}, timeout=120)
    assert full_env.statuses()[h] == "done"
    assert len(http("GET", f"{rest}/image/{h}").body["faces"]) == 1
    assert full_env.queue_depth(amqp.DEAD_QUEUE) == 0
    port = int(environ["METRICS_PORT"])
    metrics = http("GET", f"http://127.0.0.1:{port}/metrics").body
    assert b"facerec_redeliveries_total 0.0" in metrics  # no delivery attempt was used
    assert b'facerec_images_total{outcome="processed"} 1.0' in metrics


def test_a_worker_started_while_redis_refuses_writes_waits_then_processes_what_is_queued(
        full_env: Env) -> None:
    rest = full_env.start_rest()
    h = http("POST", f"{rest}/scan/image/obama.jpg", OBAMA).body["hash"]
    fill(full_env.redis)
    full_env.start_worker()
    # It cannot even record the face log's epoch: it waits rather than take the message.
    time.sleep(3)
    assert full_env.queue_depth() == 1 and full_env.statuses()[h] == "queued"
    make_room(full_env.redis)
    full_env.wait_processed({h}, timeout=120)
    assert full_env.statuses()[h] == "done"
    assert full_env.queue_depth(amqp.DEAD_QUEUE) == 0
