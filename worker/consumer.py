"""What the worker does with one delivery: turn it into a Verdict.

RabbitMQ is the broker's business (facerec.broker.Consumer); the settlement rule is
facerec.retry's. This module parses the message, processes the image, keeps the image's
status true when it fails, and counts and logs what happened.
"""

from __future__ import annotations

import logging

from facerec import metrics
from facerec.broker import ERROR_HEADER, Delivery
from facerec.deadletters import describe
from facerec.errors import InvalidMessage, PermanentError
from facerec.messages import ImageMessage, is_image_hash
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

    def dead_lettered(self, delivery: Delivery) -> None:
        """A copy of a dead letter (on the request thread). Images this worker dead-lettered
        are marked failed already; one RabbitMQ dead-lettered after the delivery limit (the
        worker died on every delivery, so no code of ours saw the last one end) is marked
        here, with the broker's reason. A message of an erased image writes nothing."""
        headers = delivery.headers or {}
        if ERROR_HEADER in headers:
            return
        letter = describe(headers)
        ticket = headers.get("ticket")
        if not is_image_hash(letter.image_hash) or not letter.name:
            return
        self._mark_failed(ImageMessage(letter.image_hash, letter.name, "upload", b"",
                                       ticket=ticket if isinstance(ticket, str) else ""),
                          letter.reason)
        self.log.info("image %s (%r) dead-lettered by RabbitMQ: %s", letter.image_hash,
                      letter.name, letter.reason)

    @staticmethod
    def _counted(verdict: Verdict) -> Verdict:
        if verdict.action == "requeue":
            metrics.IMAGES.labels("requeued").inc()
        elif verdict.action == "dead":
            metrics.IMAGES.labels("failed").inc()
        return verdict
