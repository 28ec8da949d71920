"""Bad input gets a JSON error with the right status and queues nothing.

Most of it through Flask's test client (the real app on real Redis and RabbitMQ, without
gunicorn); what only a real server shows (Content-Length and chunked bodies over the cap,
the app fetching from itself) through gunicorn.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient
from PIL import Image

from facerec.broker import DEAD_QUEUE
from facerec.messages import sha256_hex
from facerec.store import MAX_NAMES, META
from tests.services import FACES, Env, free_port, http, read_queue

OBAMA = (FACES / "obama/obama_small.jpg").read_bytes()
CAP = 1_000_000


@pytest.fixture
def nothing_queued(env: Env) -> Iterator[None]:
    yield
    assert env.queue_depth() == 0, "a rejected request queued something"
    assert env.queue_depth(DEAD_QUEUE) == 0


@pytest.fixture
def app(make_client: Callable[..., FlaskClient], nothing_queued: None) -> FlaskClient:
    return make_client(max_upload_bytes=CAP)


@pytest.fixture
def rest(env: Env, nothing_queued: None) -> str:
    return env.start_rest(MAX_UPLOAD_BYTES=str(CAP))


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "gray").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("body, why", [
    (b"", "empty body"),
    (b"hello, I am not an image", "not a decodable image"),
    (OBAMA[: len(OBAMA) // 2], "corrupt or truncated"),
    (b"GIF89a" + b"\0" * 100, "not a decodable image"),
])
def test_a_body_that_is_not_a_whole_accepted_image_is_refused_with_400(
        app: FlaskClient, body: bytes, why: str) -> None:
    reply = app.post("/scan/image/x.jpg", data=body)
    assert reply.status_code == 400
    assert why in reply.json["error"]


def test_a_decompression_bomb_is_refused_before_its_pixels_are_allocated(
        app: FlaskClient) -> None:
    # 60 000 x 60 000 gray pixels: 3.6 GB decoded, a few MB of PNG. Patch the header of a
    # tiny PNG instead so the test stays small: the size check reads only the header.
    small = png((1, 1))
    ihdr = small.index(b"IHDR")
    bomb = (small[: ihdr + 4] + (60000).to_bytes(4, "big") * 2 + small[ihdr + 12:])
    reply = app.post("/scan/image/bomb.png", data=bomb)
    assert reply.status_code == 400
    assert "exceeds the limit" in reply.json["error"] or "not a decodable" in reply.json["error"]


def test_an_upload_over_the_cap_is_refused_with_413(rest: str) -> None:
    reply = http("POST", f"{rest}/scan/image/big.jpg", OBAMA + b"\0" * CAP)
    assert reply.status == 413
    assert "error" in reply.body


def test_a_chunked_upload_over_the_cap_is_refused_with_413(rest: str) -> None:
    port = int(rest.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /scan/image/chunked.jpg HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        chunk = b"\xff" * 65536
        try:
            for _ in range(CAP // len(chunk) + 4):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close as soon as it has answered
        answer = b""
        while data := s.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


@pytest.mark.parametrize("body, status", [
    (None, 400),
    ({"link": "http://example.com/a.jpg"}, 400),
    ({"url": 42}, 400),
    ({"url": "ftp://example.com/a.jpg"}, 400),
    ({"url": "file:///etc/passwd"}, 400),
    ({"url": "http://"}, 400),
    ({"url": "http://10.0.0.7/a.jpg"}, 400),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, 400),
    ({"url": "http://metadata.google.internal/computeMetadata/v1/"}, 400),
    ({"url": "http://[::1]/a.jpg"}, 400),
])
def test_scan_url_refuses_missing_invalid_or_internal_urls_with_400(
        app: FlaskClient, body: object, status: int) -> None:
    if body is None:
        reply = app.post("/scan/url", data=b"not json", content_type="application/json")
    else:
        reply = app.post("/scan/url", json=body)
    assert reply.status_code == status
    assert reply.json["error"]


def test_scan_url_answers_422_with_the_reason_when_the_url_is_no_image(env: Env) -> None:
    rest = env.start_rest(FETCH_ALLOW_NETWORKS="127.0.0.0/8")
    closed = free_port()
    reply = http("POST", f"{rest}/scan/url", json_body={"url": f"http://127.0.0.1:{closed}/a"})
    assert reply.status == 422 and "fetching failed" in reply.body["error"]
    # The REST service itself serves JSON, not an image, and 404 for unknown paths.
    reply = http("POST", f"{rest}/scan/url", json_body={"url": f"{rest}/"})
    assert reply.status == 422 and "did not yield an image" in reply.body["error"]
    reply = http("POST", f"{rest}/scan/url", json_body={"url": f"{rest}/nothing-here"})
    assert reply.status == 422 and "HTTP 404" in reply.body["error"]
    assert env.queue_depth() == 0


@pytest.mark.parametrize("path", ["/match/not-a-hash", "/image/ABC", f"/image/{'a' * 64}%0A",
                                  f"/match/{'a' * 63}", f"/image/{'A' * 64}/content"])
def test_hash_routes_refuse_malformed_hashes_with_400(app: FlaskClient, path: str) -> None:
    reply = app.get(path)
    assert (reply.status_code, reply.json) == (400, {
        "error": "hash must be 64 lowercase hex digits (SHA-256)"})


def test_hash_routes_answer_unknown_hashes(app: FlaskClient) -> None:
    unknown = "0" * 64
    assert app.get(f"/match/{unknown}").json == []
    assert app.get(f"/image/{unknown}").status_code == 404
    reply = app.get(f"/image/{unknown}/content")
    assert reply.status_code == 404 and "not stored" in reply.json["error"]


def test_unknown_routes_and_methods_get_json_errors(app: FlaskClient) -> None:
    reply = app.get("/no/such/route")
    assert reply.status_code == 404 and "error" in reply.json
    reply = app.delete("/scan/url")
    assert reply.status_code == 405 and "POST" in reply.headers["Allow"]
    assert "error" in reply.json


def test_probes_answer_and_the_root_is_positive(app: FlaskClient) -> None:
    assert app.get("/").status_code == 200
    assert app.get("/healthz").json == {"status": "ok"}
    assert app.get("/readyz").json == {"ready": True, "rabbitmq": True, "redis": True}


def test_an_unreachable_broker_gives_503_and_loses_nothing(
        env: Env, make_client: Callable[..., FlaskClient]) -> None:
    app = make_client(rabbitmq_port=free_port())
    reply = app.post("/scan/image/obama.jpg", data=OBAMA)
    assert reply.status_code == 503 and "RabbitMQ" in reply.json["error"]
    ready = app.get("/readyz")
    assert ready.status_code == 503 and ready.json["rabbitmq"] is False
    assert app.get(f"/match/{'0' * 64}").json == []  # Redis still answers
    assert env.statuses() == {}


def test_an_unreachable_redis_gives_503_and_queues_nothing(
        env: Env, make_client: Callable[..., FlaskClient]) -> None:
    app = make_client(redis_port=free_port())
    reply = app.post("/scan/image/obama.jpg", data=OBAMA)
    assert reply.status_code == 503 and "Redis unavailable" in reply.json["error"]
    assert app.get(f"/match/{'0' * 64}").status_code == 503
    ready = app.get("/readyz")
    assert ready.status_code == 503 and ready.json == {"ready": False, "redis": False,
                                                       "rabbitmq": True}
    assert env.queue_depth() == 0


def test_scan_routes_require_the_token_when_one_is_set(
        env: Env, make_client: Callable[..., FlaskClient]) -> None:
    app = make_client(api_token="s3cret")
    assert app.post("/scan/image/a.jpg", data=OBAMA).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert app.post("/scan/image/a.jpg", data=OBAMA, headers=wrong).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert app.post("/scan/image/a.jpg", data=OBAMA, headers=good).status_code == 200
    assert app.get("/healthz").status_code == 200
    assert env.queue_depth() == 1


def test_invented_http_methods_never_become_metric_labels(app: FlaskClient) -> None:
    for i in range(5):
        assert app.open("/healthz", method=f"BREW{i}").status_code == 405
    text = app.get("/metrics").get_data(as_text=True)
    assert "BREW" not in text
    # (The registry is the process's: other tests' requests are counted in it too.)
    assert 'facerec_http_request_seconds_count{method="other",route="unmatched"}' in text


def test_an_image_with_the_most_names_refuses_a_new_name_but_not_a_known_one(
        env: Env, app: FlaskClient) -> None:
    h = sha256_hex(OBAMA)
    env.redis.client(META).sadd(f"pending:{h}", *(f"n{i}.jpg" for i in range(MAX_NAMES)))
    reply = app.post("/scan/image/one-more.jpg", data=OBAMA)
    assert reply.status_code == 409 and "names already" in reply.json["error"]
    assert app.post("/scan/image/n7.jpg", data=OBAMA).status_code == 200
    assert env.queue_depth() == 1
    while env.queue_depth():  # leave the queue as the fixture expects it
        read_queue(env.settings, "toWorker.images", consume=True)
