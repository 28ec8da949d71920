"""What the worker does with a search request: find the faces, match each, answer.

A search is asked by rest (POST /search) over RabbitMQ and answered to the asker only:
nothing of the query is written anywhere. The answer is plain JSON, checked by rest.
"""

from __future__ import annotations

import json
import logging
import time

from facerec import faces, metrics
from facerec.broker import Delivery, Reply
from facerec.errors import InvalidImage
from facerec.pipeline import Processor

SEARCH_SCHEMA = 1


def _number(headers: dict[str, object], key: str) -> float | None:
    value = headers.get(key)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return float(value) if isinstance(value, (str, int, float)) and str(value) else None


class SearchHandler:
    """Called on the request thread for each search; never raises."""

    def __init__(self, processor: Processor, log: logging.Logger) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.log = log

    def __call__(self, delivery: Delivery) -> Reply:
        start = time.monotonic()
        headers = dict(delivery.headers or {})
        try:
            tolerance = _number(headers, "tolerance") or self.settings.match_tolerance
            limit_value = _number(headers, "limit")
            if not 0 < tolerance <= 1:
                raise ValueError("tolerance must be in (0, 1]")
            limit = int(limit_value) if limit_value else None
            rgb = faces.decode(delivery.body, self.settings.max_image_pixels)
            found = faces.find_faces(rgb, self.settings.detection_model,
                                     self.settings.detect_max_side, self.settings.detect_upsample)
            per_face = self.processor.search(found, tolerance, limit)
        except (InvalidImage, ValueError) as exc:  # bytes or parameters the asker got wrong
            metrics.SEARCHES.labels("invalid").inc()
            return Reply(json.dumps({"error": str(exc)}).encode(), {"status": "invalid"})
        answer = {"schema": SEARCH_SCHEMA, "faces": [
            {"box": list(box), "matches": [{"hash": m.image_hash, "distance": m.distance,
                                            "face": m.stored_face} for m in matches]}
            for box, matches in zip(found.boxes, per_face, strict=True)]}
        metrics.SEARCHES.labels("answered").inc()
        self.log.info("search: %d faces, %d matches in %.2fs (nothing stored)", len(found.boxes),
                      sum(len(m) for m in per_face), time.monotonic() - start)
        return Reply(json.dumps(answer).encode(), {"status": "ok"})
