"""python -m worker: consume images; --file processes files directly; --check for probes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facerec import faces, metrics
from facerec.errors import PermanentError
from facerec.imagestore import open_store
from facerec.messages import ImageMessage
from facerec.pipeline import Processor
from facerec.settings import Settings
from facerec.store import Store
from facerec.topiclog import setup_logging
from worker.consumer import Worker, heartbeat_age

LIVENESS_MAX_AGE = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 0 if the running worker's heartbeat is fresh (liveness)")
    parser.add_argument("--file", nargs="+", type=Path, metavar="PATH",
                        help="process these image files now (no RabbitMQ) and print results")
    args = parser.parse_args(argv)
    settings = Settings.from_env()

    if args.check:
        age = heartbeat_age(settings.worker_heartbeat_file)
        print(f"heartbeat {age:.1f}s old")
        return 0 if age < LIVENESS_MAX_AGE else 1

    log = setup_logging(settings, "worker")
    store = Store(settings)
    processor = Processor(settings, store, log, images=open_store(settings))
    faces.load_models()
    processor.load_index()
    if args.file:
        failed = 0
        for path in args.file:
            try:
                outcome = processor.process(ImageMessage.for_image(path.read_bytes(),
                                                                   str(path), "upload"))
                print(json.dumps(outcome.as_dict()))
            except (OSError, PermanentError) as exc:
                failed += 1
                print(json.dumps({"file": str(path), "error": str(exc)}))
        return 1 if failed else 0
    metrics.serve(settings.metrics_port)
    Worker(processor, log).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
