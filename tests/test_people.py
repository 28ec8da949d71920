"""People: faces grouped into people by the commit script, on the real shared photos (real
dlib, real Redis), through the worker's own commit path; then the /people routes.

labels.csv says who is in each photo. Whatever order the photos arrive in, every pair of
single-face photos of one identity must end in one person, different identities in
different people, and each face of a group photo in its own identity's person.
"""

from __future__ import annotations

import itertools
import json
import random
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient

from facerec import faces as face_ops
from facerec.messages import sha256_hex
from facerec.pipeline import Processor
from facerec.settings import Settings
from facerec.store import HASH_TO_ENCODINGS, META, PEOPLE, Store, encodings_from_bytes
from tests import synthetic
from tests.services import ROOT, Env, Photo, RedisServer, photos

PHOTOS = photos()
# The hardest same-person pair of the set (distance about 0.52, just within
# PEOPLE_TOLERANCE): sent first, nothing closer is there to help them join.
ALEX_HARD = ("alex_lacamoire/img1.jpg", "alex_lacamoire/alex-lacamoire.png")


@pytest.fixture(scope="module")
def found() -> dict[str, face_ops.Faces]:
    """The faces of every shared photo, found once by the worker's own detection."""
    s = Settings.from_env({})
    out = {}
    for p in PHOTOS:
        rgb = face_ops.decode(p.data, s.max_image_pixels)
        out[p.path] = face_ops.find_faces(rgb, s.detection_model, s.detect_max_side,
                                          s.detect_upsample)
    return out


@pytest.fixture
def store(settings: Settings, redis_server: RedisServer) -> Iterator[Store]:
    redis_server.flush()
    st = Store(settings)
    yield st
    st.close()


def commit_all(settings: Settings, store: Store, found: dict[str, face_ops.Faces],
               order: list[Photo]) -> None:
    worker = Processor(settings, store)
    worker.load_index()
    for p in order:
        assert worker.commit_faces(sha256_hex(p.data), p.path, found[p.path]).status == \
            "processed"


def person_of_faces(store: Store) -> dict[tuple[str, int], int]:
    """(image hash, face position) -> person id, from the listed people."""
    total, page = store.people_page(0, 1000)
    out = {}
    for summary in page:
        pid = int(summary["id"])  # type: ignore[call-overload]
        person = store.person(pid)
        assert person is not None
        for f in person["faces"]:  # type: ignore[attr-defined]
            out[(f["hash"], f["face"])] = pid
    assert total == len(page)
    return out


def check_people(store: Store, found: dict[str, face_ops.Faces]) -> None:
    people = person_of_faces(store)
    assert len(people) == sum(len(f.boxes) for f in found.values()), "a face has no person"
    singles = [p for p in PHOTOS if len(found[p.path].boxes) == 1 and p.identities]
    who = {}  # identity -> its person, from the single-face photos
    for a, b in itertools.combinations(singles, 2):
        pa, pb = people[(sha256_hex(a.data), 0)], people[(sha256_hex(b.data), 0)]
        if a.identities == b.identities:
            assert pa == pb, f"{a.path} and {b.path} are one identity but two people"
        else:
            assert pa != pb, f"{a.path} and {b.path} are different people but one person"
    for p in singles:
        who[next(iter(p.identities))] = people[(sha256_hex(p.data), 0)]
    for p in PHOTOS:
        n = len(found[p.path].boxes)
        if n < 2:
            continue
        mine = [people[(sha256_hex(p.data), i)] for i in range(n)]
        assert len(set(mine)) == n, f"two faces of {p.path} are one person"
        expected = {who[i] for i in p.identities}
        assert expected <= set(mine), f"{p.path}: not in its identities' people"
        # A face of nobody known (the child) is in a person of its own.
        for extra in set(mine) - expected:
            assert extra not in who.values()


def test_group_photos_hold_as_many_faces_as_labelled(found: dict[str, face_ops.Faces]) -> None:
    counts = {p.path: len(found[p.path].boxes) for p in PHOTOS}
    assert counts["groups/obama_and_biden.jpg"] == 3
    assert counts["groups/kit_with_rose.jpg"] == 2


@pytest.mark.parametrize("seed", ["labels", "reversed", "alex-hard-first", 1, 2, 3])
def test_people_are_the_labelled_identities_whatever_the_order(
        settings: Settings, store: Store, redis_server: RedisServer,
        found: dict[str, face_ops.Faces], seed: str | int) -> None:
    order = list(PHOTOS)
    if seed == "reversed":
        order.reverse()
    elif seed == "alex-hard-first":
        order.sort(key=lambda p: p.path not in ALEX_HARD)
    elif isinstance(seed, int):
        random.Random(seed).shuffle(order)
    commit_all(settings, store, found, order)
    check_people(store, found)
    assert_consistent(redis_server)


def assert_consistent(server: RedisServer) -> None:
    """Every person's count, face set, centroid sum and list entry agree with the faces,
    and no person holds two faces of one photo."""
    meta, raw = server.client(META), server.client(HASH_TO_ENCODINGS, decode=False)
    sums = server.client(META, decode=False)
    listed = {k: int(v) for k, v in meta.zrange(PEOPLE, 0, -1, withscores=True)}
    owners: dict[str, list[tuple[str, int]]] = {}
    for key in meta.scan_iter("face:*"):
        h = key.removeprefix("face:")
        for j, pid in meta.hgetall(key).items():
            owners.setdefault(pid, []).append((h, int(j)))
    assert set(owners) == set(listed), "the people list and the faces disagree"
    for pid, refs in owners.items():
        count, rep = meta.hmget(f"person:{pid}", "count", "rep")
        faces = meta.smembers(f"person:{pid}:faces")
        assert int(count) == len(refs) == listed[pid]
        assert {f"{h}:{j}" for h, j in refs} == faces
        assert rep in faces
        expected = sum(encodings_from_bytes(raw.get(h))[j].astype(np.float64) for h, j in refs)
        stored = np.array(struct.unpack("<128d", sums.hget(f"person:{pid}", "sum")))
        assert np.allclose(stored, expected, atol=1e-6)
        images = [h for h, _ in refs]
        assert len(images) == len(set(images)), f"person {pid} holds two faces of one photo"
    assert not [k for k in meta.scan_iter("person:*") if k.split(":")[1] not in listed]


def hash_of(path: str) -> str:
    return next(sha256_hex(p.data) for p in PHOTOS if p.path == path)


def faces_at(*vectors: np.ndarray) -> face_ops.Faces:
    return face_ops.Faces([(0, 10, 10, 0)] * len(vectors),
                          np.array(vectors, dtype=np.float32))


def test_a_face_between_two_people_merges_them_unless_a_photo_holds_both(
        settings: Settings, store: Store, redis_server: RedisServer) -> None:
    base = np.random.default_rng(3).normal(0, 0.07, 128)
    step = np.zeros(128)
    step[0] = 0.58  # beyond PEOPLE_TOLERANCE (0.55): two people at first
    worker = Processor(settings, store)
    worker.load_index()
    a, b, c, d = (f"{k:064x}" for k in range(1, 5))
    worker.commit_faces(a, "a", faces_at(base))
    worker.commit_faces(b, "b", faces_at(base + step))
    assert store.people_page(0, 10)[0] == 2
    # A photo of both keeps them apart: its two faces are two people, never one.
    worker.commit_faces(c, "c", faces_at(base + 0.1 * step, base + 0.9 * step))
    assert store.people_page(0, 10)[0] == 2
    assert store.merge_people(1, 2) == "a photo has a face of each"
    store.erase_image(c)
    # Now one face halfway between them (0.29 from each) joins and merges them.
    worker.commit_faces(d, "d", faces_at(base + 0.5 * step))
    total, page = store.people_page(0, 10)
    assert total == 1 and page[0]["faces"] == 3
    assert_consistent(redis_server)
    history = {**redis_server.client(META).hgetall(f"facehist:{a}"),
               **redis_server.client(META).hgetall(f"facehist:{b}")}
    assert list(history.values()) in (["1"], ["2"]), "the moved faces remember their person"


def test_named_people_are_not_merged_automatically(
        settings: Settings, store: Store, redis_server: RedisServer) -> None:
    base = np.random.default_rng(4).normal(0, 0.07, 128)
    step = np.zeros(128)
    step[5] = 0.58
    worker = Processor(settings, store)
    worker.load_index()
    worker.commit_faces(f"{1:064x}", "a", faces_at(base))
    worker.commit_faces(f"{2:064x}", "b", faces_at(base + step))
    assert store.name_person(1, "Ann") and store.name_person(2, "Bea")
    worker.commit_faces(f"{3:064x}", "c", faces_at(base + 0.5 * step))
    total, page = store.people_page(0, 10)
    assert total == 2 and {p["name"] for p in page} == {"Ann", "Bea"}
    assert_consistent(redis_server)


def test_erasure_takes_faces_out_of_their_people(
        settings: Settings, store: Store, redis_server: RedisServer,
        found: dict[str, face_ops.Faces]) -> None:
    commit_all(settings, store, found, list(PHOTOS))
    rose = person_of_faces(store)[(hash_of("rose_leslie/img1.jpg"), 0)]
    assert store.name_person(rose, "Rose")
    before = store.person(rose)
    assert before is not None and len(before["faces"]) == 3  # type: ignore[arg-type]
    store.erase_image(hash_of("groups/kit_with_rose.jpg"))
    after = store.person(rose)
    assert after is not None and after["name"] == "Rose"
    assert {f["hash"] for f in after["faces"]} == {  # type: ignore[attr-defined]
        hash_of("rose_leslie/img1.jpg"), hash_of("rose_leslie/img2.jpg")}
    assert_consistent(redis_server)
    for path in ("rose_leslie/img1.jpg", "rose_leslie/img2.jpg"):
        store.erase_image(hash_of(path))
    assert store.person(rose) is None, "a person without faces is gone, name included"
    assert "Rose" not in str(redis_server.dump(META))
    assert_consistent(redis_server)
    check_people_after_random_erasures(store, redis_server)


def check_people_after_random_erasures(store: Store, server: RedisServer) -> None:
    hashes = [sha256_hex(p.data) for p in PHOTOS]
    random.Random(7).shuffle(hashes)
    for h in hashes:
        store.erase_image(h)
        assert_consistent(server)
    assert store.people_page(0, 10) == (0, [])
    assert not list(server.client(META).scan_iter("person*"))
    assert not list(server.client(META).scan_iter("face:*"))
    assert not list(server.client(META).scan_iter("facehist:*"))
    assert not list(server.client(META).scan_iter("pairs:*"))


def test_concurrent_workers_keep_people_consistent(settings: Settings, store: Store,
                                                   redis_server: RedisServer) -> None:
    """Four workers commit 240 synthetic images (1-3 faces of 40 identities) at once: the
    people are exactly the identities, and their bookkeeping stays consistent."""
    rng = np.random.default_rng(5)
    centres = synthetic.identities(rng, 40)
    images = []
    for k in range(240):
        who = list(rng.choice(40, size=int(rng.integers(1, 4)), replace=False))
        images.append((f"{k:064x}", who, synthetic.image_faces(rng, centres, who)))
    errors: list[BaseException] = []

    def work(part: list[tuple[str, list[int], face_ops.Faces]]) -> None:
        try:
            worker = Processor(settings, Store(settings))
            worker.load_index()
            for h, _, faces in part:
                worker.commit_faces(h, h, faces)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(images[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert_consistent(redis_server)
    people = person_of_faces(store)
    identity_of = {}
    for h, who, _ in images:
        for j, ident in enumerate(who):
            identity_of[(h, j)] = ident
    by_person: dict[int, set[int]] = {}
    for ref, pid in people.items():
        by_person.setdefault(pid, set()).add(identity_of[ref])
    assert all(len(v) == 1 for v in by_person.values()), "a person mixes identities"
    assert len(by_person) == 40, "an identity was split into several people"


@pytest.fixture
def people_client(make_client: Callable[..., FlaskClient], env: object, settings: Settings,
                  found: dict[str, face_ops.Faces]) -> FlaskClient:
    client = make_client()
    st = Store(settings)
    try:
        commit_all(settings, st, found, list(PHOTOS))
    finally:
        st.close()
    return client


def test_people_routes(people_client: FlaskClient, redis_server: RedisServer) -> None:
    c = people_client
    page = c.get("/people?limit=3").get_json()
    assert page["total"] == 7 and len(page["people"]) == 3 and page["offset"] == 0
    assert [p["faces"] for p in page["people"]] == sorted(
        (p["faces"] for p in page["people"]), reverse=True)
    obama = page["people"][0]
    assert obama["faces"] == 14 and obama["name"] is None
    assert obama["face"]["box"] and len(obama["face"]["hash"]) == 64
    everyone = c.get("/people?offset=0&limit=200").get_json()["people"]
    assert sum(p["faces"] for p in everyone) == 30
    detail = c.get(f"/people/{obama['id']}").get_json()
    assert len(detail["faces"]) == 14
    assert any("groups/two_people.jpg" in f["names"] for f in detail["faces"])
    for bad in ("/people?limit=0", "/people?limit=x", "/people?offset=-1"):
        assert c.get(bad).status_code == 400
    assert c.get("/people/99999").status_code == 404

    named = c.put(f"/people/{obama['id']}", json={"name": " Barack <b>Obama</b> "})
    assert named.status_code == 200 and named.get_json()["name"] == "Barack <b>Obama</b>"
    assert c.get(f"/people/{obama['id']}").get_json()["name"] == "Barack <b>Obama</b>"
    for body in ({"name": ""}, {"name": 3}, {"nom": "x"}, {"name": "a\u0000b"},
                 {"name": "x" * 201}):
        assert c.put(f"/people/{obama['id']}", json=body).status_code == 400, body
    assert c.put("/people/99999", json={"name": "x"}).status_code == 404

    # The image view says which person each face is, and which face matched which.
    group = c.get(f"/image/{hash_of('groups/two_people.jpg')}").get_json()
    assert obama["id"] in [f["person"] for f in group["faces"]]
    face = next(f for f in group["faces"] if f["person"] == obama["id"])
    assert face["matches"] and all(m["distance"] <= 0.6 for m in face["matches"])
    assert hash_of("obama/obama.jpg") in {m["hash"] for m in face["matches"]}
    biden_face = next(f for f in group["faces"] if f["person"] != obama["id"])
    assert hash_of("obama/obama.jpg") not in {m["hash"] for m in biden_face["matches"]}

    # Merging: two people of one photo cannot be one; two others can (and it is undone
    # only by hand: the faces remember where they were).
    biden = biden_face["person"]
    refused = c.post(f"/people/{obama['id']}/merge", json={"from": biden})
    assert refused.status_code == 409 and "photo" in refused.get_json()["error"]
    alex = next(p for p in everyone if p["faces"] == 3 and
                "alex" in str(c.get(f"/people/{p['id']}").get_json()["faces"]))
    lin = next(p for p in everyone if p["faces"] == 1 and "lin-manuel" in
               str(c.get(f"/people/{p['id']}").get_json()["faces"]))
    merged = c.post(f"/people/{alex['id']}/merge", json={"from": lin["id"]})
    assert merged.status_code == 200 and merged.get_json()["faces"] == 4
    assert c.get(f"/people/{lin['id']}").status_code == 404
    assert c.post(f"/people/{alex['id']}/merge", json={"from": alex["id"]}).status_code == 409
    assert c.post(f"/people/{alex['id']}/merge", json={"from": "1"}).status_code == 400
    assert_consistent(redis_server)

    # Erasing a person erases every image with one of its faces.
    gone = c.delete(f"/people/{alex['id']}").get_json()
    assert len(gone["erased"]) == 4
    for h in gone["erased"]:
        assert c.get(f"/image/{h}").status_code == 404
    assert c.get(f"/people/{alex['id']}").status_code == 404
    assert c.get("/people").get_json()["total"] == 5
    assert_consistent(redis_server)


def test_faces_moved_out_stay_apart(people_client: FlaskClient,
                                    redis_server: RedisServer) -> None:
    c = people_client
    obama = c.get("/people?limit=1").get_json()["people"][0]
    faces = c.get(f"/people/{obama['id']}").get_json()["faces"]
    partial = [{"hash": f["hash"], "face": f["face"]} for f in faces
               if any("partial" in n for n in f["names"])]
    assert len(partial) == 2
    split = c.post(f"/people/{obama['id']}/split", json={"faces": partial})
    assert split.status_code == 200, split.get_json()
    new, rest = split.get_json()["person"], split.get_json()["rest"]
    assert (new["faces"], rest["faces"]) == (2, 12)
    moved = {(f["hash"], f["face"]) for f in c.get(f"/people/{new['id']}").get_json()["faces"]}
    assert moved == {(f["hash"], f["face"]) for f in partial}
    assert_consistent(redis_server)
    # Moved out by hand, they are never merged back — not by hand either.
    again = c.post(f"/people/{obama['id']}/merge", json={"from": new["id"]})
    assert again.status_code == 409 and "apart" in again.get_json()["error"]
    # The faces remember where they were (what undoing reads).
    history = redis_server.client(META).hget(f"facehist:{partial[0]['hash']}",
                                             str(partial[0]["face"]))
    assert history is not None and history.split()[-1] == str(obama["id"])

    assert c.post(f"/people/{obama['id']}/split", json={"faces": partial}).status_code == 409
    everything = [{"hash": f["hash"], "face": f["face"]}
                  for f in c.get(f"/people/{new['id']}").get_json()["faces"]]
    assert c.post(f"/people/{new['id']}/split", json={"faces": everything}).status_code == 409
    for body in ({}, {"faces": []}, {"faces": [{"hash": "x", "face": 0}]},
                 {"faces": [{"hash": partial[0]["hash"], "face": -1}]}):
        assert c.post(f"/people/{obama['id']}/split", json=body).status_code == 400, body
    assert c.post("/people/99999/split", json={"faces": partial}).status_code == 404

    others = [p for p in c.get("/people?limit=200").get_json()["people"] if p["faces"] == 1]
    a, b = others[0]["id"], others[1]["id"]
    assert c.post(f"/people/{a}/apart", json={"from": b}).status_code == 200
    refused = c.post(f"/people/{a}/merge", json={"from": b})
    assert refused.status_code == 409 and "apart" in refused.get_json()["error"]
    assert c.post(f"/people/{a}/apart", json={"from": a}).status_code == 409
    assert c.post(f"/people/{a}/apart", json={"from": 99999}).status_code == 404
    assert_consistent(redis_server)


def test_images_committed_before_people_existed_are_placed_once(
        env: Env, store: Store, redis_server: RedisServer,
        found: dict[str, face_ops.Faces]) -> None:
    """`python -m worker --upgrade` on data of a version before people and the gallery
    order: the people are those a fresh collection gets, every image is listed, a second
    run changes nothing, and images it finds placed stay as they are."""
    order = list(PHOTOS)
    random.Random(4).shuffle(order)
    commit_all(env.settings, store, found, order)
    meta = redis_server.client(META)
    kept = hash_of("obama/obama.jpg")
    for pattern in ("face:*", "facehist:*", "person:*", "apart:*"):
        for key in meta.scan_iter(pattern):
            if key != f"face:{kept}":
                meta.delete(key)
    meta.delete("people", "people:next", "recent")
    meta.hset(f"face:{kept}", "0", "999")  # as if placed meanwhile: left alone

    def place() -> dict[str, int]:
        done = subprocess.run([sys.executable, "-m", "worker", "--upgrade"], cwd=ROOT,
                              env=env.environ(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout.splitlines()[-1]))
    n = len(PHOTOS)
    assert place() == {"listed": n, "placed": n - 1, "images": n}
    assert meta.hget(f"face:{kept}", "0") == "999"
    meta.delete(f"face:{kept}")
    assert place() == {"listed": 0, "placed": 1, "images": n}
    check_people(store, found)
    assert_consistent(redis_server)
    assert place() == {"listed": 0, "placed": 0, "images": n}
    assert store.recent_images(0, 100)[0] == n
