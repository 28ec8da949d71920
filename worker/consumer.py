"""What the worker does with one delivery: turn it into a Verdict.

RabbitMQ is the broker's business (facerec.broker.Consumer); the settlement rule is
facerec.retry's. This module parses the message, processes the image, keeps the image's
status true when it fails, and counts and logs what happened.
"""

from __future__ import annotations

import logging

from facerec import metrics
from facerec.broker import Delivery
from facerec.errors import InvalidMessage, PermanentError
from facerec.messages import ImageMessage
from facerec.pipeline import Processor
from facerec.retry import Verdict, admit, decide


class ImageHandler:
    """Called on the delivery thread for each image message; never raises."""

    def __init__(self, processor: Processor, log: logging.Logger) -> None:
        self.processor = processor
        self.max_deliveries = processor.settings.max_deliveries
        self.log = log

    def __call__(self, delivery: Delivery) -> Verdict:
        if delivery.attempt > 1:
            metrics.REDELIVERIES.inc()
        try:
            msg = ImageMessage.parse(delivery.headers, delivery.content_type, delivery.body)
        except InvalidMessage as exc:
            self.log.info("malformed message dead-lettered: %s", exc)
            return self._counted(decide(exc, delivery.attempt, self.max_deliveries))
        try:
            return self._counted(self._process(msg, delivery.attempt))
        except Exception as exc:  # noqa: BLE001 - e.g. stopped during a Redis outage
            self.log.info("image %s returned to the queue: %r", msg.image_hash, exc)
            return self._counted(Verdict("requeue", repr(exc)))

    def _process(self, msg: ImageMessage, attempt: int) -> Verdict:
        verdict = admit(attempt, self.max_deliveries)
        if verdict is None:
            if attempt == self.max_deliveries:
                # If this last delivery also dies with the process, no code of ours runs for
                # it again before the next delivery: say so now (a success overwrites it).
                self._mark_failed(msg, f"delivered {attempt} times: the worker crashed or "
                                       f"lost its connection on the earlier ones; last attempt")
            error: Exception | None = None
            try:
                self.processor.process(msg)
            except Exception as exc:  # noqa: BLE001 - any failure counts as an attempt
                error = exc
            verdict = decide(error, attempt, self.max_deliveries)
            if verdict.action == "requeue":
                self.log.info("image %s returned to the queue: %s", msg.image_hash,
                              verdict.reason, exc_info=not isinstance(error, PermanentError))
                return verdict
        if verdict.action == "dead":
            self._mark_failed(msg, verdict.reason)
            self.log.info("image %s (%r) failed: %s; dead-lettered", msg.image_hash, msg.name,
                          verdict.reason)
        return verdict

    def _mark_failed(self, msg: ImageMessage, reason: str) -> None:
        self.processor.with_retry("mark failed", lambda: self.processor.store.mark_failed(
            msg.image_hash, msg.name, reason, msg.ticket))

    @staticmethod
    def _counted(verdict: Verdict) -> Verdict:
        if verdict.action == "requeue":
            metrics.IMAGES.labels("requeued").inc()
        elif verdict.action == "dead":
            metrics.IMAGES.labels("failed").inc()
        return verdict
