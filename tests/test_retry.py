"""facerec.retry: the settlement rule as a table, and the backoff every outage waits with."""

from __future__ import annotations

import threading
import time

import pytest

from facerec.errors import (
    BrokerUnavailable,
    FetchError,
    ImageMissing,
    ImageStoreUnavailable,
    InvalidImage,
    InvalidMessage,
    RedisUnavailable,
)
from facerec.retry import ACK, Backoff, Verdict, admit, decide, retry

MAX = 5

# (error, attempt, expected action, expected reason or its start)
DECISIONS = [
    (None, 1, "ack", ""),
    (None, MAX, "ack", ""),
    (InvalidMessage("unsupported schema 9"), 1, "dead", "invalid message: unsupported schema 9"),
    (InvalidImage("not a decodable image"), 1, "dead", "not a decodable image"),
    (ImageMissing("no stored image gs://b/x"), 3, "dead", "no stored image gs://b/x"),
    (FetchError("gone"), 1, "dead", "gone"),
    # Outages say nothing about the image: back to the queue whatever the attempt.
    (RedisUnavailable("Redis unavailable: refused"), 1, "requeue", "Redis unavailable"),
    (RedisUnavailable("Redis unavailable: refused"), MAX, "requeue", "Redis unavailable"),
    (ImageStoreUnavailable("timeout"), MAX, "requeue", "timeout"),
    (BrokerUnavailable("down"), 2, "requeue", "down"),
    # Anything else is an attempt: requeued until the last one, then dead-lettered.
    (RuntimeError("boom"), 1, "requeue", "attempt 1 of 5 failed: RuntimeError('boom')"),
    (RuntimeError("boom"), MAX - 1, "requeue", "attempt 4 of 5 failed"),
    (RuntimeError("boom"), MAX, "dead", "failed 5 times, last: RuntimeError('boom')"),
    (MemoryError(), MAX, "dead", "failed 5 times, last: MemoryError()"),
]


@pytest.mark.parametrize(("error", "attempt", "action", "reason"), DECISIONS)
def test_decide_settles_each_error_and_attempt_as_the_table_says(
        error: BaseException | None, attempt: int, action: str, reason: str) -> None:
    verdict = decide(error, attempt, MAX)
    assert verdict.action == action
    assert verdict.reason.startswith(reason)
    if action == "ack":
        assert verdict == ACK


@pytest.mark.parametrize(("attempt", "limit", "admitted"), [
    (1, 1, True), (2, 1, False), (2, 2, True), (3, 2, False), (5, 5, True), (6, 5, False)])
def test_admit_refuses_only_deliveries_beyond_the_limit(attempt: int, limit: int,
                                                        admitted: bool) -> None:
    verdict = admit(attempt, limit)
    if admitted:
        assert verdict is None
    else:
        assert verdict == Verdict("dead", f"delivered {attempt - 1} times without being "
                                          f"settled (the worker crashed or lost its "
                                          f"connection each time)")


def test_with_a_limit_of_one_a_failure_is_dead_lettered_at_once() -> None:
    assert decide(RuntimeError("x"), 1, 1).action == "dead"


def test_backoff_doubles_up_to_its_maximum_and_starts_again_after_reset() -> None:
    backoff = Backoff(first=0.5, maximum=3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5
    assert [Backoff(first=0.0).next() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_retry_waits_out_the_listed_errors_and_returns_the_result() -> None:
    calls: list[float] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RedisUnavailable("not yet")
        return "done"

    assert retry(flaky, on=(RedisUnavailable,), backoff=Backoff(first=0.01, maximum=0.02),
                 log=lambda _exc, delay: waits.append(delay)) == "done"
    assert len(calls) == 3
    assert waits == [0.01, 0.02]


def test_retry_raises_other_errors_at_once_and_the_last_error_after_its_attempts() -> None:
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        retry(broken, on=(RedisUnavailable,), backoff=Backoff(first=0.0))
    assert calls == 1

    def down() -> None:
        nonlocal calls
        calls += 1
        raise BrokerUnavailable("down")

    calls = 0
    with pytest.raises(BrokerUnavailable):
        retry(down, on=(BrokerUnavailable,), backoff=Backoff(first=0.0), attempts=2)
    assert calls == 2


def test_retry_gives_up_when_asked_to_stop() -> None:
    stop = threading.Event()
    calls = 0

    def down() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()  # e.g. SIGTERM while Redis is away
        raise RedisUnavailable("down")

    with pytest.raises(RedisUnavailable):
        retry(down, on=(RedisUnavailable,), backoff=Backoff(first=0.01), stop=stop)
    assert calls == 2


def test_retry_starts_the_backoff_again_after_a_call_that_was_healthy_for_a_while() -> None:
    backoff = Backoff(first=0.01, maximum=0.05)
    for _ in range(4):
        backoff.next()  # already at the maximum from earlier outages
    waits: list[float] = []
    calls = 0

    def session() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(0.06)  # ran longer than the longest delay: it was healthy
            raise BrokerUnavailable("connection lost")
        if calls == 2:
            raise BrokerUnavailable("still down")

    retry(session, on=(BrokerUnavailable,), backoff=backoff,
          log=lambda _exc, delay: waits.append(delay))
    assert waits == [0.01, 0.02]
