"""The dead-letter queue seen from outside: list what is in it and why, requeue it.

Two kinds of message end up in `toWorker.images.dead`: those a worker dead-lettered itself
(a malformed header, bytes that are no image, or a failure on every one of
MAX_DELIVERIES deliveries), which carry the reason in `x-facerec-error`; and those
RabbitMQ dead-lettered because they were delivered MAX_DELIVERIES times without ever being
settled (the worker crashed or lost its connection each time), which carry `x-death`.

Listing takes every message without acknowledging it and then returns them all, so
nothing is lost if the lister dies half-way. Requeueing publishes a clean copy (reason
and counters stripped, so the image gets its full number of attempts again) to the work
exchange with a publisher confirm, and only then acknowledges the dead letter: a crash in
between leaves a duplicate, which the workers' commit deduplicates, never a loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facerec.broker import ATTEMPTS_HEADER, ERROR_HEADER, Broker
from facerec.settings import DELIVERY_CEILING, Settings


@dataclass(frozen=True)
class DeadLetter:
    image_hash: str  # from the message header; "" when missing or malformed
    name: str        # likewise
    reason: str      # why it was dead-lettered
    count: int       # deliveries before it was dead-lettered (0 when unknown)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def describe(headers: Mapping[str, Any] | None) -> DeadLetter:
    """What a dead letter's headers say about it."""
    headers = headers if isinstance(headers, Mapping) else {}
    image_hash, name = _text(headers.get("hash"))[:64], _text(headers.get("name"))
    if ERROR_HEADER in headers:
        attempts = headers.get(ATTEMPTS_HEADER)
        return DeadLetter(image_hash, name, _text(headers[ERROR_HEADER]),
                          attempts if isinstance(attempts, int) else 0)
    deaths = headers.get("x-death")
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    why = _text(death.get("reason")) if isinstance(death, Mapping) else ""
    queue = _text(death.get("queue")) if isinstance(death, Mapping) else ""
    if why == "delivery_limit":
        return DeadLetter(image_hash, name,
                          f"delivered {DELIVERY_CEILING} times without being settled (the "
                          f"worker crashed or lost its connection each time)", DELIVERY_CEILING)
    return DeadLetter(image_hash, name, f"dead-lettered by RabbitMQ: {why or 'unknown'}"
                      + (f" in {queue}" if queue else ""), 0)


def list_dead(settings: Settings, limit: int | None = None) -> list[DeadLetter]:
    """Every dead letter (at most `limit`), oldest first; the queue is left as it was."""
    broker = Broker(settings, name="facerec-dead")
    try:
        return [describe(m.headers) for m in broker.peek_dead(limit)]
    finally:
        broker.close()


def requeue_dead(settings: Settings, limit: int | None = None) -> int:
    """Move dead letters (at most `limit`) back to the work exchange; return how many."""
    broker = Broker(settings, name="facerec-dead")
    try:
        return broker.requeue_dead(limit)
    finally:
        broker.close()
