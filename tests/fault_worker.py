"""A worker with a fault injected, for tests/test_faults.py: `python -m tests.fault_worker`.

The fault is installed as the pipeline's hook (facerec.pipeline.Hook); production code reads
no fault setting. FACEREC_FAULT chooses it, FACEREC_FAULT_NAME (if set) limits it to the
messages with that name:

    slow=S              sleep S seconds just before the commit (a long job)
    crash_before_commit exit at once, like kill -9, just before the Redis commit
    crash_after_commit  exit at once after the Redis commit, before the ack
    fail_processing     raise just before the commit, on every delivery (a poison image)

Each time it fires it prints "facerec fault injected", which the tests count.
"""

from __future__ import annotations

import os
import sys
import time

from facerec.messages import ImageMessage
from facerec.pipeline import Hook
from worker.__main__ import main

MARK = "facerec fault injected"
_POINTS = {"slow": "before_commit", "crash_before_commit": "before_commit",
           "crash_after_commit": "after_commit", "fail_processing": "before_commit"}


def make_hook(fault: str, only_name: str | None) -> Hook:
    kind, _, arg = fault.partition("=")
    if kind not in _POINTS:
        raise SystemExit(f"unknown FACEREC_FAULT {fault!r}")

    def hook(point: str, msg: ImageMessage) -> None:
        if point != _POINTS[kind] or (only_name is not None and msg.name != only_name):
            return
        print(f"{MARK}: {fault} at {point} for {msg.name!r}", flush=True)
        if kind == "slow":
            time.sleep(float(arg))
        elif kind == "fail_processing":
            raise RuntimeError(f"injected fault: {fault}")
        else:
            os._exit(137)
    return hook


if __name__ == "__main__":
    sys.exit(main(hook=make_hook(os.environ["FACEREC_FAULT"],
                                 os.environ.get("FACEREC_FAULT_NAME"))))
