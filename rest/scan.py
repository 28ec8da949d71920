"""The scan routes (the lab's paths): an upload or a URL becomes a queued image.

What one scan may cost a gunicorn process is bounded here (README "Hostile input"):

- slow work — reading an upload's body, fetching a URL — takes one of `web_threads - 2`
  slots, so two threads always remain for queries and probes; with none free the answer
  is 503 at once. A body must arrive within BODY_SECONDS, each read within READ_SECONDS.
- memory: a body reserves twice its size (the bytes, and the copy RabbitMQ is sent) from
  BODY_MEMORY before it is read; validation reserves the decoder's estimated peak from
  DECODE_MEMORY (facerec.faces.MemoryBudget). A decode that alone needs more is refused
  (400); one that cannot get its share within the budget's wait is answered 503.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from gunicorn.http.errors import ParseException

from facerec import faces, metrics
from facerec.errors import BrokerUnavailable, ImageStoreUnavailable, InvalidImage, RedisUnavailable
from facerec.fetch import check_url
from facerec.messages import MAX_NAME_LENGTH, OUTCOME_HEADER, ImageMessage
from facerec.settings import Settings
from rest.access import FULL, needs
from rest.errors import ApiError
from rest.services import services

bp = Blueprint("scan", __name__)

# Per gunicorn process; with the process's own ~60 MiB, two processes and the master fit
# the pod's 768 MiB (README "Capacity").
BODY_MEMORY = 96 << 20
DECODE_MEMORY = 160 << 20
BODY_SECONDS = 120.0
READ_SECONDS = 10.0
# {"url": ...} with a URL of at most MAX_NAME_LENGTH characters, each escaped at worst.
MAX_JSON_BYTES = 16 * 1024
_CHUNK = 256 * 1024
_EXTENSION = "facerec.scan"
_CREATING = threading.Lock()


@dataclass
class Limits:
    """What the scans of one process share: slow-work slots and memory."""

    slow: threading.BoundedSemaphore
    slots: int
    bodies: faces.MemoryBudget
    decoders: faces.MemoryBudget

    @classmethod
    def create(cls, settings: Settings) -> Limits:
        slots = max(1, settings.web_threads - 2)
        return cls(threading.BoundedSemaphore(slots), slots,
                   faces.MemoryBudget(max(BODY_MEMORY, 2 * (settings.max_upload_bytes + 1))),
                   faces.MemoryBudget(DECODE_MEMORY))

    @contextlib.contextmanager
    def slow_work(self, what: str) -> Iterator[None]:
        if not self.slow.acquire(blocking=False):
            raise ApiError(503, f"busy: {self.slots} uploads or URL fetches in progress in "
                                f"this process; try again ({what})")
        try:
            yield
        finally:
            self.slow.release()

    @contextlib.contextmanager
    def body(self, nbytes: int) -> Iterator[None]:
        with busy_is_503(), self.bodies.hold(2 * nbytes):
            yield


def limits() -> Limits:
    """The scan limits of the app handling the current request (one set per process)."""
    found = current_app.extensions.get(_EXTENSION)
    if found is None:
        with _CREATING:
            found = current_app.extensions.setdefault(_EXTENSION,
                                                      Limits.create(services().settings))
    assert isinstance(found, Limits)
    return found


@contextlib.contextmanager
def busy_is_503() -> Iterator[None]:
    try:
        yield
    except faces.Busy as exc:
        raise ApiError(503, f"busy: {exc}; try again") from None


def read_body() -> bytes:
    """The whole request body, at most the upload cap, or a 4xx.

    Werkzeug refuses a larger Content-Length at once (MAX_CONTENT_LENGTH); a chunked body
    has none, so the cap is enforced here too (one byte more tells "over the cap" apart).
    A body that ends before its Content-Length, or whose chunks are malformed, is refused:
    a truncated upload is never queued.
    """
    cap = services().settings.max_upload_bytes
    declared = request.content_length
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(READ_SECONDS)  # this request's reads; gunicorn resets it after
    deadline = time.monotonic() + BODY_SECONDS
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= cap:
            if time.monotonic() > deadline:
                raise ApiError(408, f"the body did not arrive within {BODY_SECONDS:g} s")
            chunk = request.stream.read(min(_CHUNK, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except TimeoutError:
        raise ApiError(408, f"no body data for {READ_SECONDS:g} s") from None
    except (OSError, ValueError, ParseException) as exc:
        # gunicorn's reader: an invalid chunk size, a missing terminator, an early end.
        raise ApiError(400, f"malformed request body: {type(exc).__name__}") from None
    if total > cap:
        raise ApiError(413, f"image larger than the cap of {cap} bytes")
    if declared is not None and total != declared:
        raise ApiError(400, f"the body ended after {total} of its {declared} bytes")
    return b"".join(chunks)


def read_json() -> Any:
    """The request's JSON document, or None when it is not one (any nesting depth)."""
    if not request.is_json:
        return None
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise ApiError(413, f"JSON body larger than {MAX_JSON_BYTES} bytes")
    raw = request.stream.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ApiError(413, f"JSON body larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None


def answer(image_hash: str, outcome: str) -> Response:
    # The body stays the lab's {"hash": ...}; the header tells clients what happened.
    response = jsonify(hash=image_hash)
    response.headers[OUTCOME_HEADER] = outcome
    return response


def queue_image(data: bytes, name: str, kind: str) -> Response:
    """Record, store and publish one image, in that order: every write to Redis comes
    before the publish, so an error answer means nothing was queued (what was written is
    undone), and a success means the broker has confirmed the message."""
    s = services()
    msg = ImageMessage.for_image(data, name, kind).with_ticket()
    url = name if kind == "url" else ""
    g.detail = f"hash {msg.image_hash}, {len(data)} bytes"
    if s.store.prepare(msg.image_hash, name, msg.ticket, url):
        g.detail += ", already processed: name added"
        metrics.SCANS_ACCEPTED.labels(kind, "duplicate").inc()
        return answer(msg.image_hash, "duplicate")
    try:
        if not s.images.inline:
            # Claim check: the object exists before the message that names it.
            uploaded = s.images.put(msg.image_hash, data)
            metrics.STORE_UPLOADS.labels("uploaded" if uploaded else "existed").inc()
            g.detail += ", uploaded" if uploaded else ", already in the store"
            msg = msg.stored_at(s.images.ref(msg.image_hash))
        s.broker.publish_image(msg)
    except (BrokerUnavailable, ImageStoreUnavailable) as exc:
        with contextlib.suppress(RedisUnavailable):
            s.store.release(msg.image_hash, name, msg.ticket, url, f"not queued: {exc}")
        raise
    g.detail += ", queued"
    metrics.SCANS_ACCEPTED.labels(kind, "queued").inc()
    return answer(msg.image_hash, "queued")


@bp.post("/scan/image/<path:filename>")
@needs(FULL)
def scan_image(filename: str) -> Response:
    if len(filename) > MAX_NAME_LENGTH:
        raise ApiError(400, f"file name longer than {MAX_NAME_LENGTH} characters")
    s, lim = services(), limits()
    cap = s.settings.max_upload_bytes
    with lim.slow_work("upload"), lim.body(min(request.content_length or cap, cap)):
        data = read_body()
        if not data:
            raise ApiError(400, "empty body: send the image bytes as the request body")
        with busy_is_503():
            faces.validate(data, s.settings.max_image_pixels, lim.decoders)
        return queue_image(data, filename, "upload")


@bp.post("/scan/url")
@needs(FULL)
def scan_url() -> Response:
    s = services()
    body = read_json()
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str):
        raise ApiError(400, 'send JSON {"url": "http(s)://..."}')
    check_url(url)
    known = s.store.hash_for_url(url)
    if known:
        g.detail = f"hash {known}: URL already scanned, not fetched again"
        metrics.SCANS_ACCEPTED.labels("url", "known_url").inc()
        return answer(known, "known_url")
    lim = limits()
    with lim.slow_work("URL fetch"), lim.body(s.settings.max_upload_bytes):
        data = s.fetcher.fetch(url)
        try:
            with busy_is_503():
                faces.validate(data, s.settings.max_image_pixels, lim.decoders)
        except InvalidImage as exc:
            raise ApiError(422, f"URL did not yield an image: {exc}") from None
        return queue_image(data, url, "url")
