"""Hostile uploads, hostile queue messages and the code itself (bandit, no pickle).

Complements tests/test_rest_inputs.py (empty, non-image, half a JPEG, a fake GIF, one
patched PNG header, plain and chunked bodies over the cap): here every format Pillow
knows but we do not accept, real decompression bombs of each accepted format, truncated
files of each format, lying Content-Length, and a jsonpickle payload on the queue.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from facerec import broker as amqp
from facerec.deadletters import list_dead
from facerec.messages import CONTENT_TYPE, ImageMessage, sha256_hex
from tests.services import (
    FACES,
    ROOT,
    Env,
    RedisServer,
    Vhost,
    http,
    nothing_kept,
    publish_raw,
    shared_rest,
    wait_until,
)

PHOTO = (FACES / "obama/obama_small.jpg").read_bytes()
CAP = 2_000_000
MAX_PIXELS = 50_000_000  # the default MAX_IMAGE_PIXELS


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def photo() -> Image.Image:
    img = Image.open(io.BytesIO(PHOTO))
    img.load()
    return img


def gunicorn_peak_rss_kib(master_pid: int) -> int:
    """The highest peak resident size among rest's gunicorn worker processes."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    peaks = []
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]))
    assert peaks, "no gunicorn worker found"
    return max(peaks)


@pytest.fixture(scope="module")
def rest_server(redis_server: RedisServer, vhost: Vhost) -> Iterator[tuple[Env, str]]:
    with shared_rest(redis_server, vhost, MAX_UPLOAD_BYTES=str(CAP)) as server:
        yield server


@pytest.fixture
def rest(rest_server: tuple[Env, str]) -> Iterator[str]:
    env, url = rest_server
    with nothing_kept(env):
        yield url


# -- formats ------------------------------------------------------------------------------

def unaccepted_formats() -> list[tuple[str, bytes]]:
    img = photo()
    made = [(fmt, encode(img.convert("1") if fmt == "XBM" else img, fmt))
            for fmt in ("GIF", "ICO", "PCX", "TGA", "PPM", "SGI", "DDS", "XBM",
                        "JPEG2000", "QOI", "ICNS", "PDF", "EPS")]
    return [
        *made,
        ("SVG", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
        ("EPS by hand", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                        b"(/etc/passwd) (r) file\n"),
        ("HTML", b"<html><img src=x onerror=alert(1)></html>"),
        ("ZIP", b"PK\x03\x04" + b"\0" * 100),
    ]


def case_id(value: object) -> str:
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize("fmt, body", unaccepted_formats(), ids=case_id)
def test_formats_other_than_the_common_photo_formats_are_refused_with_400(
        rest: str, fmt: str, body: bytes) -> None:
    reply = http("POST", f"{rest}/scan/image/file.{fmt.split()[0].lower()}", body)
    assert reply.status == 400, (fmt, reply.body)
    assert "not a decodable image (BMP, JPEG, PNG, TIFF, WEBP)" in reply.body["error"]


def test_each_accepted_format_is_accepted(env: Env) -> None:
    rest = env.start_rest(MAX_UPLOAD_BYTES=str(CAP))
    img = photo()
    for fmt in ("JPEG", "PNG", "WEBP", "BMP", "TIFF"):
        reply = http("POST", f"{rest}/scan/image/a.{fmt.lower()}", encode(img, fmt))
        assert reply.status == 200, (fmt, reply.body)
    assert env.queue_depth() == 5


# -- decompression bombs -------------------------------------------------------------------

def patched_size(data: bytes, marker: bytes, offset: int, width: int, height: int,
                 size: int = 2, order: str = "big", height_first: bool = False) -> bytes:
    at = data.index(marker) + offset
    first, second = (height, width) if height_first else (width, height)
    return (data[:at] + first.to_bytes(size, order) + second.to_bytes(size, order)
            + data[at + 2 * size:])


def bombs() -> list[tuple[str, bytes]]:
    small = photo().resize((16, 16))
    jpeg, bmp = encode(small, "JPEG"), encode(small, "BMP")
    return [
        # Real, valid files: 100 M one-bit pixels compress to a few kB.
        ("PNG 10000x10000", encode(Image.new("1", (10000, 10000)), "PNG", optimize=True)),
        ("TIFF 8000x8000", encode(Image.new("1", (8000, 8000)), "TIFF",
                                  compression="group4")),
        ("JPEG header 65000x65000",  # SOF0: marker, length(2), precision(1), h, w
         patched_size(jpeg, b"\xff\xc0", 5, 65000, 65000, height_first=True)),
        ("BMP header 40000x40000", patched_size(bmp, b"BM", 18, 40000, 40000, size=4,
                                                order="little")),
    ]


@pytest.mark.parametrize("name, body", bombs(), ids=case_id)
def test_a_decompression_bomb_is_refused_without_allocating_its_pixels(
        rest_server: tuple[Env, str], rest: str, name: str, body: bytes) -> None:
    assert len(body) < 200_000
    reply = http("POST", f"{rest}/scan/image/bomb", body)
    assert reply.status == 400, (name, reply.body)
    # Refused on the size in the header: ours (MAX_IMAGE_PIXELS) or Pillow's own bomb
    # check, whichever is lower for that format. Both come before any pixel is decoded.
    assert re.search(r"exceeds (the )?limit of \d+ pixels", reply.body["error"]), reply.body
    # Decoding the patched ones would need several GB.
    assert gunicorn_peak_rss_kib(rest_server[0].procs[0].pid) < 400_000


# -- truncated and corrupt files ------------------------------------------------------------

def damaged() -> list[tuple[str, bytes]]:
    img = photo()
    png, webp = encode(img, "PNG"), encode(img, "WEBP")
    tiff, bmp = encode(img, "TIFF", compression="tiff_lzw"), encode(img, "BMP")
    garbled = bytearray(png)
    idat = garbled.index(b"IDAT")
    garbled[idat + 40: idat + 60] = b"\0" * 20
    return [
        ("PNG cut in its pixels", png[: len(png) * 2 // 3]),
        ("PNG with garbled pixel data", bytes(garbled)),
        ("PNG signature only", png[:8]),
        ("WEBP cut in half", webp[: len(webp) // 2]),
        ("TIFF cut in half", tiff[: len(tiff) // 2]),
        ("BMP cut in half", bmp[: len(bmp) // 2]),
        ("JPEG header only", PHOTO[:300]),
        ("JPEG missing its last tenth", PHOTO[: len(PHOTO) * 9 // 10]),
    ]


@pytest.mark.parametrize("name, body", damaged(), ids=case_id)
def test_a_truncated_or_corrupt_file_is_refused_with_400(rest: str, name: str,
                                                         body: bytes) -> None:
    reply = http("POST", f"{rest}/scan/image/damaged", body)
    assert reply.status == 400, (name, reply.body)
    assert ("corrupt or truncated" in reply.body["error"]
            or "not a decodable image" in reply.body["error"])


# -- sizes and names -------------------------------------------------------------------------

def raw_request(rest: str, head: bytes, body_chunks: tuple[bytes, ...] = ()) -> bytes:
    port = int(rest.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except OSError:
            pass  # the server may answer and close first
        answer = b""
        while data := s.recv(65536):
            answer += data
    return answer


def test_a_huge_declared_length_is_refused_with_413_before_the_body_is_sent(rest: str) -> None:
    answer = raw_request(rest, b"POST /scan/image/huge.jpg HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 10000000000\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_upload_under_the_cap_is_accepted(env: Env) -> None:
    rest = env.start_rest(MAX_UPLOAD_BYTES=str(CAP))
    chunks = [b"%x\r\n%s\r\n" % (len(PHOTO[i:i + 4096]), PHOTO[i:i + 4096])
              for i in range(0, len(PHOTO), 4096)] + [b"0\r\n\r\n"]
    answer = raw_request(rest, b"POST /scan/image/chunked.jpg HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                         tuple(chunks))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"hash": sha256_hex(PHOTO)}
    assert env.queue_depth() == 1


def test_a_file_name_longer_than_the_limit_is_refused_with_400(rest: str) -> None:
    reply = http("POST", f"{rest}/scan/image/{'a' * 2100}.jpg", PHOTO)
    assert reply.status == 400 and "file name longer" in reply.body["error"]


# -- hostile queue messages ------------------------------------------------------------------

def jsonpickle_bomb(canary: Path) -> bytes:
    # What jsonpickle.decode would turn into os.system("touch <canary>"): written by hand,
    # nothing here imports jsonpickle.
    return json.dumps({"py/reduce": [{"py/function": "os.system"},
                                     {"py/tuple": [f"touch {canary}"]}]}).encode()


def test_jsonpickle_and_pickle_payloads_on_the_queue_are_dead_lettered_and_nothing_runs(
        env: Env, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    bomb = jsonpickle_bomb(canary)
    pickled = f"cos\nsystem\n(S'touch {canary}'\ntR.".encode()
    send = functools.partial(publish_raw, env.settings)
    send(bomb, {"schema": 1, "hash": sha256_hex(bomb), "name": "jp1", "kind": "upload"},
         "application/json")
    send(bomb, {"schema": 1, "hash": sha256_hex(bomb), "name": "jp2", "kind": "upload"},
         CONTENT_TYPE)
    # Pickles where a header string is expected: they stay plain text.
    good = ImageMessage.for_image(PHOTO, "ok.jpg", "upload")
    send(PHOTO, {**good.headers(), "name": pickled}, CONTENT_TYPE)
    send(PHOTO, {**good.headers(), "kind": pickled}, CONTENT_TYPE)
    env.start_worker()
    env.wait_processed({sha256_hex(PHOTO), sha256_hex(bomb)}, timeout=120)
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 3, 30, "three dead letters")
    reasons = {d.name: d.reason for d in list_dead(env.settings)}
    assert reasons["jp1"] == "invalid message: content type 'application/json' is not " \
                            "application/octet-stream"
    assert reasons["jp2"].startswith("not a decodable image")
    assert reasons["ok.jpg"] == "invalid message: header kind must be one of ['upload', 'url']"
    assert env.statuses() == {sha256_hex(PHOTO): "done", sha256_hex(bomb): "failed"}
    assert env.redis.client(1).get(pickled.decode()) == sha256_hex(PHOTO)  # just a name
    assert env.queue_depth() == 0
    assert not canary.exists()


# -- the code ----------------------------------------------------------------------------------

PACKAGES = ("facerec", "rest", "worker", "logs")


def test_bandit_finds_no_high_severity_issue() -> None:
    out = subprocess.run([sys.executable, "-m", "bandit", "-r", *PACKAGES, "-f", "json", "-q"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.stdout)
    assert report["metrics"]["_totals"]["loc"] > 1000  # it did read the code
    high = [(r["filename"], r["line_number"], r["test_id"], r["issue_text"])
            for r in report["results"] if r["issue_severity"] == "HIGH"]
    assert high == []


def test_no_module_imports_pickle_or_its_relatives() -> None:
    forbidden = {"pickle", "_pickle", "cPickle", "jsonpickle", "dill", "cloudpickle", "shelve",
                 "marshal"}
    found = []
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                names = [getattr(a, "value", "") for a in node.args[:1]]
            found += [(str(path.relative_to(ROOT)), n) for n in names
                      if n.split(".")[0] in forbidden]
    assert found == []
