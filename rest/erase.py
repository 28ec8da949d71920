"""Erasure (GDPR art. 17): an image, or a name, removed from everything that holds it.

The order makes a retry complete what a failure left: the image store and the
dead-letter queue are cleared before Redis, so a DELETE that failed half-way can be
repeated with the same hash and still finds what is left.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from facerec import metrics
from facerec.store import Erased
from rest.access import FULL, needs
from rest.errors import ApiError
from rest.queries import checked_hash
from rest.services import Services, services

bp = Blueprint("erase", __name__)


def _outside_redis(s: Services, image_hash: str) -> tuple[bool, int]:
    """(a stored object was deleted, dead letters dropped) for one image."""
    return s.images.delete(image_hash), s.broker.purge_dead(image_hash)


def _report(erased: Erased | None, image_hash: str, stored: bool, dead: int
            ) -> dict[str, object]:
    return {"hash": image_hash, "names": erased.names if erased else [],
            "faces": erased.faces if erased else 0,
            "matches": erased.matches if erased else 0,
            "stored_object": stored, "dead_letters": dead}


def _log(what: str, image_hash: str, erased: Erased | None, stored: bool, dead: int) -> None:
    # What was erased and by whom: counts and the hash, never the names (they may be
    # personal) and never the credential itself.
    metrics.ERASURES.labels(what).inc()
    services().log.info("erased image %s (by %s, %s): %d faces, %d names, %d matches, "
                        "stored object %s, %d dead letters", image_hash,
                        g.get("credential") or "anyone", what, erased.faces if erased else 0,
                        len(erased.names) if erased else 0, erased.matches if erased else 0,
                        "deleted" if stored else "none", dead)


def erase_held(image_hash: str, what: str) -> dict[str, object] | None:
    """Erase one image everywhere (`what` asked for it: "image", "person"); its report,
    or None if nothing of it was held."""
    s = services()
    stored, dead = _outside_redis(s, image_hash)
    erased = s.store.erase_image(image_hash)
    if erased is None and not stored and not dead:
        return None
    _log(what, image_hash, erased, stored, dead)
    return _report(erased, image_hash, stored, dead)


@bp.delete("/image/<image_hash>")
@needs(FULL)
def erase_image(image_hash: str) -> Response:
    report = erase_held(checked_hash(image_hash), "image")
    if report is None:
        raise ApiError(404, "no image with this hash is held")
    return jsonify(report)


@bp.delete("/name/<path:name>")
@needs(FULL)
def erase_name(name: str) -> Response:
    """Remove a name; an image left without any name is erased with everything it holds."""
    s = services()
    found = s.store.erase_name(name)
    if found is None:
        raise ApiError(404, "no image has this name")
    named, erased = found
    reports = []
    for image in erased:
        stored, dead = _outside_redis(s, image.image_hash)
        _log("name", image.image_hash, image, stored, dead)
        reports.append(_report(image, image.image_hash, stored, dead))
    if not erased:
        metrics.ERASURES.labels("name_only").inc()
    services().log.info("name removed from image %s (by %s); %d images erased with it",
                        named or "-", g.get("credential") or "anyone", len(erased))
    return jsonify(name=name, hash=named or None, erased=reports)
