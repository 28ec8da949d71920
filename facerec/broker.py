"""Everything about RabbitMQ: names, topology, connections, confirmed publishing.

The image queue is a durable quorum queue shared by all workers (competing consumers), so
images published while no worker runs wait there. The broker counts deliveries of each
message (x-delivery-count) and dead-letters one that exceeds MAX_DELIVERIES — crashes
included; a worker dead-letters permanent failures itself, with the reason in a header.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from facerec.errors import BrokerUnavailable
from facerec.messages import CONTENT_TYPE, ImageMessage
from facerec.settings import Settings

WORK_EXCHANGE = "toWorker"
LOG_EXCHANGE = "logs"
IMAGE_QUEUE = "toWorker.images"
IMAGE_ROUTING_KEY = "image"
DEAD_EXCHANGE = "toWorker.dead"
DEAD_QUEUE = "toWorker.images.dead"
DEAD_ROUTING_KEY = "dead"
# Fixed, not a setting: queue arguments must be identical wherever the queue is declared.
MAX_DELIVERIES = 5
ERROR_HEADER = "x-facerec-error"
# Deliveries before a worker dead-lettered the message. Not x-delivery-count: the dead-letter
# queue counts its own deliveries under that name, so a copy would be overwritten.
ATTEMPTS_HEADER = "x-facerec-attempts"
DELIVERY_COUNT_HEADER = "x-delivery-count"

AMQP_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)


def connection_parameters(settings: Settings, heartbeat: int | None = None
                          ) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=settings.rabbitmq_host, port=settings.rabbitmq_port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(settings.rabbitmq_user, settings.rabbitmq_password),
        heartbeat=settings.rabbitmq_heartbeat if heartbeat is None else heartbeat,
        connection_attempts=1, socket_timeout=3, stack_timeout=5,
        blocked_connection_timeout=10, client_properties={"connection_name": "facerec"})


def declare_topology(channel: BlockingChannel) -> None:
    """Declare every exchange and queue; idempotent, done by each component on connect."""
    channel.exchange_declare(WORK_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(LOG_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_declare(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, routing_key=DEAD_ROUTING_KEY)
    channel.queue_declare(IMAGE_QUEUE, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": MAX_DELIVERIES - 1,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": DEAD_ROUTING_KEY,
    })
    channel.queue_bind(IMAGE_QUEUE, WORK_EXCHANGE, routing_key=IMAGE_ROUTING_KEY)


def delivery_attempt(headers: Mapping[str, Any] | None) -> int:
    """1 for a first delivery, n+1 after n returns to the queue (quorum queues count)."""
    count = (headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return int(count) + 1 if isinstance(count, int) else 1


class Broker:
    """One lazily opened connection and confirming channel. Not thread-safe: one per thread."""

    def __init__(self, settings: Settings, heartbeat: int | None = None) -> None:
        self._settings = settings
        self._heartbeat = heartbeat
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    @property
    def connection(self) -> pika.BlockingConnection:
        self.channel  # noqa: B018 - opens the connection
        assert self._connection is not None
        return self._connection

    @property
    def channel(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.reset()
            try:
                self._connection = pika.BlockingConnection(
                    connection_parameters(self._settings, self._heartbeat))
                channel = self._connection.channel()
                declare_topology(channel)
                channel.confirm_delivery()
            except AMQP_ERRORS as exc:
                self.reset()
                raise BrokerUnavailable(f"RabbitMQ unreachable: {exc!r}") from exc
            self._channel = channel
        return self._channel

    def reset(self) -> None:
        """Forget the connection (after an error); the next use opens a new one."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except AMQP_ERRORS:
                pass

    close = reset

    def ping(self) -> bool:
        try:
            self.channel.connection.process_data_events(time_limit=0)
            return True
        except (BrokerUnavailable, *AMQP_ERRORS):
            self.reset()
            return False

    def _publish(self, exchange: str, routing_key: str, body: bytes,
                 headers: Mapping[str, Any], content_type: str | None) -> None:
        props = pika.BasicProperties(content_type=content_type, delivery_mode=2,
                                     headers=dict(headers), timestamp=int(time.time()))
        # One retry on a new connection: the first use of a connection the broker dropped
        # (restart) fails, and so, now and then, does a declare racing another client's.
        for attempt in (1, 2):
            try:
                self.channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
                return
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                raise BrokerUnavailable(f"RabbitMQ did not accept the message: {exc!r}") from exc
            except (BrokerUnavailable, *AMQP_ERRORS) as exc:
                self.reset()
                if attempt == 2:
                    if isinstance(exc, BrokerUnavailable):
                        raise
                    raise BrokerUnavailable(f"publish failed: {exc!r}") from exc

    def publish_image(self, msg: ImageMessage) -> None:
        """Queue an image; returns once the broker confirmed it is stored."""
        self._publish(WORK_EXCHANGE, IMAGE_ROUTING_KEY, msg.body, msg.headers(), CONTENT_TYPE)

    def publish_dead(self, headers: Mapping[str, Any] | None, content_type: str | None,
                     body: bytes, reason: str) -> None:
        """Put a message in the dead-letter queue, with why it failed."""
        kept = dict(headers) if isinstance(headers, Mapping) else {}
        kept[ERROR_HEADER] = reason[:1000]
        kept[ATTEMPTS_HEADER] = delivery_attempt(headers)
        self._publish(DEAD_EXCHANGE, DEAD_ROUTING_KEY, body, kept, content_type)

    def queue_depth(self, queue: str = IMAGE_QUEUE) -> int:
        """Messages ready in `queue` (unacknowledged ones are not counted)."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)
