"""POST /search: who is in this photo? Asked of the workers, where the index is; nothing
of the query is stored or queued for scanning.

The request goes to the workers' search queue (facerec.broker.Broker.request: RabbitMQ
direct reply-to), which no scan ever waits in, and is answered by whichever worker takes
it, against every face committed so far. No worker listening: 503 at once; no answer
within SEARCH_TIMEOUT: 503 then (the request expires in the queue, so no worker does it
later for nobody).
"""

from __future__ import annotations

import json
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from facerec import faces, metrics
from facerec.broker import SEARCH_ROUTING_KEY
from facerec.errors import SearchUnavailable
from rest.access import READ, needs
from rest.errors import ApiError
from rest.scan import read_body
from rest.services import services

bp = Blueprint("search", __name__)
MAX_LIMIT = 1000


def _parameters(default_tolerance: float) -> tuple[float, int | None]:
    try:
        tolerance = float(request.args.get("tolerance", default_tolerance))
        limit = int(request.args["limit"]) if "limit" in request.args else None
    except ValueError:
        raise ApiError(400, "tolerance must be a number and limit an integer") from None
    if not 0 < tolerance <= 1:
        raise ApiError(400, "tolerance must be in (0, 1]")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise ApiError(400, f"limit must be in 1..{MAX_LIMIT}")
    return tolerance, limit


def _checked(answer: Any) -> list[dict[str, Any]]:
    """The worker's answer, field by field: JSON from the network is data, nothing more."""
    if not isinstance(answer, dict) or not isinstance(answer.get("faces"), list):
        raise SearchUnavailable("a worker gave a malformed answer")
    out = []
    for face in answer["faces"]:
        box, matches = face.get("box"), face.get("matches")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
                and isinstance(matches, list)):
            raise SearchUnavailable("a worker gave a malformed answer")
        out.append({"box": box, "matches": [
            {"hash": str(m["hash"]), "distance": float(m["distance"]),
             "face": int(m.get("face", -1))} for m in matches]})
    return out


@bp.post("/search")
@needs(READ)
def search() -> Response:
    s = services()
    started = time.perf_counter()
    tolerance, limit = _parameters(s.settings.match_tolerance)
    data = read_body()
    if not data:
        raise ApiError(400, "empty body: send the image bytes as the request body")
    faces.validate(data, s.settings.max_image_pixels)
    headers = {"schema": 1, "tolerance": repr(tolerance)}
    if limit is not None:
        headers["limit"] = str(limit)
    try:
        reply = s.broker.request(SEARCH_ROUTING_KEY, data, headers, s.settings.search_timeout)
    except SearchUnavailable:
        metrics.SEARCHES.labels("unavailable").inc()
        raise
    try:
        answer = json.loads(reply.body)
    except ValueError:
        raise SearchUnavailable("a worker gave a malformed answer") from None
    if reply.headers.get("status") == "invalid":
        raise ApiError(400, str(answer.get("error", "not a searchable image")))
    if reply.headers.get("status") != "ok":
        raise SearchUnavailable("the worker failed on this search")
    found = _checked(answer)
    hashes = sorted({m["hash"] for face in found for m in face["matches"]})
    names = dict(zip(hashes, s.store.names_of(hashes), strict=True))
    people = s.store.people_of([(m["hash"], m["face"]) for face in found
                                for m in face["matches"]])
    for face in found:
        for m in face["matches"]:
            m["names"] = sorted(names[m["hash"]])
            m["person"] = people.get((m["hash"], m["face"]))
    g.detail = f"{len(found)} faces, {len(hashes)} matching images, nothing stored"
    metrics.SEARCH_SECONDS.observe(time.perf_counter() - started)
    return jsonify(faces=found)
