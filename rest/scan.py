"""The scan routes (the lab's paths): an upload or a URL becomes a queued image."""

from __future__ import annotations

import contextlib
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from facerec import faces, metrics
from facerec.errors import BrokerUnavailable, ImageStoreUnavailable, InvalidImage, RedisUnavailable
from facerec.fetch import check_url
from facerec.messages import MAX_NAME_LENGTH, OUTCOME_HEADER, ImageMessage
from rest.access import FULL, needs
from rest.errors import ApiError
from rest.services import services

bp = Blueprint("scan", __name__)


def read_body() -> bytes:
    # Werkzeug refuses a larger Content-Length at once (MAX_CONTENT_LENGTH); a chunked body
    # has none, so the cap is enforced here too (one byte more tells "over the cap" apart).
    cap = services().settings.max_upload_bytes
    data = request.stream.read(cap + 1)
    if len(data) > cap:
        raise ApiError(413, f"image larger than the cap of {cap} bytes")
    return data


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
    data = read_body()
    if not data:
        raise ApiError(400, "empty body: send the image bytes as the request body")
    faces.validate(data, services().settings.max_image_pixels)
    return queue_image(data, filename, "upload")


@bp.post("/scan/url")
@needs(FULL)
def scan_url() -> Response:
    s = services()
    body: Any = request.get_json(silent=True)
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str):
        raise ApiError(400, 'send JSON {"url": "http(s)://..."}')
    check_url(url)
    known = s.store.hash_for_url(url)
    if known:
        g.detail = f"hash {known}: URL already scanned, not fetched again"
        metrics.SCANS_ACCEPTED.labels("url", "known_url").inc()
        return answer(known, "known_url")
    data = s.fetcher.fetch(url)
    try:
        faces.validate(data, s.settings.max_image_pixels)
    except InvalidImage as exc:
        raise ApiError(422, f"URL did not yield an image: {exc}") from None
    return queue_image(data, url, "url")
