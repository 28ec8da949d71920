"""People: the stored faces grouped by who they are (facerec.store, "People").

A person is made by the workers as faces arrive; here they are listed, named, merged,
split (faces moved out to a person of their own), marked apart (never to be merged), and
erased (every image holding one of the person's faces, as DELETE /image does).
"""

from __future__ import annotations

import unicodedata

from flask import Blueprint, Response, g, jsonify

from facerec import metrics
from facerec.messages import is_image_hash
from rest.access import FULL, READ, needs
from rest.erase import erase_held
from rest.errors import ApiError
from rest.queries import int_arg
from rest.scan import read_json
from rest.services import services

bp = Blueprint("people", __name__)

MAX_PERSON_NAME = 200
MAX_PAGE = 200
DEFAULT_PAGE = 50


def _found(person_id: int) -> dict[str, object]:
    person = services().store.person(person_id)
    if person is None:
        raise ApiError(404, "no person with this id")
    return person


def _summary(person_id: int) -> dict[str, object]:
    """The person as the list shows it (its face count, not its faces), or a 404."""
    summary = services().store.person_summary(person_id)
    if summary is None:
        raise ApiError(404, "no person with this id")
    return summary


@bp.get("/people")
@needs(READ)
def people() -> Response:
    offset = int_arg("offset", 0, 0, 10**9)
    limit = int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    total, page = services().store.people_page(offset, limit)
    return jsonify(people=page, total=total, offset=offset, limit=limit)


@bp.get("/people/<int:person_id>")
@needs(READ)
def person(person_id: int) -> Response:
    return jsonify(_found(person_id))


@bp.put("/people/<int:person_id>")
@needs(FULL)
def name_person(person_id: int) -> Response:
    """Name a person ({"name": "…"}), or clear the name ({"name": null})."""
    _summary(person_id)
    body = read_json()
    if not isinstance(body, dict) or "name" not in body:
        raise ApiError(400, 'the body must be a JSON object {"name": "…"} (null clears it)')
    name = body["name"]
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "name must be a non-empty string or null")
        name = unicodedata.normalize("NFC", name.strip())
        if len(name) > MAX_PERSON_NAME:
            raise ApiError(400, f"name must be at most {MAX_PERSON_NAME} characters")
        if any(unicodedata.category(c).startswith("C") for c in name):
            raise ApiError(400, "name must not contain control or invisible format characters")
    if not services().store.name_person(person_id, name):
        raise ApiError(404, "no person with this id")
    metrics.PEOPLE_CHANGES.labels("name").inc()
    services().log.info("person %d %s (by %s)", person_id, "named" if name else "unnamed",
                        g.get("credential") or "anyone")
    return jsonify(_summary(person_id))


@bp.post("/people/<int:person_id>/merge")
@needs(FULL)
def merge(person_id: int) -> Response:
    """Move every face of person {"from": id} into this one."""
    other = _other_person(read_json())
    answer = services().store.merge_people(person_id, other)
    if answer == "missing":
        raise ApiError(404, "no person with one of these ids")
    if answer != "ok":
        raise ApiError(409, f"these cannot be merged: {answer}")
    metrics.PEOPLE_CHANGES.labels("merge").inc()
    services().log.info("person %d merged into person %d (by %s)", other, person_id,
                        g.get("credential") or "anyone")
    return jsonify(_summary(person_id))


def _other_person(body: object) -> int:
    other = body.get("from") if isinstance(body, dict) else None
    if not isinstance(other, int) or isinstance(other, bool) or other < 0:
        raise ApiError(400, 'the body must be a JSON object {"from": <person id>}')
    return other


@bp.post("/people/<int:person_id>/split")
@needs(FULL)
def split(person_id: int) -> Response:
    """Move faces ({"faces": [{"hash": …, "face": n}, …]}) that are not this person into a
    new person, marked apart from this one so that no later face merges them again."""
    _summary(person_id)
    body = read_json()
    faces = body.get("faces") if isinstance(body, dict) else None
    if not (isinstance(faces, list) and 0 < len(faces) <= MAX_PAGE and all(
            isinstance(f, dict) and isinstance(f.get("hash"), str) and is_image_hash(f["hash"])
            and isinstance(f.get("face"), int) and not isinstance(f["face"], bool)
            and f["face"] >= 0 for f in faces)):
        raise ApiError(400, f'the body must be {{"faces": [{{"hash": …, "face": n}}, …]}} '
                            f"(1 to {MAX_PAGE} faces)")
    answer, new = services().store.split_person(
        person_id, [(f["hash"], f["face"]) for f in faces])
    if answer != "ok":
        raise ApiError(409, f"cannot split: {answer}")
    metrics.PEOPLE_CHANGES.labels("split").inc()
    services().log.info("person %d: %d faces moved out to person %d (by %s)", person_id,
                        len(faces), new, g.get("credential") or "anyone")
    return jsonify(person=_summary(new), rest=_summary(person_id))


@bp.post("/people/<int:person_id>/apart")
@needs(FULL)
def apart(person_id: int) -> Response:
    """Mark two people ({"from": id}) as never the same person: no face merges them."""
    other = _other_person(read_json())
    answer = services().store.mark_apart(person_id, other)
    if answer == "missing":
        raise ApiError(404, "no person with one of these ids")
    if answer != "ok":
        raise ApiError(409, "a person cannot be apart from itself")
    metrics.PEOPLE_CHANGES.labels("apart").inc()
    return jsonify(_summary(person_id))


@bp.delete("/people/<int:person_id>")
@needs(FULL)
def erase_person(person_id: int) -> Response:
    """Erase every image holding a face of this person: a person's biometric data lives
    in the images' encodings (database 3), and a photo shows everyone in it."""
    s = services()
    _summary(person_id)
    reports = [r for h in s.store.person_images(person_id)
               if (r := erase_held(h, "person")) is not None]
    s.log.info("person %d erased (by %s): %d images", person_id,
               g.get("credential") or "anyone", len(reports))
    return jsonify(id=person_id, erased=[r["hash"] for r in reports], images=reports)
