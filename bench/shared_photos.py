"""How long the 26 shared photos take through the whole pipeline, with 1 and 2 workers.

    python bench/shared_photos.py

For each worker count: a private Redis and RabbitMQ vhost, rest and the workers started
and consuming (index loaded), then the 26 photos of tests/data/faces posted to
/scan/image; the time runs from the first post to the last commit. Prints a table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import services, start_rest, start_worker
from tests.services import http, photos, wait_until


def run(workers: int) -> float:
    with services() as env:
        rest = start_rest(env)
        for _ in range(workers):
            start_worker(env)
        # The workers are consuming once the queue has as many consumers as workers.
        wait_until(lambda: _consumers(env) == workers, 60, "the workers to consume")
        start = time.perf_counter()
        hashes = {http("POST", f"{rest}/scan/image/{p.path}", p.data).body["hash"]
                  for p in photos()}
        env.wait_processed(hashes, timeout=600)
        return time.perf_counter() - start


def _consumers(env: object) -> int:
    from facerec.broker import IMAGE_QUEUE

    broker = env.broker()  # type: ignore[attr-defined]
    try:
        return int(broker.channel.queue_declare(IMAGE_QUEUE, passive=True).method.consumer_count)
    finally:
        broker.close()


def main() -> None:
    one = run(1)
    two = run(2)
    print("| workers | seconds for the 26 photos | photos/s | speed-up |")
    print("|---|---|---|---|")
    print(f"| 1 | {one:.1f} | {26 / one:.2f} | – |")
    print(f"| 2 | {two:.1f} | {26 / two:.2f} | {one / two:.2f}× |")


if __name__ == "__main__":
    main()
