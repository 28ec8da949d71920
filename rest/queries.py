"""The read routes: which images match (the lab's /match), one image's view and bytes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from facerec import faces
from facerec.messages import HASH_DESCRIPTION, is_image_hash
from rest.access import READ, needs
from rest.errors import ApiError
from rest.services import services

bp = Blueprint("queries", __name__)


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter `name` as an integer in lo..hi (`default` when absent), or a 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be in {lo}..{hi}")
    return value


def checked_hash(image_hash: str) -> str:
    if not is_image_hash(image_hash):
        raise ApiError(400, f"hash must be {HASH_DESCRIPTION}")
    return image_hash


@bp.get("/match/<image_hash>")
@needs(READ)
def match(image_hash: str) -> Response:
    """The lab's route; ?tolerance=T (at most MATCH_TOLERANCE) keeps the closer matches."""
    s = services()
    tolerance = None
    if "tolerance" in request.args:
        try:
            tolerance = float(request.args["tolerance"])
        except ValueError:
            raise ApiError(400, "tolerance must be a number") from None
        if not 0 < tolerance <= s.settings.match_tolerance:
            raise ApiError(400, f"tolerance must be in (0, {s.settings.match_tolerance}] "
                                f"(MATCH_TOLERANCE: matches beyond it are not recorded)")
    return jsonify(s.store.matching_names(checked_hash(image_hash), tolerance))


@bp.get("/image/<image_hash>")
@needs(READ)
def image(image_hash: str) -> Response:
    view = services().store.image_view(checked_hash(image_hash))
    if view is None:
        raise ApiError(404, "no image with this hash was ever scanned")
    return jsonify(view)


@bp.get("/image/<image_hash>/content")
@needs(READ)
def image_content(image_hash: str) -> Response:
    images = services().images
    checked_hash(image_hash)
    if images.inline:
        raise ApiError(404, "images are not stored (IMAGE_STORE=inline)")
    data = images.read(image_hash)
    if data is None:
        raise ApiError(404, "no stored image with this hash")
    kind = faces.image_format(data)
    response = Response(data, content_type=f"image/{kind.lower()}" if kind
                        else "application/octet-stream")
    # Stored bytes are whatever was uploaded: a browser must neither guess another type
    # (HTML, script) nor render them in this origin. The file name is the hash: no
    # uploaded name ever reaches a header.
    extension = {"JPEG": "jpg", "TIFF": "tif"}.get(kind or "", (kind or "bin").lower())
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = f'attachment; filename="{image_hash}.{extension}"'
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response
