"""python -m worker: consume images; --file processes files directly; --check for probes."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from facerec import heartbeat
from facerec.settings import Settings

if TYPE_CHECKING:  # the real import is deferred: --check must stay light
    from facerec.pipeline import Hook


def main(argv: list[str] | None = None, hook: Hook | None = None) -> int:
    """Run the worker; `hook` is the tests' fault injection point (facerec.pipeline.Hook)."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 0 if the running worker's heartbeat is fresh (liveness)")
    parser.add_argument("--file", nargs="+", type=Path, metavar="PATH",
                        help="process these image files now (no RabbitMQ) and print results")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.check:
        # The liveness probe: read one file's age, import nothing heavy.
        age = heartbeat.age(settings.worker_heartbeat_file)
        print(f"heartbeat {age:.1f}s old")
        return 0 if age < heartbeat.LIVENESS_MAX_AGE else 1
    return run(settings, args.file, hook)


def run(settings: Settings, files: list[Path] | None, hook: Hook | None) -> int:
    from facerec import faces, metrics
    from facerec.broker import Consumer
    from facerec.errors import PermanentError
    from facerec.imagestore import open_store
    from facerec.messages import ImageMessage
    from facerec.pipeline import Processor
    from facerec.store import Store
    from facerec.topiclog import setup_logging
    from worker.consumer import ImageHandler
    from worker.search import SearchHandler

    log = setup_logging(settings, "worker")
    processor = Processor(settings, Store(settings), log, images=open_store(settings), hook=hook)
    faces.load_models()
    processor.load_index()
    if files:
        failed = 0
        for path in files:
            try:
                outcome = processor.process(ImageMessage.for_image(path.read_bytes(),
                                                                   str(path), "upload"))
                print(json.dumps(outcome.as_dict()))
            except (OSError, PermanentError) as exc:
                failed += 1
                print(json.dumps({"file": str(path), "error": str(exc)}))
        return 1 if failed else 0

    stopping = processor.stop

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if not stopping.is_set():
            log.info("signal %d: finishing the current image, then exiting", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    metrics.serve(settings.metrics_port)
    images = ImageHandler(processor, log)
    Consumer(settings, images, stopping=stopping,
             tick=heartbeat.Beat(settings.worker_heartbeat_file),
             on_error=lambda exc, delay: log.info(
                 "RabbitMQ connection lost (%r); reconnecting in %.1fs", exc, delay),
             on_consume=lambda: log.info("consuming images (prefetch %d, max deliveries %d) "
                                         "and searches", settings.prefetch,
                                         settings.max_deliveries),
             respond=SearchHandler(processor, log), on_dead=images.dead_lettered).run()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
