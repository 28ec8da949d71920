"""The worker's liveness heartbeat: a file whose modification time the consumer loop renews.

Kept free of heavy imports: `python -m worker --check` (the liveness probe) imports only
this and the settings, and answers in milliseconds.
"""

from __future__ import annotations

import time
from pathlib import Path

# The probe fails when the loop has not renewed the file for this long.
LIVENESS_MAX_AGE = 60.0
# How often the loop renews it (it runs at least once a second).
BEAT_EVERY = 5.0


def touch(path: str) -> None:
    Path(path).touch()


def age(path: str) -> float:
    """Seconds since the heartbeat file was last renewed (inf if it does not exist)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class Beat:
    """Renews the file at most every BEAT_EVERY seconds, however often it is called."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= BEAT_EVERY:
            touch(self._path)
            self._last = now
