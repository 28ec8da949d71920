"""Search without storing, and stricter matches: real rest, workers, Redis, RabbitMQ, dlib."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
from PIL import Image

from facerec import broker as amqp
from facerec.messages import sha256_hex
from tests.services import FACES, ROOT, Env, http, photos, wait_until

pytestmark = pytest.mark.slow


def search(rest: str, data: bytes, **params: str) -> tuple[int, object]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    reply = http("POST", f"{rest}/search" + (f"?{query}" if query else ""), data, timeout=60)
    return reply.status, reply.body


def nearest(answer: dict[str, list[dict[str, object]]]) -> dict[str, float]:
    """The best distance per matching image over all the query's faces."""
    best: dict[str, float] = {}
    for face in answer["faces"]:
        for m in face["matches"]:  # type: ignore[union-attr]
            h, d = str(m["hash"]), float(m["distance"])  # type: ignore[index, arg-type]
            best[h] = min(d, best.get(h, d))
    return best


def test_searching_each_shared_photo_finds_what_match_finds_and_stores_nothing(
        env: Env) -> None:
    rest = env.start_rest()
    env.start_worker()
    hashes = {}
    for photo in photos():
        reply = http("POST", f"{rest}/scan/image/{photo.path}", photo.data)
        hashes[photo.path] = reply.body["hash"]
    env.wait_processed(set(hashes.values()))
    before = env.databases()
    for photo in photos():
        h = hashes[photo.path]
        status, answer = search(rest, photo.data)
        assert status == 200, answer
        view = http("GET", f"{rest}/image/{h}").body
        expected = {m["hash"]: m["distance"] for m in view["matches"]} | {h: 0.0}
        assert nearest(answer) == expected, photo.path  # the same images, the same distances
        assert len(answer["faces"]) == len(view["faces"])
        for face in answer["faces"]:
            distances = [m["distance"] for m in face["matches"]]
            assert distances == sorted(distances)
            assert all(m["names"] for m in face["matches"])
        # Each face of the photo itself is found at distance 0, in the person it is in.
        for face, stored in zip(answer["faces"], view["faces"], strict=True):
            itself = [m for m in face["matches"] if m["hash"] == h]
            assert itself and itself[0]["person"]["id"] == stored["person"], photo.path
    # A photo never scanned: answered, and nothing of it is kept anywhere.
    buffer = io.BytesIO()
    Image.open(FACES / "obama/obama.jpg").save(buffer, "PNG")  # same pixels, other bytes
    stranger = buffer.getvalue()
    status, answer = search(rest, stranger)
    assert status == 200 and answer["faces"]
    assert http("GET", f"{rest}/image/{sha256_hex(stranger)}").status == 404
    assert env.databases() == before
    assert env.queue_depth() == 0 and env.queue_depth(amqp.SEARCH_QUEUE) == 0


def test_tolerance_and_limit_narrow_a_search_and_bad_values_are_refused(env: Env) -> None:
    rest = env.start_rest()
    env.start_worker()
    group = FACES / "groups/obama_and_biden.jpg"
    paths = ["obama/obama.jpg", "obama/obama1.jpg", "obama/obama2.jpg", "biden/biden.jpg"]
    for path in paths:
        http("POST", f"{rest}/scan/image/{path}", (FACES / path).read_bytes())
    env.wait_processed({sha256_hex((FACES / p).read_bytes()) for p in paths})
    status, wide = search(rest, group.read_bytes())
    assert status == 200 and len(wide["faces"]) == 3
    status, narrow = search(rest, group.read_bytes(), tolerance="0.45")
    assert status == 200
    assert set(nearest(narrow)) == {h for h, d in nearest(wide).items() if d <= 0.45}
    status, one = search(rest, group.read_bytes(), limit="1")
    assert all(len(f["matches"]) <= 1 for f in one["faces"])
    assert [f["matches"][:1] for f in wide["faces"]] == [f["matches"] for f in one["faces"]]
    for params in ({"tolerance": "0"}, {"tolerance": "1.5"}, {"tolerance": "x"},
                   {"limit": "0"}, {"limit": "2.5"}):
        assert search(rest, group.read_bytes(), **params)[0] == 400, params
    assert search(rest, b"not an image")[0] == 400


def test_match_with_a_tolerance_keeps_only_the_closer_images(env: Env) -> None:
    rest = env.start_rest()
    env.start_worker()
    paths = ["obama/obama.jpg", "obama/obama1.jpg", "obama/obama2.jpg", "obama/obama-240p.jpg"]
    hashes = {p: sha256_hex((FACES / p).read_bytes()) for p in paths}
    for path in paths:
        http("POST", f"{rest}/scan/image/{path}", (FACES / path).read_bytes())
    env.wait_processed(set(hashes.values()))
    h = hashes["obama/obama.jpg"]
    view = http("GET", f"{rest}/image/{h}").body
    distances = sorted(m["distance"] for m in view["matches"])
    cut = (distances[0] + distances[-1]) / 2
    assert http("GET", f"{rest}/match/{h}").body == sorted(p for p in paths if p != paths[0])
    closer = {n for m in view["matches"] if m["distance"] <= cut for n in m["names"]}
    assert set(http("GET", f"{rest}/match/{h}?tolerance={cut!r}").body) == closer
    assert 0 < len(closer) < 3
    # Exactly at a recorded distance: included (distances are kept exactly).
    assert distances[0] in [m["distance"] for m in view["matches"]]
    exact = http("GET", f"{rest}/match/{h}?tolerance={distances[0]!r}").body
    assert len(exact) == 1
    assert http("GET", f"{rest}/match/{h}?tolerance=0.61").status == 400  # > MATCH_TOLERANCE
    assert http("GET", f"{rest}/match/{h}?tolerance=abc").status == 400


def test_worker_roles_split_searches_from_scans(env: Env) -> None:
    """WORKER_ROLE=search answers searches and takes no scan; WORKER_ROLE=images the
    reverse: scans are processed, and a search finds no worker to answer it."""
    rest = env.start_rest(SEARCH_TIMEOUT="60")
    searcher = env.start_worker(WORKER_ROLE="search")
    photo = (FACES / "obama/obama.jpg").read_bytes()
    wait_until(lambda: search(rest, photo)[0] == 200, 120, "the search worker to answer")
    h = http("POST", f"{rest}/scan/image/obama.jpg", photo).body["hash"]
    time.sleep(3)
    assert env.queue_depth() == 1, "a search-only worker took a scan"
    assert http("GET", f"{rest}/image/{h}").body["status"] == "queued"
    imager = env.start_worker(WORKER_ROLE="images")
    env.wait_processed({h})
    # The search worker's index follows the face log: the scan is found now.
    status, answer = search(rest, photo)
    assert status == 200 and h in {m["hash"] for m in answer["faces"][0]["matches"]}
    searcher.terminate()
    searcher.wait(30)
    wait_until(lambda: search(rest, photo)[0] == 503, 30, "searches refused without it")
    assert "no worker is serving searches" in search(rest, photo)[1]["error"]
    assert imager.poll() is None


def test_a_search_with_no_worker_listening_is_refused_at_once(env: Env) -> None:
    rest = env.start_rest(SEARCH_TIMEOUT="60")
    status, answer = search(rest, (FACES / "obama/obama.jpg").read_bytes())
    assert status == 503 and "no worker is serving searches" in answer["error"]
    assert env.queue_depth(amqp.SEARCH_QUEUE) == 0


def test_a_search_nobody_answers_is_refused_after_the_timeout_and_expires(env: Env) -> None:
    rest = env.start_rest(SEARCH_TIMEOUT="2")
    # A "worker" that takes search requests and never answers.
    conn = pika.BlockingConnection(amqp.connection_parameters(env.settings, "silent"))
    try:
        ch = conn.channel()
        amqp.declare_topology(ch)
        ch.basic_qos(prefetch_count=1)
        held: list[int] = []
        ch.basic_consume(amqp.SEARCH_QUEUE, lambda _c, m, _p, _b: held.append(m.delivery_tag))
        status, answer = search(rest, (FACES / "obama/obama.jpg").read_bytes())
        assert status == 503 and "no worker answered within 2s" in answer["error"]
        conn.process_data_events(time_limit=0.5)
        assert len(held) == 1
    finally:
        conn.close()  # the held request goes back to the queue, where it has expired
    wait_until(lambda: env.queue_depth(amqp.SEARCH_QUEUE) == 0, 30, "the request to expire")


def test_a_search_is_answered_while_scans_wait_behind_a_busy_worker(
        env: Env, tmp_path: Path) -> None:
    rest = env.start_rest()
    # A worker whose every scan takes 60 s: the scan queue backs up behind it.
    with open(tmp_path / "worker.log", "wb") as out:
        slow = subprocess.Popen([sys.executable, "-m", "tests.fault_worker"], cwd=ROOT,
                                env=env.environ(FACEREC_FAULT="slow=60"), stdout=out,
                                stderr=subprocess.STDOUT)
    env.procs.append(slow)
    group = [p for p in photos() if len(p.identities) == 1][:12]
    for photo in group:
        assert http("POST", f"{rest}/scan/image/{photo.path}", photo.data).status == 200
    wait_until(lambda: "facerec fault injected" in (tmp_path / "worker.log").read_text(), 120,
               "the worker to be stuck on its first scan")
    status, answer = search(rest, (FACES / "biden/biden.jpg").read_bytes())
    assert status == 200, answer
    assert len(answer["faces"]) == 1
    assert env.queue_depth() == len(group) - 1  # the scans are still waiting
    slow.kill()


def test_the_facerec_command_searches_a_file(env: Env, tmp_path: Path) -> None:
    rest = env.start_rest()
    env.start_worker()
    for path in ("kit_harington/john1.jpeg", "rose_leslie/img1.jpg"):
        http("POST", f"{rest}/scan/image/{path}", (FACES / path).read_bytes())
    env.wait_processed({sha256_hex((FACES / p).read_bytes())
                        for p in ("kit_harington/john1.jpeg", "rose_leslie/img1.jpg")})
    exe = Path(sys.executable).parent / "facerec"
    group = str(FACES / "groups/kit_with_rose.jpg")
    out = subprocess.run([str(exe), "--rest", rest, "search", group], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.count("face ") == 2
    assert "kit_harington/john1.jpeg" in out and "rose_leslie/img1.jpg" in out
    raw = subprocess.run([str(exe), "--rest", rest, "--json", "search", group,
                          "--tolerance", "0.3"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert all(m["distance"] <= 0.3 for f in json.loads(raw)["faces"] for m in f["matches"])


def test_searches_while_the_same_worker_detects_faces_in_scans_do_not_break_it(
        env: Env) -> None:
    # Detection in the image thread and in the search thread at the same time: dlib's
    # models are not thread-safe, and once crashed the worker ("double free").
    rest = env.start_rest()
    worker = env.start_worker()
    group = (FACES / "groups/obama_and_biden.jpg").read_bytes()
    wait_until(lambda: search(rest, group)[0] == 200, 120, "the worker to serve searches")
    queued = set()
    for photo in photos():
        assert http("POST", f"{rest}/scan/image/{photo.path}", photo.data).status == 200
        queued.add(sha256_hex(photo.data))
    answered = 0
    while env.queue_depth() > 0 or answered < 3:
        status, answer = search(rest, group)
        assert status == 200, answer
        assert len(answer["faces"]) == 3
        answered += 1
    env.wait_processed(queued)
    assert worker.poll() is None, "the worker died"
    assert set(env.statuses().values()) == {"done"}
