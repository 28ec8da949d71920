"""python -m logs: print every message of the logs exchange with its routing key."""

from __future__ import annotations

import argparse
import sys

from facerec.settings import Settings
from logs.listener import listen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logs", description=__doc__)
    parser.add_argument("--pattern", default="#",
                        help="topic pattern to bind, e.g. '*.worker.info' (default: #)")
    args = parser.parse_args(argv)

    def emit(key: str, text: str) -> None:
        print(f"{key}: {text}", flush=True)

    try:
        listen(Settings.from_env(), args.pattern, emit)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
