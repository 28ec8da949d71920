"""Benchmark 3: REST latency under the production server (python -m rest: gunicorn gthread,
WEB_CONCURRENCY=2, WEB_THREADS=8), publisher confirms on.

- POST /scan/image with a ~100 KB JPEG, every request a distinct image (a JPEG comment
  differs), so each one is validated, hashed, published with a confirm and marked queued;
- sequentially from one keep-alive connection, then from 8 concurrent clients;
- GET /match for an image with 5 matching images, the same two ways.

No worker runs: this measures ingest alone. The client runs on the same 2 cores.

    python bench/rest_ingest.py [--quick]
"""

from __future__ import annotations

import http.client
import io
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import FACES, Section, log, main, percentile, services, start_rest, verdict
from facerec import faces
from facerec.broker import Broker
from facerec.faces import Faces
from facerec.messages import ImageMessage
from facerec.pipeline import Processor
from facerec.store import Store

CLIENTS = 8
TARGET_SEQ_P50_MS = 3.0
TARGET_RPS = 400.0


def base_jpeg(target: int = 100_000) -> bytes:
    """A real photo re-encoded to about `target` bytes."""
    img = Image.open(FACES / "obama" / "obama.jpg").convert("RGB")
    scale = 1.0
    for _ in range(20):
        size = (round(img.width * scale), round(img.height * scale))
        buf = io.BytesIO()
        img.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        if abs(len(data) - target) < 0.05 * target:
            return data
        scale *= (target / len(data)) ** 0.5
    return data


def variants(data: bytes, n: int, tag: str) -> list[bytes]:
    """n distinct JPEGs: the same image with a different comment segment after SOI."""
    out = []
    for i in range(n):
        text = f"facerec bench {tag} {i}".encode()
        out.append(data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:])
    return out


def drive(url: str, requests: list[tuple[str, str, bytes | None]], clients: int
          ) -> tuple[list[float], float]:
    """Send the requests from `clients` threads (keep-alive each). (latencies, seconds)."""
    u = urlparse(url)
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    shares = [requests[k::clients] for k in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def client(share: list[tuple[str, str, bytes | None]]) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        mine = []
        barrier.wait()
        for method, path, body in share:
            start = time.perf_counter()
            conn.request(method, path, body=body,
                         headers={"Content-Type": "application/octet-stream"} if body else {})
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - start)
            if resp.status != 200:
                errors.append(f"{method} {path} -> {resp.status}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(s,)) for s in shares]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    assert not errors, errors[:3]
    return latencies, seconds


def row(what: str, clients: int, lat: list[float], seconds: float, target: str) -> list[str]:
    return [what, str(clients), str(len(lat)), f"{percentile(lat, 50) * 1e3:.2f}",
            f"{percentile(lat, 99) * 1e3:.2f}", f"{len(lat) / seconds:.0f}", target]


def run(quick: bool = False) -> Section:
    section = Section("3. REST ingest and /match", "python bench/rest_ingest.py"
                      + (" --quick" if quick else ""))
    n_seq, n_conc = (150, 480) if quick else (500, 2400)
    data = base_jpeg()
    with services() as env:
        url = start_rest(env)
        # Every gunicorn thread opens its RabbitMQ connection on first use: warm them all.
        warm = variants(data, 160, "warm")
        drive(url, [("POST", "/scan/image/first.jpg", warm[0])], 1)  # declares the queue
        drive(url, [("POST", f"/scan/image/warm{i}.jpg", b) for i, b in enumerate(warm)], 16)
        log("rest: warmed up")
        seq = variants(data, n_seq, "seq")
        lat_s, sec_s = drive(url, [("POST", f"/scan/image/s{i}.jpg", b)
                                   for i, b in enumerate(seq)], 1)
        conc = variants(data, n_conc, "conc")
        lat_c, sec_c = drive(url, [("POST", f"/scan/image/c{i}.jpg", b)
                                   for i, b in enumerate(conc)], CLIENTS)
        log(f"rest: scan p50 {percentile(lat_s, 50) * 1e3:.2f} ms, "
            f"{len(lat_c) / sec_c:.0f} req/s with {CLIENTS} clients")
        # The two costs that bound ingest, measured alone in this process.
        parts = variants(data, 200, "part")
        t_validate = []
        for body in parts:
            start = time.perf_counter()
            faces.validate(body, env.settings.max_image_pixels)
            t_validate.append(time.perf_counter() - start)
        broker = Broker(env.settings)
        msgs = [ImageMessage.for_image(b, f"part{i}.jpg", "upload") for i, b in enumerate(parts)]
        broker.publish_image(msgs[0])
        t_publish = []
        for msg in msgs[1:]:
            start = time.perf_counter()
            broker.publish_image(msg)
            t_publish.append(time.perf_counter() - start)
        broker.close()
        # An image with five matching images, committed as a worker would.
        processor = Processor(env.settings, Store(env.settings))
        processor.load_index()
        rng = np.random.default_rng(3)
        person = rng.normal(0, 0.07, size=128)
        hashes = [f"{k:x}" * 64 for k in range(10, 16)]
        for h in hashes:
            face = (person + rng.normal(0, 0.025, size=128))[None]
            processor.commit_faces(h[:64], f"match-{h[0]}.jpg", Faces([(0, 1, 1, 0)], face))
        target = hashes[0][:64]
        n_match = 300 if quick else 1000
        lat_ms, sec_ms = drive(url, [("GET", f"/match/{target}", None)] * n_match, 1)
        lat_mc, sec_mc = drive(url, [("GET", f"/match/{target}", None)] * (2 * n_match),
                               CLIENTS)
    p50 = percentile(lat_s, 50) * 1e3
    rps = len(lat_c) / sec_c
    section.table(
        ["request", "clients", "requests", "p50 ms", "p99 ms", "req/s", "target"],
        [row(f"POST /scan/image ({len(data) / 1000:.0f} KB JPEG, confirmed publish)", 1,
             lat_s, sec_s, f"p50 ≤ {TARGET_SEQ_P50_MS:g} ms: {verdict(p50 <= TARGET_SEQ_P50_MS)}"),
         row("POST /scan/image", CLIENTS, lat_c, sec_c,
             f"≥ {TARGET_RPS:g} req/s: {verdict(rps >= TARGET_RPS)}"),
         row("GET /match (5 matching images)", 1, lat_ms, sec_ms, "–"),
         row("GET /match (5 matching images)", CLIENTS, lat_mc, sec_mc, "–")])
    section.table(["part of one upload, alone (in-process, sequential)", "p50 ms", "p99 ms"],
                  [["faces.validate (JPEG decoded at 1/8 scale)",
                    f"{percentile(t_validate, 50) * 1e3:.2f}",
                    f"{percentile(t_validate, 99) * 1e3:.2f}"],
                   ["Broker.publish_image: publish + wait for the quorum queue's confirm",
                    f"{percentile(t_publish, 50) * 1e3:.2f}",
                    f"{percentile(t_publish, 99) * 1e3:.2f}"]])
    section.note("Client: Python http.client, one keep-alive connection per client thread, "
                 "in the benchmark process on the same 2 cores as rest, Redis and RabbitMQ "
                 f"(quorum queue). {160} warm-up uploads first (each gunicorn thread opens "
                 "its RabbitMQ connection on first use).")
    section.data.update(seq_p50=p50, rps=rps)
    return section


if __name__ == "__main__":
    main(run, __doc__)
