"""End to end through the REST routes: real rest and worker processes, Redis, RabbitMQ,
dlib, and the 26 shared photos."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys

import pytest

from facerec.messages import sha256_hex
from facerec.store import META, image_key
from tests.services import FACES, ROOT, Env, http, image_server, photos, wait_until

pytestmark = pytest.mark.slow


def test_every_pair_of_the_shared_photos_matches_exactly_when_they_share_someone(
        env: Env) -> None:
    listener = subprocess.Popen([sys.executable, "-m", "logs"], cwd=ROOT, env=env.environ(),
                                stdout=subprocess.PIPE, text=True)
    env.procs.append(listener)
    url = env.start_rest()
    env.start_worker()
    hashes = {}
    for photo in photos():
        reply = http("POST", f"{url}/scan/image/{photo.path}", photo.data)
        assert reply.status == 200, reply.body
        assert reply.body == {"hash": sha256_hex(photo.data)}
        hashes[photo.path] = sha256_hex(photo.data)
    env.wait_processed(set(hashes.values()))

    checked = 0
    for a, b in itertools.combinations(photos(), 2):
        names_a = http("GET", f"{url}/match/{hashes[a.path]}").body
        names_b = http("GET", f"{url}/match/{hashes[b.path]}").body
        should = bool(a.identities & b.identities)
        assert (b.path in names_a) == should, (a.path, b.path)
        assert (a.path in names_b) == should, (b.path, a.path)
        checked += 1
    assert checked == 325

    group = hashes["groups/obama_and_biden.jpg"]
    view = http("GET", f"{url}/image/{group}").body
    assert view["status"] == "done" and len(view["faces"]) == 3
    assert view["names"] == ["groups/obama_and_biden.jpg"]
    assert {m["hash"] for m in view["matches"]} == {
        hashes[p.path] for p in photos() if p.identities & {"obama", "biden"}} - {group}
    assert all(0 < m["distance"] <= 0.6 for m in view["matches"])

    # The same bytes under a second name: the name is added, the image is not rescanned.
    obama = (FACES / "obama/obama.jpg").read_bytes()
    reply = http("POST", f"{url}/scan/image/copy-of-obama.jpg", obama)
    assert reply.body == {"hash": hashes["obama/obama.jpg"]}
    names = http("GET", f"{url}/image/{hashes['obama/obama.jpg']}").body["names"]
    assert names == ["copy-of-obama.jpg", "obama/obama.jpg"]
    assert env.redis.client(META).hget(image_key(hashes["obama/obama.jpg"]), "scans") == "1"
    assert "copy-of-obama.jpg" in http("GET", f"{url}/match/{hashes['obama/obama2.jpg']}").body

    env.stop_all()
    out = listener.stdout.read() if listener.stdout else ""
    host = socket.gethostname()
    assert f"{host}.rest.info: INFO POST /scan/image/obama/obama.jpg -> 200" in out
    assert f"{host}.worker.info: INFO image {group} ('groups/obama_and_biden.jpg') stored: " \
           f"3 faces" in out
    assert f"{host}.worker.debug: DEBUG image {group}: 3 faces found" in out


def test_a_url_is_fetched_once_and_then_answered_from_the_name_database(env: Env) -> None:
    body = (FACES / "obama/obama_small.jpg").read_bytes()
    with image_server(body) as (base, requested):
        url = env.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8")
        env.start_worker()
        image_url = f"{base}/obama_small.jpg"
        first = http("POST", f"{url}/scan/url", json_body={"url": image_url})
        assert first.status == 200 and first.body == {"hash": sha256_hex(body)}
        env.wait_processed({first.body["hash"]})
        again = http("POST", f"{url}/scan/url", json_body={"url": image_url})
        assert again.body == first.body
        assert requested == ["/obama_small.jpg"]
        assert http("GET", f"{url}/image/{first.body['hash']}").body["names"] == [image_url]


def test_images_posted_while_no_worker_runs_wait_and_are_all_processed(env: Env) -> None:
    url = env.start_rest()
    chosen = photos()[:8]
    hashes = {http("POST", f"{url}/scan/image/{p.path}", p.data).body["hash"] for p in chosen}
    assert len(hashes) == 8
    assert env.queue_depth() == 8
    assert set(env.statuses().values()) == {"queued"}
    assert http("GET", f"{url}/image/{sorted(hashes)[0]}").body["status"] == "queued"
    env.start_worker()
    env.wait_processed(hashes)
    assert set(env.statuses().values()) == {"done"}
    wait_until(lambda: env.queue_depth() == 0, 10, "the queue to drain")
