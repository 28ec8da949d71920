"""python -m logs: print every message of the logs exchange with its routing key."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from facerec.settings import Settings
from facerec.topiclog import follow


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logs", description=__doc__)
    parser.add_argument("--pattern", default="#",
                        help="topic pattern to bind, e.g. '*.worker.info' (default: #)")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    # As PID 1 in a container, SIGTERM has no default action: without a handler every
    # `docker stop` or pod deletion would wait for the grace period and a SIGKILL.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def emit(key: str, text: str) -> None:
        print(f"{key}: {text}", flush=True)

    follow(Settings.from_env(), args.pattern, emit, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
