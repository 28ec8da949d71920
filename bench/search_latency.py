"""Search without storing (POST /search): latency idle and behind a backlog of scans.

    python bench/search_latency.py [--quick]

rest under gunicorn and either one worker (WORKER_ROLE=all) or a search-only worker
beside an image worker, on a private redis-server and RabbitMQ vhost. The collection
holds synthetic stored faces (10k, then 1M; `--quick`: 10k only); the queries are real
photos, so each search runs the real detection on a worker. "Backlog" is the same with
2,000 distinct scans queued and the workers busy on them: the goal is a p50 at most 2×
idle, which the search queue of its own (facerec.broker.SEARCH_QUEUE) is for.
"""

from __future__ import annotations

import functools
import io
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    FACES,
    Section,
    log,
    main,
    percentile,
    services,
    start_rest,
    start_worker,
    verdict,
)
from bench.match_scaling import Synthetic, populate
from facerec.messages import ImageMessage
from tests.services import http, wait_until

QUERIES = ("obama/obama.jpg", "biden/biden.jpg", "kit_harington/john1.jpeg",
           "rose_leslie/img1.jpg", "groups/obama_and_biden.jpg")
BACKLOG = 2_000
# One worker doing both, as `make up` runs them; and a search-only worker beside an
# image worker, the deployment for searches that must not wait (README).
DEPLOYMENTS = (("all",), ("search", "images"))


def distinct_scans(n: int) -> list[bytes]:
    """n different JPEGs of the shared photos (sizes and qualities vary the bytes)."""
    sources = [Image.open(p).convert("RGB") for p in sorted(FACES.rglob("*.jpg"))]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        side = 200 + (i // len(sources)) % 300
        small = img.copy()
        small.thumbnail((side, side))
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=60 + i % 35)
        out.append(buf.getvalue())
    return out


def serves(rest: str, body: bytes) -> bool:
    return http("POST", f"{rest}/search", body, timeout=120).status == 200


def latencies(rest: str, rounds: int) -> list[float]:
    seconds = []
    bodies = [(FACES / q).read_bytes() for q in QUERIES]
    for _ in range(rounds):
        for body in bodies:
            start = time.perf_counter()
            reply = http("POST", f"{rest}/search", body, timeout=120)
            seconds.append(time.perf_counter() - start)
            assert reply.status == 200, reply.body
    return seconds


def run(quick: bool = False) -> Section:
    sizes = (10_000,) if quick else (10_000, 1_000_000)
    rounds = 2 if quick else 6
    section = Section("6. Search without storing (POST /search)",
                      "python bench/search_latency.py" + (" --quick" if quick else ""))
    rows = []
    scans = distinct_scans(BACKLOG)
    for size, roles in [(size, roles) for size in sizes for roles in DEPLOYMENTS]:
        with services() as env:
            synth = Synthetic(size)
            log(f"search: {size} stored faces, workers {' + '.join(roles)}")
            populate(env.settings, synth, size)
            rest = start_rest(env)
            workers = [start_worker(env, WORKER_ROLE=role) for role in roles]
            first = (FACES / QUERIES[0]).read_bytes()
            wait_until(functools.partial(serves, rest, first), 300, "the worker to serve")
            idle = latencies(rest, rounds)
            broker = env.broker()
            for i, data in enumerate(scans):
                broker.publish_image(ImageMessage.for_image(data, f"backlog/{i}.jpg", "upload"))
            broker.close()
            busy = latencies(rest, rounds)
            left = env.queue_depth()
            for worker in workers:
                worker.kill()
            ratio = percentile(busy, 50) / percentile(idle, 50)
            rows.append([f"{size:,}", " + ".join(roles), f"{percentile(idle, 50) * 1e3:.0f}",
                         f"{percentile(idle, 99) * 1e3:.0f}", f"{percentile(busy, 50) * 1e3:.0f}",
                         f"{percentile(busy, 99) * 1e3:.0f}", f"{ratio:.2f}×",
                         f"{left:,} of {BACKLOG:,}", f"≤ 2× idle: {verdict(ratio <= 2.0)}"])
    section.table(["stored faces", "workers (WORKER_ROLE)", "idle p50 ms", "idle p99 ms",
                   "backlog p50 ms", "backlog p99 ms", "backlog / idle (p50)",
                   "scans still queued after", "target"], rows)
    section.note(f"{len(QUERIES)} real photos × {rounds} rounds per row, one client (rest, "
                 f"the workers, Redis and RabbitMQ on the same 2 cores). Each search decodes "
                 f"and detects on a worker (most of its time), then matches every face "
                 f"against all stored faces. With one worker doing both, during the backlog "
                 f"its image thread processes scans at the same time: a search waits for the "
                 f"detection in hand (dlib runs one at a time per process) and shares the "
                 f"CPU. A search-only worker waits for nothing; it shares only the CPU with "
                 f"the image worker beside it.")
    return section


if __name__ == "__main__":
    main(run, __doc__)
