"""The web page under /ui: upload, gallery, an image's faces and matches, search, people.

The pages are shells: a template with the page's controls and one script (static/ui/ui.js)
that fetches every piece of data with the browser session's credential in an
`Authorization` header. So a page itself holds no data and is open, like the API
description; what it shows comes from routes that need READ (or FULL to change), exactly
as for any other client. Everything user-given (names, URLs) reaches the DOM through
`textContent` only; templates autoescape what little they render.

The few JSON routes the page needs and the API lacks live here, under /ui/api/: who am I
(scope, whether images are stored), the gallery (newest first), and the status of a batch
of uploads (one request however many files, polled with backoff: README "Web page").
Thumbnails are made once, on first request (after the bounded decoder's structural
checks; a JPEG decoded at a reduced DCT scale), and kept next to the image in the image
store, whose delete() removes them with it.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

from flask import Blueprint, Response, abort, jsonify, render_template, request, send_file
from PIL import ExifTags, Image, ImageOps

from facerec import faces
from facerec.credentials import FULL, identify
from facerec.errors import InvalidImage
from facerec.messages import is_image_hash
from rest.access import OPEN, READ, needs
from rest.errors import ApiError
from rest.queries import checked_hash, int_arg
from rest.scan import busy_is_503, limits, read_json
from rest.services import services

bp = Blueprint("ui", __name__, template_folder="templates")

STATIC = Path(__file__).resolve().parent / "static" / "ui"
# Only these files are served: the vendored test tools next to them never are.
STATIC_FILES = {"ui.js": "text/javascript", "ui.css": "text/css",
                "favicon.svg": "image/svg+xml"}
THUMBNAIL_SIDE = 320
FACE_SIDE = 128
MAX_PAGE = 100
MAX_STATUS_HASHES = 200
# The thumbnail's JPEG comment records the upright original's size, so a face box (in the
# original's pixels) can be cut from the thumbnail without reading the original again.
_SIZE_COMMENT = re.compile(rb"facerec-size (\d{1,6})x(\d{1,6})")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@bp.after_request
def _headers(response: Response) -> Response:
    """Every /ui answer: no inline script, no type guessing, never inside a frame."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


# -- pages ---------------------------------------------------------------------------------

def _page(page: str, **context: object) -> str:
    return render_template(f"ui/{page}.html", page=page, **context)


@bp.get("/ui")
@bp.get("/ui/")
@needs(OPEN)
def gallery() -> str:
    return _page("gallery")


@bp.get("/ui/image/<image_hash>")
@needs(OPEN)
def image_page(image_hash: str) -> str:
    if not is_image_hash(image_hash):
        abort(404)
    return _page("image", image_hash=image_hash)


@bp.get("/ui/search")
@needs(OPEN)
def search_page() -> str:
    return _page("search")


@bp.get("/ui/people")
@needs(OPEN)
def people_page() -> str:
    return _page("people")


@bp.get("/ui/people/<int:person>")
@needs(OPEN)
def person_page(person: int) -> str:
    return _page("person", person=person)


@bp.get("/ui/static/<name>")
@needs(OPEN)
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        abort(404)
    response = send_file(STATIC / name, mimetype=STATIC_FILES[name], max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


# -- JSON for the page ------------------------------------------------------------------------

@bp.get("/ui/api/whoami")
@needs(OPEN)
def whoami() -> Response:
    """What the page may show: whether a credential is needed, the one presented (its id
    and scope, never the secret), and whether images are kept to be shown."""
    s = services()
    # IMAGE_STORE_KEEP=false deletes each image once scanned: nothing is left to show.
    stored = not s.images.inline and s.settings.image_store_keep
    if not s.credentials:
        return jsonify(required=False, id=None, scope=FULL, stored=stored)
    credential = identify(s.credentials, request.headers.get("Authorization", ""))
    return jsonify(required=True, id=credential.id if credential else None,
                   scope=credential.scope if credential else None, stored=stored)


@bp.get("/ui/api/images")
@needs(READ)
def images() -> Response:
    """The gallery: image views, newest first; ?name= keeps those with a name containing it."""
    offset = int_arg("offset", 0, 0, 10**9)
    limit = int_arg("limit", 24, 1, MAX_PAGE)
    name = request.args.get("name", "")[:200]
    total, views = services().store.recent_images(offset, limit, name)
    return jsonify(images=views, total=total, offset=offset, limit=limit, name=name)


@bp.post("/ui/api/status")
@needs(READ)
def status() -> Response:
    """Where a batch of images stands, in one request: {"hashes": [...]} -> {"images":
    {hash: {"status", "reason", "faces", "names"} or null if never seen}}."""
    body = read_json()
    hashes = body.get("hashes") if isinstance(body, dict) else None
    if not (isinstance(hashes, list) and all(isinstance(h, str) for h in hashes)):
        raise ApiError(400, 'send JSON {"hashes": ["<hash>", ...]}')
    if len(hashes) > MAX_STATUS_HASHES:
        raise ApiError(400, f"at most {MAX_STATUS_HASHES} hashes at once")
    wanted = list(dict.fromkeys(checked_hash(h) for h in hashes))
    return jsonify(images=services().store.image_states(wanted))


# -- thumbnails -----------------------------------------------------------------------------

# EXIF orientations that turn the picture a quarter (width and height trade places).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def _draft_scale(width: int, height: int, side: int) -> int:
    """The JPEG decoder's reduction (1, 2, 4 or 8) Pillow's draft picks for `side`."""
    fits = min(width // side, height // side)
    return next(s for s in (8, 4, 2, 1) if s <= max(fits, 1))


def thumbnail_cost(info: faces.Inspection, side: int = THUMBNAIL_SIDE) -> int:
    """The memory make_thumbnail needs at its peak: a JPEG is decoded reduced (its DCT
    scaling), so a 24-megapixel photo costs a few MiB, not the worker's full decode."""
    if info.format != "JPEG":
        return info.decode_bytes
    eighth = -(-info.width // 8) * -(-info.height // 8) * 4
    coefficients = max(0, info.check_bytes - eighth)  # progressive JPEGs' buffer
    scale = _draft_scale(info.width, info.height, side)
    pixels = -(-info.width // scale) * -(-info.height // scale)
    return pixels * (4 + 4 + 3) + coefficients


def make_thumbnail(data: bytes, max_pixels: int, side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG at most `side` pixels on its longer side, upright (EXIF), from image bytes
    that pass the bounded decoder's structural checks (faces.inspect); a JPEG is decoded
    at the smallest DCT scale still at least `side`. Its comment records the upright
    original's size, in whose pixels face boxes are given."""
    info = faces.inspect(data, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=sorted(faces.ACCEPTED_FORMATS)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (side, side))
            image.load()
            turns = image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS
            upright = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"corrupt or truncated image: {exc}") from None
    width, height = (info.height, info.width) if turns else (info.width, info.height)
    upright.thumbnail((side, side))
    out = io.BytesIO()
    upright.save(out, "JPEG", quality=80, comment=f"facerec-size {width}x{height}".encode())
    return out.getvalue()


def original_size(thumbnail: bytes) -> tuple[int, int] | None:
    """The original's (width, height) a thumbnail of make_thumbnail records."""
    found = _SIZE_COMMENT.search(thumbnail[:4096])
    return (int(found.group(1)), int(found.group(2))) if found else None


def _thumbnail(image_hash: str) -> bytes:
    """The stored thumbnail, made and stored first if there is none yet."""
    s = services()
    if s.images.inline:
        raise ApiError(404, "images are not stored (IMAGE_STORE=inline)")
    thumbnail = s.images.read_thumbnail(image_hash)
    if thumbnail is not None:
        return thumbnail
    data = s.images.read(image_hash)
    if data is None:
        raise ApiError(404, "no stored image with this hash")
    max_pixels = s.settings.max_image_pixels
    cost = thumbnail_cost(faces.inspect(data, max_pixels))
    with busy_is_503(), limits().decoders.hold(cost):
        thumbnail = make_thumbnail(data, max_pixels)
    s.images.put_thumbnail(image_hash, thumbnail)
    # An erasure may have removed the image while the thumbnail was made: never leave a
    # thumbnail of an image that is gone (delete() removes both, the thumbnail first).
    if s.images.read(image_hash) is None:
        s.images.delete(image_hash)
        raise ApiError(404, "no stored image with this hash")
    return thumbnail


def _jpeg(data: bytes, etag: str) -> Response:
    response = Response(data, content_type="image/jpeg")
    # Revalidated on every use (cheap: 304), so an erased image's thumbnail is not shown
    # from the browser's cache once it is gone from the service.
    response.headers["Cache-Control"] = "private, no-cache"
    response.set_etag(etag)
    response.make_conditional(request)
    return response


@bp.get("/image/<image_hash>/thumbnail")
@needs(READ)
def thumbnail(image_hash: str) -> Response:
    h = checked_hash(image_hash)
    if request.if_none_match.contains(h) and services().images.read_thumbnail(h) is not None:
        return _jpeg(b"", h)
    return _jpeg(_thumbnail(h), h)


@bp.get("/image/<image_hash>/face/<int:face>")
@needs(READ)
def face_thumbnail(image_hash: str, face: int) -> Response:
    """One face, cut from the image's thumbnail (with a margin), FACE_SIDE pixels square."""
    h = checked_hash(image_hash)
    etag = f"{h}-{face}"
    # A face's box never changes once found: the browser's copy is good while the image
    # (its thumbnail) is still held.
    if request.if_none_match.contains(etag) and services().images.read_thumbnail(h) is not None:
        return _jpeg(b"", etag)
    boxes = services().store.face_boxes([h])[h]
    if not 0 <= face < len(boxes):
        raise ApiError(404, "no such face")
    small = _thumbnail(h)
    size = original_size(small)
    with Image.open(io.BytesIO(small), formats=["JPEG"]) as image:
        image.load()
        scale = image.width / size[0] if size else 1.0
        top, right, bottom, left = (v * scale for v in boxes[face])
        margin = (bottom - top) * 0.3
        crop = image.crop((round(max(0, left - margin)), round(max(0, top - margin)),
                           round(min(image.width, right + margin)),
                           round(min(image.height, bottom + margin))))
        crop.thumbnail((FACE_SIDE, FACE_SIDE))
        out = io.BytesIO()
        crop.save(out, "JPEG", quality=85)
    return _jpeg(out.getvalue(), etag)
