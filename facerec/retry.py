"""The one retry policy: exponential backoff, and what to do with a message that failed.

`Backoff` and `retry` serve every place that waits out an outage (Redis or the image store
during processing, RabbitMQ for the consumer, the log publisher and the log follower).
They are ours rather than a library's because each wait must end at once when the
process is asked to stop (`stop.wait`, not `sleep`), and because a connection that was
healthy for a while must start again from the shortest delay: twenty lines say both.

`decide` is the settlement rule of a delivery, as a pure function of the error and the
attempt number, so that it can be read in one place and tested as a table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from facerec.errors import InvalidMessage, PermanentError, TransientError

T = TypeVar("T")


@dataclass
class Backoff:
    """Delays first, first * factor, ... up to maximum; reset() starts again."""

    first: float = 0.25
    maximum: float = 5.0
    factor: float = 2.0
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def next(self) -> float:
        delay = self._next
        self._next = min(max(delay, 1e-3) * self.factor, self.maximum) if delay else 0.0
        return delay

    def reset(self) -> None:
        self._next = self.first


def retry(fn: Callable[[], T], *, on: tuple[type[BaseException], ...], backoff: Backoff,
          attempts: int | None = None, stop: threading.Event | None = None,
          log: Callable[[BaseException, float], None] | None = None) -> T:
    """Call fn until it returns, waiting backoff.next() after each error in `on`.

    The last error is raised after `attempts` calls (None: no limit), or as soon as `stop`
    is set. A call that ran longer than the longest delay before failing was healthy:
    the backoff starts again from its first delay.
    """
    calls = 0
    while True:
        started = time.monotonic()
        try:
            return fn()
        except on as exc:
            calls += 1
            if (attempts is not None and calls >= attempts) or (stop is not None
                                                                and stop.is_set()):
                raise
            if time.monotonic() - started > backoff.maximum:
                backoff.reset()
            delay = backoff.next()
            if log is not None:
                log(exc, delay)
            if stop is not None:
                stop.wait(delay)
            elif delay:
                time.sleep(delay)


Action = Literal["ack", "requeue", "dead"]


@dataclass(frozen=True)
class Verdict:
    """How a delivery is settled: ack, requeue (nack), or dead-letter with the reason."""

    action: Action
    reason: str = ""


ACK = Verdict("ack")


def admit(attempt: int, max_deliveries: int) -> Verdict | None:
    """None if a delivery may be processed; else the dead-letter verdict.

    A delivery beyond MAX_DELIVERIES means the earlier ones were never settled: the
    worker crashed or lost its connection each time, so no error of ours was seen.
    """
    if attempt <= max_deliveries:
        return None
    return Verdict("dead", f"delivered {attempt - 1} times without being settled (the worker "
                           f"crashed or lost its connection each time)")


def decide(error: BaseException | None, attempt: int, max_deliveries: int) -> Verdict:
    """Settle delivery number `attempt` (1-based) that ended with `error` (None: success)."""
    if error is None:
        return ACK
    if isinstance(error, InvalidMessage):
        return Verdict("dead", f"invalid message: {error}")
    if isinstance(error, PermanentError):
        return Verdict("dead", str(error))
    if isinstance(error, TransientError):
        return Verdict("requeue", str(error))
    if attempt < max_deliveries:
        return Verdict("requeue", f"attempt {attempt} of {max_deliveries} failed: {error!r}")
    return Verdict("dead", f"failed {attempt} times, last: {error!r}")
