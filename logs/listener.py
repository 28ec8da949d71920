"""Bind a private queue to the `logs` exchange and hand each message to a callback."""

from __future__ import annotations

import time
from typing import Callable

import pika

from facerec.broker import AMQP_ERRORS, LOG_EXCHANGE, connection_parameters
from facerec.settings import Settings

Printer = Callable[[str, str], None]


def listen(settings: Settings, pattern: str, emit: Printer,
           stop_after: float | None = None) -> None:
    """Call emit(routing_key, text) for every log message until interrupted.

    Reconnects when RabbitMQ goes away. `stop_after` (seconds) bounds the run (tests).
    """
    deadline = None if stop_after is None else time.monotonic() + stop_after
    backoff = 0.5
    while deadline is None or time.monotonic() < deadline:
        try:
            connection = pika.BlockingConnection(connection_parameters(settings))
            channel = connection.channel()
            channel.exchange_declare(LOG_EXCHANGE, exchange_type="topic", durable=True)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, LOG_EXCHANGE, routing_key=pattern)

            def on_message(_ch: object, method: pika.spec.Basic.Deliver,
                           _props: pika.BasicProperties, body: bytes) -> None:
                emit(method.routing_key, body.decode("utf-8", "replace"))

            channel.basic_consume(queue, on_message, auto_ack=True)
            backoff = 0.5
            while deadline is None or time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.5)
            connection.close()
        except AMQP_ERRORS as exc:
            emit("logs.listener.info", f"RabbitMQ unavailable ({exc!r}); retrying")
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
