"""The AMQP side of the worker: consume, hand each image to a thread, settle the message.

Processing runs on a second thread while this one keeps the connection's I/O loop (and so
its heartbeats) going, then acknowledges only after the Redis commit. Each delivery ends in
exactly one of: ack (committed, or dead-lettered with its reason), or nack-requeue (an
unexpected error, retried until the delivery limit, or a stop during a Redis outage).
"""

from __future__ import annotations

import logging
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from facerec import metrics
from facerec.broker import AMQP_ERRORS, IMAGE_QUEUE, MAX_DELIVERIES, Broker, delivery_attempt
from facerec.errors import BrokerUnavailable, InvalidMessage, PermanentError, TransientError
from facerec.messages import ImageMessage
from facerec.pipeline import Processor

HEARTBEAT_EVERY = 5.0


@dataclass(frozen=True)
class Verdict:
    action: str  # "ack", "dead" (dead-letter with reason, then ack) or "requeue"
    reason: str = ""


def touch(path: str) -> None:
    Path(path).touch()


def heartbeat_age(path: str) -> float:
    """Seconds since the worker's loop last wrote its heartbeat file (inf if never)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class Worker:
    def __init__(self, processor: Processor, log: logging.Logger) -> None:
        self.processor = processor
        self.settings = processor.settings
        self.log = log
        self.stopping = processor.stop
        self.broker = Broker(self.settings)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image")
        self._busy = 0
        self._consumer_tag: str | None = None
        self._last_beat = 0.0

    def request_stop(self, signum: int = signal.SIGTERM, _frame: Any = None) -> None:
        if not self.stopping.is_set():
            self.log.info("signal %d: finishing the current image, then exiting", signum)
        self.stopping.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        backoff = 0.5
        while not self.stopping.is_set() or self._busy:
            try:
                self._consume()
                backoff = 0.5
            except (BrokerUnavailable, *AMQP_ERRORS) as exc:
                self.broker.reset()
                self._consumer_tag = None
                # The image thread may still finish; its ack would go to a dead channel,
                # and the broker redelivers the message, which the commit script dedups.
                self._busy = 0
                if self.stopping.is_set():
                    break
                self.log.info("RabbitMQ connection lost (%r); reconnecting in %.1fs",
                              exc, backoff)
                self._beat()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._executor.shutdown(wait=True)
        self.broker.close()
        self.log.info("worker stopped")

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._last_beat >= HEARTBEAT_EVERY:
            touch(self.settings.worker_heartbeat_file)
            self._last_beat = now

    def _consume(self) -> None:
        channel = self.broker.channel
        channel.basic_qos(prefetch_count=self.settings.prefetch)
        self._consumer_tag = channel.basic_consume(IMAGE_QUEUE, self._on_message)
        self.log.info("consuming %s (prefetch %d)", IMAGE_QUEUE, self.settings.prefetch)
        while not self.stopping.is_set() or self._busy:
            self._beat()
            if self.stopping.is_set() and self._consumer_tag is not None:
                channel.basic_cancel(self._consumer_tag)
                self._consumer_tag = None
            self.broker.connection.process_data_events(time_limit=1)

    def _on_message(self, channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    props: pika.BasicProperties, body: bytes) -> None:
        self._busy += 1
        attempt = delivery_attempt(props.headers)
        if attempt > 1:
            metrics.REDELIVERIES.inc()
        future = self._executor.submit(self.handle, props, body, attempt)
        connection = self.broker.connection
        future.add_done_callback(lambda f: connection.add_callback_threadsafe(
            partial(self._settle, channel, method.delivery_tag, props, body, f)))

    def handle(self, props: pika.BasicProperties, body: bytes, attempt: int) -> Verdict:
        """Process one delivery (on the image thread) and say how to settle it."""
        try:
            msg = ImageMessage.parse(props.headers, props.content_type, body)
        except InvalidMessage as exc:
            self.log.info("malformed message dead-lettered: %s", exc)
            return Verdict("dead", f"invalid message: {exc}")
        if attempt >= MAX_DELIVERIES:
            # If this last delivery also dies with the process, the broker dead-letters the
            # message and no code of ours runs again: say so now (a success overwrites it).
            self.processor.with_retry("mark failed", lambda: self.processor.store.mark_failed(
                msg.image_hash, msg.name, f"delivered {attempt} times: the worker crashed or "
                f"lost its connection on the earlier ones; last attempt"))
        try:
            self.processor.process(msg)
            return Verdict("ack")
        except PermanentError as exc:
            reason = str(exc)
        except TransientError as exc:
            self.log.info("image %s returned to the queue: %s", msg.image_hash, exc)
            return Verdict("requeue")
        except Exception as exc:  # noqa: BLE001 - any failure counts as an attempt
            if attempt < MAX_DELIVERIES:
                self.log.info("image %s failed on attempt %d of %d (%r); requeued",
                              msg.image_hash, attempt, MAX_DELIVERIES, exc, exc_info=True)
                return Verdict("requeue")
            reason = f"failed {attempt} times, last: {exc!r}"
        self.processor.with_retry("mark failed", lambda: self.processor.store.mark_failed(
            msg.image_hash, msg.name, reason))
        self.log.info("image %s (%r) failed: %s; dead-lettered", msg.image_hash, msg.name, reason)
        return Verdict("dead", reason)

    def _settle(self, channel: BlockingChannel, tag: int, props: pika.BasicProperties,
                body: bytes, future: Future[Verdict]) -> None:
        self._busy = max(0, self._busy - 1)
        if not channel.is_open:
            return  # the broker will redeliver; the commit is idempotent
        try:
            verdict = future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. stopped during a Redis outage
            self.log.info("delivery %d returned to the queue: %r", tag, exc)
            verdict = Verdict("requeue")
        if verdict.action == "requeue":
            metrics.IMAGES.labels("requeued").inc()
            channel.basic_nack(tag, requeue=True)
            return
        if verdict.action == "dead":
            metrics.IMAGES.labels("failed").inc()
            self.broker.publish_dead(props.headers, props.content_type, body, verdict.reason)
        channel.basic_ack(tag)
