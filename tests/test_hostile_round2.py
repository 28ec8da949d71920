"""The second hostile-input round (issue 16): bounded cost per request, every accepted image
processed, malformed requests answered 4xx, nothing forged in logs, probes that slow
clients cannot starve.

Everything runs against real processes: rest under gunicorn, workers, a private
redis-server and RabbitMQ vhost. Measured times and peaks are in bench/hostile_bounds.py
and README; the tests check the answers the bounds give (never a wall-clock time).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image

from facerec import broker as amqp
from facerec import faces
from facerec.deadletters import list_dead
from facerec.errors import InvalidImage
from facerec.messages import ImageMessage, is_image_hash, sha256_hex
from rest.scan import DECODE_MEMORY
from tests import hostile
from tests.hostile import encode, photo, png_chunk
from tests.services import (
    FACES,
    ROOT,
    Env,
    RedisServer,
    Vhost,
    gunicorn_workers,
    http,
    memory_kib,
    nothing_kept,
    publish_raw,
    shared_rest,
    wait_until,
)

OBAMA = (FACES / "obama" / "obama_small.jpg").read_bytes()
MAX_PIXELS = 50_000_000


@pytest.fixture(scope="module")
def rest_server(redis_server: RedisServer, vhost: Vhost) -> Iterator[tuple[Env, str]]:
    """One rest process (default limits: 20 MB uploads, 50 M pixels) for the refusals."""
    with shared_rest(redis_server, vhost, WEB_CONCURRENCY="1") as server:
        yield server


@pytest.fixture
def rest(rest_server: tuple[Env, str]) -> Iterator[str]:
    env, url = rest_server
    with nothing_kept(env):
        yield url


def rest_process(rest_server: tuple[Env, str]) -> int:
    (worker,) = gunicorn_workers(rest_server[0].procs[0].pid)
    return worker


def case_id(value: object) -> str:
    return value if isinstance(value, str) else ""


# -- 1. CPU: the decoding work is bounded before decoding ------------------------------------

def over_the_work_bounds() -> list[tuple[str, bytes, str]]:
    return [
        ("JPEG of 10,000 tiny scans", hostile.many_scans_jpeg(2000, 2000, 10_000),
         "JPEG with more than 100 scans"),
        ("JPEG of 100,000 segments", hostile.many_segments_jpeg(100_000),
         "JPEG with more than 1000 segments"),
        ("PNG of 100,000 empty IDAT chunks", hostile.many_chunks_png(100_000),
         "PNG with more than 20000 chunks"),
        ("PNG of 100,000 text chunks", hostile.many_chunks_png(100_000, b"tEXt"),
         "PNG with more than 20000 chunks"),
        ("BMP of 2 MB of RLE runs", hostile.rle_bmp(2000, 2000, 2_000_000),
         "RLE-compressed BMP larger than"),
        ("TIFF whose strips share the same bytes", hostile.shared_strips_tiff(500, 4000, 4096),
         "strips or tiles claim more bytes than the file holds"),
        ("TIFF with JPEG inside", encode(photo(), "TIFF", compression="jpeg"),
         "TIFF compression 7 is not accepted"),
        ("TIFF with 200,000 strip offsets", hostile.shared_strips_tiff(1, 200_000, 0),
         "holds 200000 values, more than 100000"),
    ]


@pytest.mark.parametrize("name, body, why", over_the_work_bounds(), ids=case_id)
def test_decoding_work_over_the_bounds_is_refused_with_400_before_decoding(
        rest: str, name: str, body: bytes, why: str) -> None:
    reply = http("POST", f"{rest}/scan/image/costly", body)
    assert reply.status == 400, (name, reply.body)
    assert why in reply.body["error"], reply.body


def test_an_image_over_the_work_bounds_published_directly_fails_at_its_first_delivery(
        env: Env) -> None:
    body = hostile.many_scans_jpeg(2000, 2000, 10_000)
    publish_raw(env.settings, body, ImageMessage.for_image(body, "scans.jpg", "upload")
                .headers())
    env.start_worker()
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 1, 120, "the dead letter")
    (dead,) = list_dead(env.settings)
    assert dead.reason.startswith("JPEG with more than 100 scans"), dead.reason
    assert dead.count <= 1  # refused, not retried
    assert env.statuses() == {sha256_hex(body): "failed"}


def test_a_decode_past_its_deadline_is_an_invalid_image_in_validation_and_processing() -> None:
    for step in (faces.validate, faces.decode):
        with pytest.raises(InvalidImage, match="took more than 0 s to decode"):
            step(OBAMA, MAX_PIXELS, seconds=0.0)  # type: ignore[operator]


# -- 2. memory: bounded per process, whatever the concurrency -------------------------------

def test_an_upload_needing_more_decoder_memory_than_a_process_may_use_is_refused_with_400(
        rest_server: tuple[Env, str], rest: str) -> None:
    webp = hostile.lossless_webp(7000, 7000)  # 38 bytes, 49 M pixels: ~750 MiB to decode
    assert len(webp) < 1000
    reply = http("POST", f"{rest}/scan/image/small.webp", webp)
    assert reply.status == 400, reply.body
    assert re.search(r"needs about \d+ MiB, more than the 160 MiB", reply.body["error"])
    assert memory_kib(rest_process(rest_server)) < 200 * 1024  # it was never decoded


def distinct_pngs(n: int, side: int) -> list[bytes]:
    return [encode(Image.new("RGBA", (side, side), (i, 2 * i, 3 * i, 255)), "PNG",
                   compress_level=1) for i in range(n)]


def test_concurrent_large_uploads_share_the_decoder_memory_and_are_all_accepted(
        env: Env) -> None:
    rest = env.start_rest(WEB_CONCURRENCY="1", WEB_THREADS="8")
    (worker,) = gunicorn_workers(env.procs[0].pid)
    before = memory_kib(worker, "VmRSS")
    bodies = distinct_pngs(6, 5000)  # 25 M pixels each: ~95 MiB to validate
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: http("POST", f"{rest}/scan/image/big.png", b,
                                               timeout=120), bodies))
    assert [r.status for r in replies] == [200] * 6, [r.body for r in replies]
    assert env.queue_depth() == 6
    # One decode at a time fits DECODE_MEMORY; six at once would take ~570 MiB.
    grown_mib = (memory_kib(worker) - before) / 1024
    assert grown_mib < DECODE_MEMORY / 2**20 + 64, grown_mib


def test_the_memory_budget_makes_a_decode_wait_for_its_share_or_answer_busy() -> None:
    budget = faces.MemoryBudget(100, wait=0.0)
    with budget.hold(60):
        with pytest.raises(faces.Busy), budget.hold(50):
            pass
        with budget.hold(40):
            assert budget.used == 100
    assert budget.used == 0
    with pytest.raises(InvalidImage, match="more than the 0 MiB"), budget.hold(101):
        pass


# -- 3. accepted means processed --------------------------------------------------------------

def with_broken_exif() -> list[tuple[str, bytes]]:
    png = encode(photo(), "PNG")
    idat = png.index(b"IDAT") - 4
    jpeg = encode(photo(), "JPEG", quality=90)
    app1 = b"Exif\0\0XX*\0\x08\0\0\0"  # wrong TIFF magic
    return [
        ("png.png", png[:idat] + png_chunk(b"eXIf", b"XX*\0\x08\0\0\0") + png[idat:]),
        ("png-huge.png", png[:idat] + png_chunk(b"eXIf", b"II*\0\xff\xff\xff\x7f" + b"\0" * 70_000)
         + png[idat:]),
        ("webp.webp", encode(photo(), "WEBP", exif=b"\xb8\xc6\x18\xaa\xf4XQu" * 4)),
        ("jpeg.jpg", jpeg[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1
         + jpeg[2:]),
    ]


def test_photos_with_a_broken_exif_block_are_accepted_and_processed_with_their_face(
        env: Env) -> None:
    rest = env.start_rest()
    env.start_worker()
    hashes = set()
    for name, body in with_broken_exif():
        reply = http("POST", f"{rest}/scan/image/{name}", body)
        assert reply.status == 200, (name, reply.body)
        hashes.add(reply.body["hash"])
    env.wait_processed(hashes, timeout=180)
    for h in hashes:
        view = http("GET", f"{rest}/image/{h}").body
        assert view["status"] == "done" and len(view["faces"]) == 1, view
    assert env.queue_depth(amqp.DEAD_QUEUE) == 0


def test_the_worker_refuses_a_truncated_file_as_rest_does(env: Env) -> None:
    truncated = OBAMA[: len(OBAMA) * 9 // 10]
    with pytest.raises(InvalidImage, match="corrupt or truncated"):
        faces.validate(truncated, MAX_PIXELS)
    # Published as any client could, past rest: the worker (face_recognition imported)
    # must not decode it as a grey-padded image.
    publish_raw(env.settings, truncated, ImageMessage.for_image(truncated, "cut.jpg", "upload")
                .headers())
    env.start_worker()
    wait_until(lambda: env.queue_depth(amqp.DEAD_QUEUE) == 1, 120, "the dead letter")
    (dead,) = list_dead(env.settings)
    assert "corrupt or truncated JPEG image" in dead.reason, dead.reason
    assert env.statuses() == {sha256_hex(truncated): "failed"}


def test_importing_face_recognition_leaves_pillows_rules_as_rest_has_them() -> None:
    code = ("from PIL import ImageFile; from facerec import faces; faces.load_models(); "
            "print(ImageFile.LOAD_TRUNCATED_IMAGES)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"


# -- 6, 7. what the service records -----------------------------------------------------------

def test_request_paths_with_control_characters_are_escaped_in_every_log_line(
        env: Env, tmp_path: Path) -> None:
    listener = subprocess.Popen([sys.executable, "-m", "logs", "--pattern", "*.rest.*"],
                                cwd=ROOT, env=env.environ(), stdout=subprocess.PIPE,
                                text=True)
    env.procs.append(listener)
    received: list[str] = []
    threading.Thread(target=lambda: received.extend(listener.stdout or ()),
                     daemon=True).start()
    stderr = tmp_path / "rest.stderr"
    rest = env.start_rest(stderr)
    forged = "2026-01-01 00:00:00,000 rest INFO DELETE /image/x -> 200 by admin"
    path = f"/nothing%0D%0A{forged.replace(' ', '%20')}%1B[2J%E2%80%A8end"
    assert http("GET", f"{rest}{path}").status == 404
    assert http("POST", f"{rest}/scan/image/a%0Ab.jpg", b"not an image").status == 404
    for where in (lambda: stderr.read_text(errors="replace"), lambda: "".join(received)):
        wait_until(lambda w=where: "end -> 404" in w() and "b.jpg -> 404" in w(), 30,
                   "the requests' log lines")
    topic = "".join(received)
    for text in (stderr.read_text(errors="replace"), topic):
        assert "\\r\\n2026-01-01 00:00:00,000 rest INFO DELETE" in text, text
        assert "\\x1b[2J" in text and "\\u2028end" in text and "a\\nb.jpg" in text
        lines = text.splitlines()
        assert not any(line.startswith(forged) for line in lines)
        assert "\x1b" not in text and "\u2028" not in text and "\r" not in text


def test_is_image_hash_takes_exactly_64_lowercase_hex_digits() -> None:
    good = "a" * 64
    assert is_image_hash(good)
    for bad in (good + "\n", good + " ", "\n" + good, good[:-1], good.upper(), good + "a"):
        assert not is_image_hash(bad), repr(bad)


# -- 9. malformed requests: a 4xx, never a 500 and never a queued image ---------------------

def raw_request(url: str, head: bytes, body: bytes = b"", close_write: bool = False) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(head + body)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        while data := s.recv(65536):
            answer += data
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


@pytest.mark.parametrize("depth", [1_000, 2_500])
def test_deeply_nested_json_on_scan_url_is_refused_with_400(rest: str, depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"url": ' + "[" * depth + "]" * depth + "}",
                 '{"a":' * depth + "1" + "}" * depth):
        reply = http("POST", f"{rest}/scan/url", body.encode(),
                     headers={"Content-Type": "application/json"})
        assert reply.status == 400, reply.body
        assert reply.body == {"error": 'send JSON {"url": "http(s)://..."}'}


def test_a_json_body_larger_than_any_url_needs_is_refused_with_413(rest: str) -> None:
    reply = http("POST", f"{rest}/scan/url", json_body={"url": "http://x/" + "a" * 20_000})
    assert reply.status == 413 and "JSON body larger than" in reply.body["error"]


@pytest.mark.parametrize("chunks", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a chunk size that is not hex
    b"-5\r\nabcde\r\n0\r\n\r\n",  # a negative one
    b"5\r\nabcdefgh\r\n0\r\n\r\n",  # a chunk longer than its size, no terminator after it
], ids=["not hex", "negative", "missing terminator"])
def test_a_chunked_upload_with_malformed_chunks_is_refused_with_400(
        rest: str, chunks: bytes) -> None:
    answer = raw_request(rest, b"POST /scan/image/chunked.jpg HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                         b"%x\r\n%s\r\n" % (len(OBAMA), OBAMA) + chunks)
    assert status_of(answer) == 400, answer[:300]


def test_a_chunked_upload_cut_before_its_last_chunk_is_refused_and_not_queued(
        rest: str) -> None:
    answer = raw_request(rest, b"POST /scan/image/cut.jpg HTTP/1.1\r\nHost: x\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n",
                         b"%x\r\n%s\r\n" % (len(OBAMA), OBAMA), close_write=True)
    assert status_of(answer) == 400, answer[:300]


def test_a_body_shorter_than_its_content_length_is_refused_and_not_queued(rest: str) -> None:
    # The whole JPEG arrives (it would decode), but 100 announced bytes never do.
    answer = raw_request(rest, b"POST /scan/image/short.jpg HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: %d\r\n\r\n" % (len(OBAMA) + 100),
                         OBAMA, close_write=True)
    assert status_of(answer) == 400, answer[:300]
    assert f"ended after {len(OBAMA)} of its {len(OBAMA) + 100} bytes".encode() in answer


# -- 10. the stored image's headers ----------------------------------------------------------

def test_a_stored_image_is_served_as_an_attachment_that_is_never_sniffed(
        env: Env, tmp_path: Path) -> None:
    rest = env.start_rest(IMAGE_STORE=f"file://{tmp_path}")
    # An HTML page that is also a valid image? A polyglot is not needed: the headers must
    # hold for any stored bytes.
    h = http("POST", f"{rest}/scan/image/<b>x.jpg", OBAMA).body["hash"]
    reply = http("GET", f"{rest}/image/{h}/content")
    assert reply.status == 200 and reply.body == OBAMA
    assert reply.headers["Content-Type"] == "image/jpeg"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Content-Disposition"] == f'attachment; filename="{h}.jpg"'
    assert reply.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


def test_make_down_stops_what_make_up_started_and_leaves_a_reused_pid_alone(
        tmp_path: Path) -> None:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    for script in ("down.sh", "services.sh"):
        shutil.copy(ROOT / "scripts" / script, root / "scripts" / script)
    run = root / ".run"
    run.mkdir()
    for module in ("logs", "worker"):  # stand-ins for python -m logs / worker: they wait
        (root / module).mkdir()
        (root / module / "__main__.py").write_text("import time\ntime.sleep(300)\n")
    procs = []

    def start(cmd: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(cmd, cwd=cwd))
        return procs[-1]
    try:
        hour_ago = time.time() - 3600
        # A stale rest.pid whose pid is now an unrelated process elsewhere.
        unrelated = start(["sleep", "300"], tmp_path)
        (run / "rest.pid").write_text(f"{unrelated.pid}\n")
        # A stale worker1.pid whose pid is now a process like ours, but started after it.
        (run / "worker1.pid").write_text("0\n")
        os.utime(run / "worker1.pid", (hour_ago, hour_ago))
        late = start([sys.executable, "-m", "worker"], root)
        (run / "worker1.pid").write_text(f"{late.pid}\n")
        os.utime(run / "worker1.pid", (hour_ago, hour_ago))
        # What make up started: its pid file written just after it.
        logs = start([sys.executable, "-m", "logs"], root)
        (run / "logs.pid").write_text(f"{logs.pid}\n")
        # Reaped as soon as it exits, as init reaps what make up started (nohup, no parent).
        threading.Thread(target=logs.wait, daemon=True).start()
        wait_until(lambda: all(Path(f"/proc/{p.pid}/cmdline").read_bytes().count(b"-m")
                               for p in (late, logs)), 30, "the stand-ins to start")
        out = subprocess.run(["bash", str(root / "scripts" / "down.sh")], capture_output=True,
                             text=True, timeout=120, check=True).stdout
        assert logs.wait(30) is not None and "logs: stopped" in out
        assert unrelated.poll() is None and late.poll() is None, out
        assert "rest: pid" in out and "left alone" in out
        assert list(run.glob("*.pid")) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- 11. slow clients cannot take liveness or every thread ------------------------------------

class Trickler:
    """Connections that send a little of their request every half second, forever."""

    def __init__(self, url: str) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def open(self, first: bytes) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        s.sendall(first)
        self.socks.append(s)
        return s

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            for s in list(self.socks):
                try:
                    s.send(b"a")
                except OSError:
                    self.socks.remove(s)

    def close(self) -> None:
        self.stop.set()
        for s in self.socks:
            s.close()


@pytest.fixture
def trickler(env: Env) -> Iterator[Callable[[str], Trickler]]:
    made: list[Trickler] = []

    def make(url: str) -> Trickler:
        made.append(Trickler(url))
        return made[-1]
    yield make
    for t in made:
        t.close()


def test_liveness_and_queries_answer_while_slow_clients_hold_every_connection_they_can(
        env: Env, trickler: Callable[[str], Trickler]) -> None:
    rest = env.start_rest(WEB_CONCURRENCY="1", WEB_THREADS="4")
    slow = trickler(rest)
    for _ in range(40):  # heads that never end
        slow.open(b"GET /match/" + b"0" * 64 + b" HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    def slow_body() -> None:  # a body that never ends: it holds a slow-work slot
        slow.open(b"POST /scan/image/slow.jpg HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1000000\r\n\r\n" + OBAMA[:100])

    def every_slot_taken() -> bool:
        if http("POST", f"{rest}/scan/image/a.jpg", OBAMA, timeout=10).status == 503:
            return True
        # That upload found a slot free: a slow body was refused because an upload held
        # the slot at that instant (the two race). Another slow body takes the slot back.
        slow_body()
        return False
    for _ in range(2):  # the two slow-work slots
        slow_body()
    # Every slot taken: one more upload is refused at once rather than queued for a thread.
    wait_until(every_slot_taken, 30, "the slow-work slots to be taken")
    assert http("GET", f"{rest}/healthz", timeout=5).body == {"status": "ok"}
    assert http("GET", f"{rest}/match/{'0' * 64}", timeout=5).body == []
    assert http("GET", f"{rest}/readyz", timeout=5).status == 200
    assert sum(1 for s in slow.socks if s.fileno() >= 0) >= 40  # they are all still open


def test_a_client_trickling_its_head_is_disconnected_at_the_head_deadline(
        env: Env, trickler: Callable[[str], Trickler]) -> None:
    rest = env.start_rest(WEB_CONCURRENCY="1")
    s = trickler(rest).open(b"GET / HTTP/1.1\r\nX-Slow: ")

    def closed() -> bool:
        try:
            s.setblocking(False)
            return s.recv(1) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
    wait_until(closed, 60, "the server to drop the trickling connection")


def test_url_fetches_from_a_silent_server_take_only_the_slow_work_slots(env: Env) -> None:
    rest = env.start_rest(WEB_CONCURRENCY="1", WEB_THREADS="4", FETCH_TIMEOUT="6",
                          FETCH_ALLOW_NETWORKS="127.0.0.0/8")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the kernel; nothing is ever answered
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.jpg"
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(http, "POST", f"{rest}/scan/url", None, {"url": url},
                                 None, 60) for _ in range(8)]
            wait_until(lambda: sum(c.done() for c in calls) >= 6, 30, "the refusals")
            assert http("GET", f"{rest}/healthz", timeout=5).status == 200
            assert http("GET", f"{rest}/match/{'0' * 64}", timeout=5).body == []
            statuses = sorted(c.result().status for c in calls)
    finally:
        silent.close()
    assert statuses.count(503) >= 6 and set(statuses) <= {422, 503}, statuses
    assert env.queue_depth() == 0


def test_the_event_loops_liveness_answer_is_the_apps_answer(
        env: Env, make_client: Callable[..., FlaskClient]) -> None:
    rest = env.start_rest()
    answer = raw_request(rest, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    app = make_client().get("/healthz")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in head
    assert body == app.data and b"Content-Type: application/json" in head
    # Anything else about /healthz (another method, a trickled head) is the app's to answer.
    assert http("POST", f"{rest}/healthz", b"").status == 405
