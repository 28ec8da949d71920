"""Logging to the `logs` topic exchange under `<hostname>.<component>.debug|info`.

Records are handed to a background thread with its own AMQP connection, so logging never
blocks a request or an image; when RabbitMQ is down, records still reach stderr and the
topic copies are dropped (and counted) rather than piling up.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time

import pika

from facerec.broker import AMQP_ERRORS, LOG_EXCHANGE, connection_parameters
from facerec.settings import Settings

ROOT_LOGGER = "facerec"


def routing_key(hostname: str, component: str, levelno: int) -> str:
    return f"{hostname}.{component}.{'debug' if levelno < logging.INFO else 'info'}"


class TopicLogHandler(logging.Handler):
    """Publishes each record to the logs exchange from a daemon thread."""

    def __init__(self, settings: Settings, component: str, capacity: int = 10_000) -> None:
        super().__init__()
        self._settings = settings
        self._component = component
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(capacity)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="topic-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = routing_key(self._settings.hostname, self._component, record.levelno)
            self._queue.put_nowait((key, self.format(record).encode("utf-8", "replace")))
        except queue.Full:
            self.dropped += 1
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def _run(self) -> None:
        connection: pika.BlockingConnection | None = None
        backoff = 0.5
        while True:
            item = self._queue.get()
            if item is None:
                break
            key, body = item
            try:
                if connection is None or connection.is_closed:
                    connection = pika.BlockingConnection(
                        connection_parameters(self._settings, heartbeat=60))
                    channel = connection.channel()
                    channel.exchange_declare(LOG_EXCHANGE, exchange_type="topic", durable=True)
                channel.basic_publish(LOG_EXCHANGE, key, body,
                                      pika.BasicProperties(content_type="text/plain"))
                backoff = 0.5
            except AMQP_ERRORS as exc:
                self.dropped += 1
                connection = None
                print(f"topic log unavailable ({exc!r}); retrying in {backoff:.1f}s",
                      file=sys.stderr)
                time.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        if connection is not None and connection.is_open:
            connection.close()

    def flush(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.flush()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=2)
        super().close()


def setup_logging(settings: Settings, component: str) -> logging.Logger:
    """Configure the `facerec` logger: stderr plus the logs exchange. Returns the component's."""
    root = logging.getLogger(ROOT_LOGGER)
    root.setLevel(settings.log_level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.INFO)
    stderr.setFormatter(logging.Formatter(f"%(asctime)s {component} %(levelname)s %(message)s"))
    topic = TopicLogHandler(settings, component)
    topic.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(stderr)
    root.addHandler(topic)
    root.propagate = False
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")
