"""IMAGE_STORE (claim check) against a real GCS-compatible server and a local directory."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facerec import broker as amqp
from facerec.imagestore import GCSStore, ImageStore, InlineStore, LocalStore
from facerec.messages import CONTENT_TYPE, STORED_SCHEMA, sha256_hex
from facerec.store import HASH_TO_ENCODINGS, META, image_key
from tests.services import (
    Env,
    free_port,
    http,
    photos,
    publish_raw,
    read_queue,
    reset_vhost,
    wait_until,
)
from tests.synthetic import pairs_of

BUCKET = "facerec-test"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """gcp-storage-emulator on a free port; its request log shows every upload."""
    port = free_port()
    log = tmp_path / "gcs.log"
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "start", "--host", "127.0.0.1", "--port", str(port),
                                 "--in-memory", "--default-bucket", BUCKET],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", f"{url}/storage/v1/b").status == 200
                   if _listening(port) else False, 30, "the GCS emulator")
        yield url, log
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def gs(emulator_url: str, keep: bool = True) -> dict[str, str]:
    return {"IMAGE_STORE": f"gs://{BUCKET}/images", "STORAGE_EMULATOR_HOST": emulator_url,
            "IMAGE_STORE_KEEP": "true" if keep else "false"}


def uploads(log: Path) -> int:
    """Object uploads the emulator received (the object name is in the multipart body)."""
    return len(re.findall(rf"\"POST /upload/storage/v1/b/{BUCKET}/o\?", log.read_text()))


def scan_all(env: Env, **extra: str) -> dict[str, str]:
    rest = env.start_rest(**extra)
    hashes = {}
    for p in photos():
        reply = http("POST", f"{rest}/scan/image/{p.path}", p.data)
        assert reply.status == 200, reply.body
        hashes[p.path] = reply.body["hash"]
    return hashes


def peek(env: Env) -> tuple[dict[str, object], bytes]:
    """The first queued message, left in the queue."""
    queued = read_queue(env.settings, amqp.IMAGE_QUEUE)
    assert queued, "the queue is empty"
    assert queued[0].content_type == CONTENT_TYPE
    return queued[0].headers, queued[0].body


@pytest.mark.slow
def test_the_pipeline_through_gcs_gives_exactly_what_inline_gives(
        env: Env, emulator: tuple[str, Path]) -> None:
    url, log = emulator
    hashes = scan_all(env)
    env.start_worker()
    env.wait_processed(set(hashes.values()))
    inline = env.databases()
    env.stop_all()

    env.redis.flush()
    reset_vhost(env.settings)
    assert scan_all(env, **gs(url)) == hashes
    headers, body = peek(env)
    assert body == b"" and headers["schema"] == STORED_SCHEMA
    assert headers["ref"] == f"gs://{BUCKET}/images/{headers['hash']}"
    env.start_worker(**gs(url))
    env.wait_processed(set(hashes.values()))
    assert env.databases() == inline
    assert uploads(log) == len(set(hashes.values())) == 26

    by_hash = {h: p for p in photos() for h in [hashes[p.path]]}
    expected = {frozenset((a, b)) for a, b in itertools.combinations(by_hash, 2)
                if by_hash[a].identities & by_hash[b].identities}
    assert pairs_of(inline[4]) == expected


def test_the_same_bytes_are_uploaded_once_and_served_back(
        env: Env, emulator: tuple[str, Path]) -> None:
    url, log = emulator
    rest = env.start_rest(**gs(url))
    photo = photos()[0]
    first = http("POST", f"{rest}/scan/image/one.jpg", photo.data)
    second = http("POST", f"{rest}/scan/image/two.jpg", photo.data)
    assert first.body == second.body == {"hash": sha256_hex(photo.data)}
    assert second.headers["X-Facerec-Outcome"] == "queued"
    assert uploads(log) == 1
    text = http("GET", f"{rest}/metrics").body.decode()
    assert 'facerec_store_uploads_total{outcome="uploaded"} 1.0' in text
    assert 'facerec_store_uploads_total{outcome="existed"} 1.0' in text
    content = http("GET", f"{rest}/image/{sha256_hex(photo.data)}/content")
    assert content.status == 200 and content.body == photo.data
    assert content.headers["Content-Type"] == "image/jpeg"
    env.start_worker(**gs(url))
    env.wait_processed({sha256_hex(photo.data)})
    view = http("GET", f"{rest}/image/{sha256_hex(photo.data)}").body
    wait_until(lambda: http("GET", f"{rest}/image/{sha256_hex(photo.data)}").body["names"]
               == ["one.jpg", "two.jpg"], 30, "both names")
    assert view["status"] == "done"


def test_a_store_that_is_down_gives_503_and_queues_nothing(env: Env) -> None:
    rest = env.start_rest(**gs(f"http://127.0.0.1:{free_port()}"))
    reply = http("POST", f"{rest}/scan/image/a.jpg", photos()[0].data)
    assert reply.status == 503 and "upload" in reply.body["error"]
    assert env.queue_depth() == 0
    assert env.statuses() == {}


def test_inline_images_have_no_content_and_deleted_ones_are_gone(
        env: Env, tmp_path: Path) -> None:
    inline = env.start_rest()
    photo = photos()[1]
    h = http("POST", f"{inline}/scan/image/x.jpg", photo.data).body["hash"]
    assert http("GET", f"{inline}/image/{h}/content").status == 404
    env.stop_all()
    env.redis.flush()
    reset_vhost(env.settings)

    store = {"IMAGE_STORE": (tmp_path / "images").as_uri(), "IMAGE_STORE_KEEP": "false"}
    rest = env.start_rest(**store)
    assert http("POST", f"{rest}/scan/image/x.jpg", photo.data).body["hash"] == h
    assert (tmp_path / "images" / h).read_bytes() == photo.data
    env.start_worker(**store)
    env.wait_processed({h})
    assert http("GET", f"{rest}/image/{h}").body["status"] == "done"
    wait_until(lambda: not (tmp_path / "images" / h).exists(), 10, "the object to be deleted")
    assert http("GET", f"{rest}/image/{h}/content").status == 404


def test_a_message_naming_another_location_is_dead_lettered_unread(
        env: Env, tmp_path: Path) -> None:
    store = {"IMAGE_STORE": (tmp_path / "images").as_uri()}
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photos()[0].data)
    h = sha256_hex(secret.read_bytes())
    publish_raw(env.settings, b"", {"schema": STORED_SCHEMA, "hash": h, "name": "x.jpg",
                                    "kind": "upload", "ref": secret.as_uri()})
    env.start_worker(**store)
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 1, 60, "a dead letter")
    assert env.statuses() == {h: "failed"}
    reason = env.redis.client(META).hget(image_key(h), "reason")
    assert "is not this service's store location" in reason
    assert env.redis.client(HASH_TO_ENCODINGS).exists(h) == 0  # nothing was processed


# -- thumbnails (the web page's): kept beside the image, removed with it -------------------

def _thumbnail_round_trip(store: ImageStore, h: str) -> None:
    assert store.read_thumbnail(h) is None
    assert store.put(h, b"image bytes")
    store.put_thumbnail(h, b"thumbnail bytes")
    assert store.read_thumbnail(h) == b"thumbnail bytes"
    assert store.read(h) == b"image bytes"
    store.put_thumbnail(h, b"a newer thumbnail")
    assert store.read_thumbnail(h) == b"a newer thumbnail"
    assert store.delete(h)
    assert store.read_thumbnail(h) is None and store.read(h) is None
    # A repeated delete (an erasure retried) finds nothing and says so.
    assert not store.delete(h)


def test_a_local_store_keeps_a_thumbnail_beside_its_image_and_deletes_both(
        tmp_path: Path) -> None:
    h = sha256_hex(b"image bytes")
    store = LocalStore(tmp_path)
    _thumbnail_round_trip(store, h)
    assert list(tmp_path.iterdir()) == []
    # A thumbnail left without its image (an erasure that failed half-way) goes too.
    store.put_thumbnail(h, b"orphan")
    assert not store.delete(h)
    assert list(tmp_path.iterdir()) == []


def test_a_gcs_store_keeps_a_thumbnail_beside_its_image_and_deletes_both(
        emulator: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    store = GCSStore(BUCKET, "images")
    h = sha256_hex(b"image bytes")
    _thumbnail_round_trip(store, h)
    store.put_thumbnail(h, b"orphan")
    assert not store.delete(h)
    assert store.read_thumbnail(h) is None


def test_an_inline_store_has_no_thumbnails() -> None:
    store = InlineStore()
    store.put_thumbnail("0" * 64, b"ignored")
    assert store.read_thumbnail("0" * 64) is None
