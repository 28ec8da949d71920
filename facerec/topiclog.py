"""Logging on the `logs` topic exchange under `<hostname>.<component>.debug|info`.

Every component logs to stderr and, through its own `Broker` connection, to the exchange:
records are handed to the broker's I/O thread, so logging never blocks a request or an
image; when RabbitMQ is down, records still reach stderr and the topic copies are dropped
(and counted) rather than piling up. `follow` is the other end: it prints the stream.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from typing import Any

from facerec.broker import LOG_EXCHANGE, Broker, subscribe
from facerec.settings import Settings

ROOT_LOGGER = "facerec"
LEVELS = ("debug", "info")


def routing_key(hostname: str, component: str, levelno: int) -> str:
    return f"{hostname}.{component}.{LEVELS[0] if levelno < logging.INFO else LEVELS[1]}"


def component_of(key: str) -> tuple[str, str]:
    """(component, level) of a routing key made by routing_key(); "" when it is not one."""
    parts = key.rsplit(".", 2)
    return (parts[1], parts[2]) if len(parts) == 3 else ("", "")


# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: what
# could end a log line, move a terminal's cursor, or hide text.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """`text` with every character that could forge or hide a log line written as an
    escape (\\n, \\x1b, \\u2028): a record is always exactly one line."""
    return _UNSAFE.sub(lambda m: _NAMED.get(m[0]) or (
        f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}"), text)


class EscapingFormatter(logging.Formatter):
    """A formatter whose message part is escaped (it may hold request paths, names,
    URLs), and whose traceback lines are escaped and indented under the record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join("  | " + escape(line)
                         for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("  | " + escape(line) for line in stack_info.splitlines())


def _stderr_drop(exc: BaseException, delay: float) -> None:
    print(f"topic log unavailable ({exc!r}); retrying in {delay:.1f}s", file=sys.stderr)


class TopicLogHandler(logging.Handler):
    """Publishes each record to the logs exchange (fire and forget, from the I/O thread)."""

    def __init__(self, settings: Settings, component: str) -> None:
        super().__init__()
        self._hostname = settings.hostname
        self._component = component
        self._broker = Broker(settings, name=f"facerec-{component}-logs", on_drop=_stderr_drop)

    @property
    def dropped(self) -> int:
        return self._broker.dropped

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = routing_key(self._hostname, self._component, record.levelno)
            self._broker.publish_nowait(LOG_EXCHANGE, key,
                                        self.format(record).encode("utf-8", "replace"),
                                        content_type="text/plain")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def close(self) -> None:
        self._broker.close()
        super().close()


def setup_logging(settings: Settings, component: str) -> logging.Logger:
    """Configure the `facerec` logger: stderr plus the logs exchange. Returns the component's.

    Called once by each entrypoint (rest, worker, logs), never by library code.
    """
    root = logging.getLogger(ROOT_LOGGER)
    root.setLevel(settings.log_level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.INFO)
    stderr.setFormatter(EscapingFormatter(f"%(asctime)s {component} %(levelname)s %(message)s"))
    topic = TopicLogHandler(settings, component)
    topic.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    root.addHandler(stderr)
    root.addHandler(topic)
    root.propagate = False
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")


def follow(settings: Settings, pattern: str, emit: Callable[[str, str], None],
           stop: threading.Event) -> None:
    """Call emit(routing_key, text) for every log message matching `pattern` until `stop`.

    Reconnects when RabbitMQ goes away, and says so through emit.
    """
    def on_error(exc: BaseException, delay: float) -> None:
        emit("logs.listener.info", f"RabbitMQ unavailable ({exc!r}); retrying in {delay:.1f}s")

    subscribe(settings, pattern, lambda key, body: emit(key, body.decode("utf-8", "replace")),
              stop, on_error=on_error)
