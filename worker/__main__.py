"""python -m worker: consume images; --file processes files directly; --check for probes."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from facerec import heartbeat
from facerec.settings import Settings

if TYPE_CHECKING:  # the real import is deferred: --check must stay light
    from facerec.pipeline import Hook


# The CPU features (/proc/cpuinfo flags) the installed dlib was compiled for: the fast
# build (scripts/fast-dlib.sh, x86-64-v3) lists them in its .dist-info/CPU_FEATURES; the
# dlib-bin wheel is built with -mavx. Run on a CPU without them, dlib dies of an illegal
# instruction (SIGILL) somewhere in detection, with no message.
DLIB_BIN_NEEDS = ("avx",)


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags, or None where /proc/cpuinfo does not say (not Linux x86)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def dlib_needs() -> tuple[str, tuple[str, ...]] | None:
    """(distribution, CPU flags it needs) for the dlib that `import dlib` would load,
    read from its metadata without importing it; None if there is none or it says nothing."""
    spec = importlib.util.find_spec("_dlib_pybind11")
    if spec is None or spec.origin is None:
        return None
    module = os.path.basename(spec.origin)
    for dist in importlib.metadata.distributions(path=[os.path.dirname(spec.origin)]):
        if not any(str(f) == module for f in dist.files or ()):
            continue  # another distribution installed beside it
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name == "dlib-bin":
            return name, DLIB_BIN_NEEDS
        listed = dist.read_text("CPU_FEATURES")
        if listed:
            return f"{name} {dist.version} (scripts/fast-dlib.sh)", tuple(listed.split())
    return None


def cpu_problem(flags: set[str] | None = None) -> str | None:
    """Why this CPU cannot run the installed dlib, or None (it can, or nothing says not)."""
    needs = dlib_needs()
    flags = cpu_flags() if flags is None else flags
    if needs is None or flags is None:
        return None
    missing = [f for f in needs[1] if f not in flags]
    if not missing:
        return None
    instead = ("a dlib built from source for this CPU (pip install --no-binary dlib dlib)"
               if needs[0] == "dlib-bin" else
               "the dlib-bin wheel (requirements/base.txt; it needs only AVX)")
    return (f"this CPU lacks {', '.join(missing)}, which the installed dlib ({needs[0]}) "
            f"was compiled for: it would die of an illegal instruction. Run the worker on "
            f"a CPU that has them, or install {instead}.")


def main(argv: list[str] | None = None, hook: Hook | None = None) -> int:
    """Run the worker; `hook` is the tests' fault injection point (facerec.pipeline.Hook)."""
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="exit 0 if the running worker's heartbeat is fresh (liveness)")
    parser.add_argument("--file", nargs="+", type=Path, metavar="PATH",
                        help="process these image files now (no RabbitMQ) and print results")
    parser.add_argument("--upgrade", action="store_true",
                        help="bring what an older version stored up to date: list its images "
                             "in the gallery order and place their faces in people (once, "
                             "after upgrading; safe beside running workers)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.check:
        # The liveness probe: read one file's age, import nothing heavy.
        age = heartbeat.age(settings.worker_heartbeat_file)
        print(f"heartbeat {age:.1f}s old")
        return 0 if age < heartbeat.LIVENESS_MAX_AGE else 1
    problem = cpu_problem()
    if problem:
        print(f"worker: {problem}", file=sys.stderr)
        return os.EX_CONFIG
    return run(settings, args.file, hook, upgrade=args.upgrade)


def run(settings: Settings, files: list[Path] | None, hook: Hook | None,
        upgrade: bool = False) -> int:
    # A worker works on one image at a time and scales by processes (one per core), so
    # OpenBLAS's own threads (the fast dlib's face encoder, numpy) find no idle core: with
    # two, the second spun for 1.5 CPU s per 12 s of encoding and detection, and the image
    # thread was no faster (BENCHMARKS.md 1b). Read when OpenBLAS loads: set before numpy.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
    if upgrade:
        listed = processor.store.date_unlisted_images()
        placed, seen = processor.place_people(
            lambda placed, seen: log.info("people: %d of %d images placed so far", placed, seen))
        print(json.dumps({"listed": listed, "placed": placed, "images": seen}))
        return 0
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
    role = settings.worker_role
    images = ImageHandler(processor, log) if role != "search" else None
    what = {"all": "images and searches", "images": "images", "search": "searches only"}[role]
    Consumer(settings, images, stopping=stopping,
             tick=heartbeat.Beat(settings.worker_heartbeat_file),
             on_error=lambda exc, delay: log.info(
                 "RabbitMQ connection lost (%r); reconnecting in %.1fs", exc, delay),
             on_consume=lambda: log.info("consuming %s (prefetch %d, max deliveries %d)", what,
                                         settings.prefetch, settings.max_deliveries),
             respond=SearchHandler(processor, log) if role != "images" else None,
             on_dead=images.dead_lettered if images else None).run()
    log.info("worker stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
