"""Erasure end to end: real rest (gunicorn), workers, Redis, RabbitMQ, dlib, shared photos.

An erased image must leave no trace: not in any database (as a key, a set member, a hash
field or a value), not in a worker's index, not in the image store, not in a queue; and
nothing erased may come back from a message that was queued, processing or dead-lettered.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from facerec import broker as amqp
from facerec.deadletters import list_dead, requeue_dead
from facerec.messages import sha256_hex
from facerec.store import DATABASES, FACE_LOG, FACE_LOG_ERASED, META, Store
from tests.services import FACES, ROOT, Env, http, image_server, wait_until

pytestmark = pytest.mark.slow

OBAMA = ("obama/obama_small.jpg", "obama/obama-240p.jpg", "obama/obama1.jpg")
OTHERS = ("biden/biden2.jpg", "groups/obama_and_biden.jpg")


def data(path: str) -> bytes:
    return (FACES / path).read_bytes()


def hash_of(path: str) -> str:
    return sha256_hex(data(path))


def traces(env: Env, *needles: str) -> list[str]:
    """Every place in the five databases where one of `needles` appears."""
    found = []
    for db in DATABASES:
        for key, value in env.redis.dump(db).items():
            texts = [key]
            if isinstance(value, (bytes, str)):
                texts.append(value.decode(errors="replace") if isinstance(value, bytes)
                             else value)
            elif isinstance(value, list):
                texts += [v.decode(errors="replace") for v in value]
            elif isinstance(value, dict):
                texts += [x.decode(errors="replace") for kv in value.items() for x in kv]
            for needle in needles:
                if any(needle in t for t in texts):
                    found.append(f"db {db}: {key}")
    return found


def scan(rest: str, *paths: str, prefix: str = "") -> dict[str, str]:
    hashes = {}
    for path in paths:
        reply = http("POST", f"{rest}/scan/image/{prefix}{path}", data(path))
        assert reply.status == 200, reply.body
        hashes[path] = reply.body["hash"]
    return hashes


def test_an_erased_image_leaves_no_trace_and_workers_forget_its_faces(
        env: Env, tmp_path: Path) -> None:
    images = tmp_path / "images"
    store = {"IMAGE_STORE": images.as_uri()}
    rest = env.start_rest(**store)
    worker = env.start_worker(**store)
    hashes = scan(rest, *OBAMA, *OTHERS)
    env.wait_processed(set(hashes.values()))
    gone = hashes["obama/obama1.jpg"]
    assert (images / gone).exists()
    assert "obama/obama1.jpg" in http("GET", f"{rest}/match/{hashes['obama/obama_small.jpg']}").body

    reply = http("DELETE", f"{rest}/image/{gone}")
    assert reply.status == 200, reply.body
    assert reply.body == {"hash": gone, "names": ["obama/obama1.jpg"], "faces": 1,
                          "matches": 3, "stored_object": True, "dead_letters": 0}
    assert traces(env, gone, "obama/obama1.jpg") == []
    assert not (images / gone).exists()
    assert http("GET", f"{rest}/image/{gone}").status == 404
    assert http("GET", f"{rest}/image/{gone}/content").status == 404
    assert http("GET", f"{rest}/match/{gone}").body == []
    for path in ("obama/obama_small.jpg", "obama/obama-240p.jpg", "groups/obama_and_biden.jpg"):
        names = http("GET", f"{rest}/match/{hashes[path]}").body
        assert "obama/obama1.jpg" not in names and names, path
        view = http("GET", f"{rest}/image/{hashes[path]}").body
        assert gone not in {m["hash"] for m in view["matches"]}
    # The face log keeps the position, not the hash; the erasure log holds only positions.
    meta = env.redis.client(META)
    assert "" in meta.lrange(FACE_LOG, 0, -1)
    assert all(p.isdigit() for p in meta.lrange(FACE_LOG_ERASED, 0, -1))
    assert http("DELETE", f"{rest}/image/{gone}").status == 404

    # The running worker forgets without reloading: a new photo of Obama matches the two
    # that are left, never the erased one, and the worker said why.
    later = scan(rest, "obama/obama.jpg")["obama/obama.jpg"]
    env.wait_processed({later})
    assert set(http("GET", f"{rest}/match/{later}").body) == {
        "obama/obama_small.jpg", "obama/obama-240p.jpg", "groups/obama_and_biden.jpg"}
    metrics = http("GET", f"http://127.0.0.1:{env.worker_metrics_port(worker)}/metrics").body
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    # 6 photos scanned, 1 face each but the group's 3, minus the erased one.
    assert "facerec_index_faces 7.0" in text


def test_a_worker_restarted_after_erasures_loads_an_index_without_them(env: Env) -> None:
    rest = env.start_rest()
    worker = env.start_worker()
    hashes = scan(rest, *OBAMA)
    env.wait_processed(set(hashes.values()))
    env.stop(worker)
    for path in OBAMA[:2]:
        assert http("DELETE", f"{rest}/image/{hashes[path]}").status == 200
    env.start_worker()
    later = scan(rest, "obama/obama.jpg")["obama/obama.jpg"]
    env.wait_processed({later})
    assert http("GET", f"{rest}/match/{later}").body == ["obama/obama1.jpg"]
    assert traces(env, *(hashes[p] for p in OBAMA[:2])) == []


def test_an_image_erased_while_queued_is_dropped_when_delivered(env: Env) -> None:
    rest = env.start_rest()  # no worker yet: the messages wait in the queue
    hashes = scan(rest, "obama/obama_small.jpg", "obama/obama-240p.jpg")
    gone = hashes["obama/obama_small.jpg"]
    assert http("GET", f"{rest}/image/{gone}").body["status"] == "queued"
    reply = http("DELETE", f"{rest}/image/{gone}")
    assert reply.status == 200 and reply.body["names"] == ["obama/obama_small.jpg"]
    assert env.queue_depth() == 2
    env.start_worker()
    env.wait_processed({hashes["obama/obama-240p.jpg"]})
    wait_until(lambda: env.queue_depth() == 0, 60, "the queue to drain")
    assert traces(env, gone, "obama/obama_small.jpg") == []
    assert http("GET", f"{rest}/image/{gone}").status == 404
    assert http("GET", f"{rest}/match/{hashes['obama/obama-240p.jpg']}").body == []


def test_the_same_bytes_scanned_again_after_erasure_are_a_new_normal_scan(env: Env) -> None:
    rest = env.start_rest()
    hashes = scan(rest, "obama/obama_small.jpg")  # queued, not processed
    h = hashes["obama/obama_small.jpg"]
    assert http("DELETE", f"{rest}/image/{h}").status == 200
    scan(rest, "obama/obama_small.jpg", prefix="again/")  # queued again, with a new ticket
    env.start_worker()
    env.wait_processed({h})
    wait_until(lambda: env.queue_depth() == 0, 60, "the queue to drain")
    view = http("GET", f"{rest}/image/{h}").body
    # The old message came first and was dropped; the new one is a normal, single scan.
    assert view["status"] == "done" and view["names"] == ["again/obama/obama_small.jpg"]
    assert env.redis.client(META).hget(f"image:{h}", "scans") == "1"


def test_an_image_dead_lettered_then_erased_does_not_come_back_when_requeued(
        env: Env, tmp_path: Path) -> None:
    rest = env.start_rest()
    hashes = scan(rest, "obama/obama_small.jpg", "biden/biden2.jpg")
    # A worker that fails on every image, with one delivery allowed: both dead-lettered.
    log = tmp_path / "faulty.log"
    with open(log, "wb") as out:
        faulty = subprocess.Popen([sys.executable, "-m", "tests.fault_worker"], cwd=ROOT,
                                  env=env.environ(FACEREC_FAULT="fail_processing",
                                                  MAX_DELIVERIES="1"),
                                  stdout=out, stderr=subprocess.STDOUT)
    env.procs.append(faulty)
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 2, 120, "two dead letters")
    env.stop(faulty)
    obama, biden = hashes["obama/obama_small.jpg"], hashes["biden/biden2.jpg"]
    # Erasing drops the image's dead letter and leaves the other one alone.
    reply = http("DELETE", f"{rest}/image/{obama}")
    assert reply.status == 200 and reply.body["dead_letters"] == 1
    assert [d.image_hash for d in list_dead(env.settings)] == [biden]
    # A dead letter of an image erased in Redis only (e.g. one moved back by hand while the
    # erasure ran) still carries its old ticket: requeued, it is dropped, not processed.
    Store(env.settings).erase_image(biden)
    assert requeue_dead(env.settings) == 1
    env.start_worker()
    wait_until(lambda: env.queue_depth() == 0, 60, "the requeued letter to be delivered")
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 0 and not env.statuses(), 30,
               "nothing to come back")
    assert traces(env, obama, biden, "obama_small", "biden2") == []


def test_removing_names_keeps_an_image_until_its_last_name_goes(env: Env) -> None:
    rest = env.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8")
    env.start_worker()
    photo = data("obama/obama_small.jpg")
    h = sha256_hex(photo)
    with image_server(photo) as (base, _requested):
        url = f"{base}/photos/obama.jpg?size=small"
        assert http("POST", f"{rest}/scan/url", json_body={"url": url}).status == 200
        assert http("POST", f"{rest}/scan/image/a.jpg", photo).status == 200
        env.wait_processed({h})
        wait_until(lambda: len(http("GET", f"{rest}/image/{h}").body["names"]) == 2, 30,
                   "both names")
        reply = http("DELETE", f"{rest}/name/{quote(url, safe='')}")
        assert reply.status == 200, reply.body
        assert reply.body == {"name": url, "hash": h, "erased": []}
        assert http("GET", f"{rest}/image/{h}").body["names"] == ["a.jpg"]
        assert traces(env, url) == []
        reply = http("DELETE", f"{rest}/name/a.jpg")
        assert [e["hash"] for e in reply.body["erased"]] == [h]
        assert traces(env, h, "a.jpg") == []
        assert http("DELETE", f"{rest}/name/a.jpg").status == 404


def test_each_erasure_is_logged_with_the_credential_id_and_counted(
        env: Env, tmp_path: Path) -> None:
    printed = tmp_path / "logs.txt"
    with open(printed, "wb") as sink:
        listener = subprocess.Popen([sys.executable, "-m", "logs", "--pattern", "*.rest.info"],
                                    cwd=ROOT, env=env.environ(), stdout=sink)
    env.procs.append(listener)
    secret = "full-secret-123"
    rest = env.start_rest(API_KEYS=f"admin:full:{secret},viewer:read:read-secret-1")
    auth = {"Authorization": f"Bearer {secret}"}
    h = sha256_hex(data("obama/obama_small.jpg"))
    assert http("POST", f"{rest}/scan/image/x.jpg", data("obama/obama_small.jpg"),
                headers=auth).status == 200
    reading = {"Authorization": "Bearer read-secret-1"}
    assert http("DELETE", f"{rest}/image/{h}", headers=reading).status == 403
    assert http("DELETE", f"{rest}/image/{h}").status == 401
    assert http("DELETE", f"{rest}/image/{h}", headers=auth).status == 200
    metrics = http("GET", f"{rest}/metrics").body
    assert b'facerec_erasures_total{what="image"} 1.0' in metrics
    # Log lines travel asynchronously: wait for the last one, then read everything.
    wait_until(lambda: f"DELETE /image/{h} -> 200" in printed.read_text(), 30,
               "the erasure's log lines")
    env.stop(listener)
    out = printed.read_text()
    assert f"erased image {h} (by admin, image)" in out, out
    assert f"DELETE /image/{h} -> 200" in out and "by admin" in out
    assert secret not in out and "read-secret-1" not in out
