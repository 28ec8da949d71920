"""store.read_ahead, what a worker's start-up reads the face log with: the same items in
the same order, the producer's error raised to the consumer, and no thread left behind."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from facerec.store import read_ahead


def threads() -> int:
    return sum(t.name == "read-ahead" for t in threading.enumerate())


def test_items_arrive_in_order_and_the_thread_ends_with_them() -> None:
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))
    assert threads() == 0


def test_the_producer_runs_ahead_while_the_consumer_works() -> None:
    produced: list[int] = []
    gate = threading.Event()

    def items() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            if i == 2:
                gate.set()
            yield i

    it = read_ahead(items(), depth=2)
    assert next(it) == 0
    assert gate.wait(5)  # items 1 and 2 were produced before the consumer asked for them
    assert list(it) == list(range(1, 10))


def test_an_error_of_the_producer_is_raised_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("redis went away")

    got: list[int] = []
    with pytest.raises(ConnectionError, match="redis went away"):
        for x in read_ahead(items()):
            got.append(x)
    assert got == [1, 2]
    assert threads() == 0


def test_stopping_early_stops_the_producer() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    it = read_ahead(endless(), depth=2)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()
    assert threads() == 0
