"""The web page's server side without a browser: headers, escaping, access, thumbnails.

Through Flask's test client: the real app on the test's real Redis and RabbitMQ vhost
(tests/e2e drives the page itself in Chromium).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from facerec import faces
from facerec.messages import sha256_hex
from rest import scan, ui
from tests.services import FACES, ROOT

PHOTO = (FACES / "obama/obama.jpg").read_bytes()
H = sha256_hex(PHOTO)
KEYS = "admin:full:full-secret-1,viewer:read:read-secret-1"
FULL = {"Authorization": "Bearer full-secret-1"}
READ = {"Authorization": "Bearer read-secret-1"}
PAGES = ["/ui", "/ui/", f"/ui/image/{H}", "/ui/search", "/ui/people", "/ui/people/7"]
SCRIPT = ROOT / "rest" / "static" / "ui" / "ui.js"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def parsed(html: str) -> _Tags:
    tags = _Tags()
    tags.feed(html)
    return tags


@pytest.mark.parametrize("path", [*PAGES, "/ui/static/ui.js", "/ui/static/ui.css",
                                  "/ui/api/whoami"])
def test_every_ui_answer_forbids_inline_script_sniffing_and_framing(
        client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, path
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_inline_script_or_handler_and_label_every_control(
        client: FlaskClient, path: str) -> None:
    tags = parsed(client.get(path).get_data(as_text=True))
    scripts = [a for t, a in tags.tags if t == "script"]
    assert scripts and all(a.get("src") == "/ui/static/ui.js" for a in scripts)
    assert tags.script_text.strip() == ""
    for tag, attrs in tags.tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
    labelled = {a.get("for") for t, a in tags.tags if t == "label"}
    for tag, attrs in tags.tags:
        if tag in ("input", "textarea", "select"):
            assert attrs.get("id") in labelled or attrs.get("aria-label"), (path, attrs)


def test_the_script_puts_text_into_the_page_never_html() -> None:
    source = SCRIPT.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "localStorage"):
        assert sink not in source, sink
    assert "sessionStorage" in source and "textContent" in source


def test_an_image_page_for_anything_but_a_hash_is_404_and_echoes_nothing(
        client: FlaskClient) -> None:
    response = client.get("/ui/image/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert response.status_code == 404
    assert b"<script>alert" not in response.data
    # A hash page renders the hash it was given, and nothing from the query string.
    page = client.get(f"/ui/image/{H}?x=%3Cb%3Eoops%3C/b%3E").get_data(as_text=True)
    assert H in page and "<b>oops" not in page and "oops" not in page


def test_only_the_page_s_own_static_files_are_served(client: FlaskClient) -> None:
    assert client.get("/ui/static/ui.js").headers["Content-Type"].startswith("text/javascript")
    for path in ("/ui/static/axe.min.js", "/ui/static/vendor/axe-core/axe.min.js",
                 "/ui/static/..%2Fvendor%2Faxe-core%2Faxe.min.js", "/static/ui/ui.js",
                 "/static/vendor/axe-core/axe.min.js", "/ui/static/ui.py"):
        assert client.get(path).status_code == 404, path


def test_the_vendored_axe_core_carries_its_version_and_licence() -> None:
    vendor = ROOT / "rest" / "static" / "vendor" / "axe-core"
    script = (vendor / "axe.min.js").read_bytes()
    version = re.search(rb"axe v(4\.\d+\.\d+)", script[:300])
    assert version, script[:300]
    notes = (vendor / "README.md").read_text()
    assert f"axe-core {version.group(1).decode()}" in notes
    assert sha256_hex(script) in notes
    assert "Mozilla Public License" in (vendor / "LICENSE").read_text()


def test_whoami_says_what_the_presented_credential_may_do(
        make_client: Callable[..., FlaskClient], tmp_path: Path) -> None:
    open_client = make_client()
    assert open_client.get("/ui/api/whoami").json == {
        "required": False, "id": None, "scope": "full", "stored": False}
    guarded = make_client(api_keys=KEYS, image_store=tmp_path.as_uri())
    assert guarded.get("/ui/api/whoami").json == {
        "required": True, "id": None, "scope": None, "stored": True}
    assert guarded.get("/ui/api/whoami",
                       headers={"Authorization": "Bearer wrong-secret"}).json["scope"] is None
    assert guarded.get("/ui/api/whoami", headers=READ).json["scope"] == "read"
    me = guarded.get("/ui/api/whoami", headers=FULL).json
    assert (me["id"], me["scope"]) == ("admin", "full")
    assert "full-secret-1" not in guarded.get("/ui/api/whoami", headers=FULL).get_data(True)


def test_pages_are_open_but_their_data_needs_a_credential(
        make_client: Callable[..., FlaskClient], tmp_path: Path) -> None:
    guarded = make_client(api_keys=KEYS, image_store=tmp_path.as_uri())
    for path in PAGES:
        assert guarded.get(path).status_code == 200, path
    data_routes = [("GET", "/ui/api/images"), ("POST", "/ui/api/status"),
                   ("GET", f"/image/{H}/thumbnail"), ("GET", f"/image/{H}/face/0")]
    for method, path in data_routes:
        assert guarded.open(path, method=method, json={"hashes": []}).status_code == 401, path
        assert guarded.open(path, method=method, json={"hashes": []},
                            headers={"Authorization": "Bearer nope-nope"}).status_code == 401
    assert guarded.post("/ui/api/status", json={"hashes": []}, headers=READ).json == {
        "images": {}}
    # A read-only credential reads thumbnails but still may not scan.
    assert guarded.post("/scan/image/a.jpg", data=PHOTO, headers=READ).status_code == 403
    assert guarded.post("/scan/image/a.jpg", data=PHOTO, headers=FULL).status_code == 200
    thumb = guarded.get(f"/image/{H}/thumbnail", headers=READ)
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"


def test_the_batch_status_answers_each_hash_in_one_request(client: FlaskClient) -> None:
    assert client.post("/scan/image/obama.jpg", data=PHOTO).status_code == 200
    unknown = "0" * 64
    answer = client.post("/ui/api/status", json={"hashes": [H, unknown, H]}).json
    assert answer == {"images": {H: {"status": "queued", "reason": None, "faces": 0,
                                     "names": ["obama.jpg"]}, unknown: None}}
    for bad in ({"hashes": ["nothex"]}, {"hashes": "x"}, {"nohashes": []},
                {"hashes": [unknown] * (ui.MAX_STATUS_HASHES + 1)}):
        assert client.post("/ui/api/status", json=bad).status_code == 400, bad


def test_a_thumbnail_is_made_once_stored_beside_the_image_and_erased_with_it(
        make_client: Callable[..., FlaskClient], tmp_path: Path) -> None:
    client = make_client(image_store=tmp_path.as_uri())
    assert client.post("/scan/image/obama.jpg", data=PHOTO).status_code == 200
    first = client.get(f"/image/{H}/thumbnail")
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
    assert first.headers["Cache-Control"] == "private, no-cache"
    with Image.open(io.BytesIO(first.data)) as thumb, Image.open(io.BytesIO(PHOTO)) as photo:
        assert max(thumb.size) == ui.THUMBNAIL_SIDE < max(photo.size)
        assert abs(thumb.width / thumb.height - photo.width / photo.height) < 0.02
        assert ui.original_size(first.data) == photo.size
    stored = tmp_path / f"{H}.thumbnail"
    assert stored.read_bytes() == first.data
    # Made once: the next request is the stored file, not a new decode of the image.
    stored.write_bytes(first.data + b"kept")
    assert client.get(f"/image/{H}/thumbnail").data == first.data + b"kept"
    assert client.get(f"/image/{H}/thumbnail",
                      headers={"If-None-Match": f'"{H}"'}).status_code == 304
    assert client.delete(f"/image/{H}").status_code == 200
    assert not stored.exists() and not (tmp_path / H).exists()
    assert client.get(f"/image/{H}/thumbnail").status_code == 404


def test_without_stored_images_there_are_no_thumbnails(client: FlaskClient) -> None:
    assert client.post("/scan/image/obama.jpg", data=PHOTO).status_code == 200
    response = client.get(f"/image/{H}/thumbnail")
    assert response.status_code == 404
    assert "IMAGE_STORE=inline" in response.json["error"]
    assert client.get(f"/image/{H}/face/0").status_code == 404


def test_the_gallery_parameters_are_checked(client: FlaskClient) -> None:
    for query in ("offset=-1", "limit=0", f"limit={ui.MAX_PAGE + 1}", "offset=x"):
        assert client.get(f"/ui/api/images?{query}").status_code == 400, query
    answer = client.get("/ui/api/images?limit=5").json
    assert answer["images"] == [] and answer["total"] == 0


def _jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70, exif=exif.tobytes())
    return out.getvalue()


def test_a_photo_too_large_to_decode_whole_in_rest_still_gets_its_thumbnail(
        make_client: Callable[..., FlaskClient], tmp_path: Path) -> None:
    big = _jpeg(6000, 4000)  # 24 megapixels: a full decode would need ~340 MiB
    info = faces.inspect(big, 50_000_000)
    assert info.decode_bytes > scan.DECODE_MEMORY
    assert ui.thumbnail_cost(info) < scan.DECODE_MEMORY // 10
    client = make_client(image_store=tmp_path.as_uri())
    h = client.post("/scan/image/big.jpg", data=big).json["hash"]
    response = client.get(f"/image/{h}/thumbnail")
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.data)) as thumb:
        assert thumb.size == (320, 213)
    assert ui.original_size(response.data) == (6000, 4000)


def test_a_thumbnail_is_upright_as_the_worker_sees_the_photo(tmp_path: Path) -> None:
    turned = _jpeg(800, 400, orientation=6)  # stored lying down, shown standing up
    thumb = ui.make_thumbnail(turned, 50_000_000)
    with Image.open(io.BytesIO(thumb)) as image:
        assert image.size == (160, 320)
    assert ui.original_size(thumb) == (400, 800)
    assert faces.decode(turned, 50_000_000).shape[:2] == (800, 400)


def test_whoami_says_images_are_not_kept_when_the_store_deletes_them(
        make_client: Callable[..., FlaskClient], tmp_path: Path) -> None:
    kept = make_client(image_store=tmp_path.as_uri())
    assert kept.get("/ui/api/whoami").json["stored"] is True
    deleted = make_client(image_store=tmp_path.as_uri(), image_store_keep=False)
    assert deleted.get("/ui/api/whoami").json["stored"] is False
