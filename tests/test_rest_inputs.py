"""Bad input gets a JSON error with the right status and queues nothing."""

from __future__ import annotations

import io
import socket
import time
from typing import Iterator

import pytest
from PIL import Image

from facerec.broker import DEAD_QUEUE
from tests.services import FACES, Env, free_port, http

OBAMA = (FACES / "obama/obama_small.jpg").read_bytes()
CAP = 1_000_000


@pytest.fixture
def rest(env: Env) -> Iterator[str]:
    yield env.start_rest(MAX_UPLOAD_BYTES=str(CAP))
    assert env.queue_depth() == 0, "a rejected request queued something"
    assert env.queue_depth(DEAD_QUEUE) == 0


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
        rest: str, body: bytes, why: str) -> None:
    reply = http("POST", f"{rest}/scan/image/x.jpg", body)
    assert reply.status == 400
    assert why in reply.body["error"]


def test_a_decompression_bomb_is_refused_before_its_pixels_are_allocated(rest: str) -> None:
    # 60 000 x 60 000 gray pixels: 3.6 GB decoded, a few MB of PNG. Patch the header of a
    # tiny PNG instead so the test stays small: the size check reads only the header.
    small = png((1, 1))
    ihdr = small.index(b"IHDR")
    bomb = (small[: ihdr + 4] + (60000).to_bytes(4, "big") * 2 + small[ihdr + 12:])
    reply = http("POST", f"{rest}/scan/image/bomb.png", bomb)
    assert reply.status == 400
    assert "exceeds the limit" in reply.body["error"] or "not a decodable" in reply.body["error"]


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
        rest: str, body: object, status: int) -> None:
    reply = http("POST", f"{rest}/scan/url", json_body=body if body is not None else None,
                 data=b"not json" if body is None else None,
                 headers={"Content-Type": "application/json"})
    assert reply.status == status
    assert reply.body["error"]


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


def test_hash_routes_answer_unknown_hashes_and_refuse_malformed_ones(rest: str) -> None:
    unknown = "0" * 64
    assert http("GET", f"{rest}/match/{unknown}").body == []
    assert http("GET", f"{rest}/image/{unknown}").status == 404
    assert http("GET", f"{rest}/match/not-a-hash").status == 400
    assert http("GET", f"{rest}/image/ABC").status == 400


def test_probes_answer_and_the_root_is_positive(rest: str) -> None:
    assert http("GET", f"{rest}/").status == 200
    assert http("GET", f"{rest}/healthz").body == {"status": "ok"}
    assert http("GET", f"{rest}/readyz").body == {"ready": True, "rabbitmq": True,
                                                  "redis": True}


def test_an_unreachable_broker_gives_503_fast_and_loses_nothing(env: Env) -> None:
    rest = env.start_rest(RABBITMQ_PORT=str(free_port()))
    start = time.monotonic()
    reply = http("POST", f"{rest}/scan/image/obama.jpg", OBAMA)
    assert reply.status == 503 and "RabbitMQ" in reply.body["error"]
    assert time.monotonic() - start < 10
    ready = http("GET", f"{rest}/readyz")
    assert ready.status == 503 and ready.body["rabbitmq"] is False
    assert http("GET", f"{rest}/match/{'0' * 64}").body == []  # Redis still answers
    assert env.statuses() == {}


def test_scan_routes_require_the_token_when_one_is_set(env: Env) -> None:
    rest = env.start_rest(API_TOKEN="s3cret")
    assert http("POST", f"{rest}/scan/image/a.jpg", OBAMA).status == 401
    wrong = {"Authorization": "Bearer nope"}
    assert http("POST", f"{rest}/scan/image/a.jpg", OBAMA, headers=wrong).status == 401
    good = {"Authorization": "Bearer s3cret"}
    assert http("POST", f"{rest}/scan/image/a.jpg", OBAMA, headers=good).status == 200
    assert http("GET", f"{rest}/healthz").status == 200
    assert env.queue_depth() == 1
