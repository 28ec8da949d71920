"""Everything about RabbitMQ: names, topology, connections, publishing and consuming.

No other module imports pika. Three ways in:

- `Broker`: one connection owned by a background I/O thread, which any thread may use:
  confirmed publishing (images, dead-letter requeues), fire-and-forget publishing (topic
  logs), queue depth, reading the dead-letter queue. While idle the thread keeps the
  connection's heartbeats, so the broker never drops it as dead.
- `Consumer`: the worker's side. Deliveries are handed to a second thread while this
  one keeps the I/O loop (and heartbeats) going; the handler's `Verdict` is settled back
  on the I/O thread: ack, requeue, or dead-letter with the reason.
- `subscribe`: a private queue bound to the logs exchange (the log listener).

The image queue is a durable quorum queue shared by all workers (competing consumers), so
images published while no worker runs wait there. RabbitMQ counts the deliveries of each
message (x-delivery-count); the worker dead-letters a message past MAX_DELIVERIES itself
(facerec.retry.admit), and the queue's own `x-delivery-limit` is the backstop for a
message that kills every worker before any code of ours runs.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from facerec.errors import BrokerUnavailable, SearchUnavailable
from facerec.messages import CONTENT_TYPE, ImageMessage
from facerec.retry import Backoff, Verdict, retry
from facerec.settings import DELIVERY_CEILING, Settings

T = TypeVar("T")

WORK_EXCHANGE = "toWorker"
LOG_EXCHANGE = "logs"
IMAGE_QUEUE = "toWorker.images"
IMAGE_ROUTING_KEY = "image"
# Searches (ask without storing): a queue of their own, so a search never waits behind a
# backlog of scans; requests are transient and expire, answers go to RabbitMQ's direct
# reply-to pseudo-queue of the asking connection.
SEARCH_QUEUE = "toWorker.search"
SEARCH_ROUTING_KEY = "search"
REPLY_TO = "amq.rabbitmq.reply-to"
DEAD_EXCHANGE = "toWorker.dead"
DEAD_QUEUE = "toWorker.images.dead"
DEAD_ROUTING_KEY = "dead"
# A copy of every dead letter, for the workers: one RabbitMQ dead-lettered after the
# delivery limit (a worker crashed on each try) is how the image's status learns of it.
DEAD_EVENTS_QUEUE = "toWorker.dead.events"
ERROR_HEADER = "x-facerec-error"
# Deliveries before a worker dead-lettered the message. Not x-delivery-count: the dead-letter
# queue counts its own deliveries under that name, so a copy would be overwritten.
ATTEMPTS_HEADER = "x-facerec-attempts"
DELIVERY_COUNT_HEADER = "x-delivery-count"
# Headers describing a past life as a dead letter: dropped when the message is requeued.
DEAD_LETTER_HEADERS = frozenset({ERROR_HEADER, ATTEMPTS_HEADER, DELIVERY_COUNT_HEADER,
                                 "x-death"})
_DEAD_LETTER_PREFIXES = ("x-first-death-", "x-last-death-")

AMQP_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, OSError)
_RECONNECT: tuple[type[BaseException], ...] = (BrokerUnavailable, *AMQP_ERRORS)


def connection_parameters(settings: Settings, name: str = "facerec") -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=settings.rabbitmq_host, port=settings.rabbitmq_port,
        virtual_host=settings.rabbitmq_vhost,
        credentials=pika.PlainCredentials(settings.rabbitmq_user, settings.rabbitmq_password),
        heartbeat=settings.rabbitmq_heartbeat,
        connection_attempts=1, socket_timeout=3, stack_timeout=5,
        blocked_connection_timeout=10, client_properties={"connection_name": name})


def declare_topology(channel: BlockingChannel) -> None:
    """Declare every exchange and queue; idempotent, done by each component on connect."""
    channel.exchange_declare(WORK_EXCHANGE, exchange_type="direct", durable=True)
    channel.exchange_declare(LOG_EXCHANGE, exchange_type="topic", durable=True)
    channel.exchange_declare(DEAD_EXCHANGE, exchange_type="direct", durable=True)
    channel.queue_declare(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_QUEUE, DEAD_EXCHANGE, routing_key=DEAD_ROUTING_KEY)
    channel.queue_declare(DEAD_EVENTS_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(DEAD_EVENTS_QUEUE, DEAD_EXCHANGE, routing_key=DEAD_ROUTING_KEY)
    channel.queue_declare(IMAGE_QUEUE, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_CEILING - 1,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-routing-key": DEAD_ROUTING_KEY,
    })
    channel.queue_bind(IMAGE_QUEUE, WORK_EXCHANGE, routing_key=IMAGE_ROUTING_KEY)
    channel.queue_declare(SEARCH_QUEUE, durable=False, arguments={
        "x-queue-type": "classic", "x-message-ttl": 60_000})
    channel.queue_bind(SEARCH_QUEUE, WORK_EXCHANGE, routing_key=SEARCH_ROUTING_KEY)


def connect(settings: Settings, name: str = "facerec"
            ) -> tuple[pika.BlockingConnection, BlockingChannel]:
    """A new connection with a confirming channel on which the topology is declared."""
    connection: pika.BlockingConnection | None = None
    try:
        connection = pika.BlockingConnection(connection_parameters(settings, name))
        channel = connection.channel()
        declare_topology(channel)
        channel.confirm_delivery()
        return connection, channel
    except AMQP_ERRORS as exc:
        _close_quietly(connection)
        raise BrokerUnavailable(f"RabbitMQ unreachable: {exc!r}") from exc


def _close_quietly(connection: pika.BlockingConnection | None) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except AMQP_ERRORS:
            pass


def delivery_attempt(headers: Mapping[str, Any] | None) -> int:
    """1 for a first delivery, n+1 after n returns to the queue (quorum queues count)."""
    count = (headers or {}).get(DELIVERY_COUNT_HEADER, 0)
    return int(count) + 1 if isinstance(count, int) else 1


def dead_letter_headers(headers: Mapping[str, Any] | None, reason: str) -> dict[str, Any]:
    """A dead letter's headers: the message's own, with why it failed and after how many."""
    kept = dict(headers) if isinstance(headers, Mapping) else {}
    kept[ERROR_HEADER] = reason[:1000]
    kept[ATTEMPTS_HEADER] = delivery_attempt(headers)
    return kept


def without_dead_letter_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The headers a message had before it was dead-lettered (for a requeue)."""
    return {k: v for k, v in (headers or {}).items()
            if k not in DEAD_LETTER_HEADERS and not k.startswith(_DEAD_LETTER_PREFIXES)}


def _properties(headers: Mapping[str, Any] | None, content_type: str | None,
                persistent: bool = True) -> pika.BasicProperties:
    return pika.BasicProperties(content_type=content_type, delivery_mode=2 if persistent else 1,
                                headers=None if headers is None else dict(headers),
                                timestamp=int(time.time()))


def _publish(channel: BlockingChannel, exchange: str, routing_key: str, body: bytes,
             properties: pika.BasicProperties) -> None:
    """Publish on a confirming channel: returns once the broker has stored the message."""
    try:
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
        raise BrokerUnavailable(f"RabbitMQ did not accept the message: {exc!r}") from exc


@dataclass(frozen=True)
class Delivery:
    """A received message, as the handler sees it."""

    headers: Mapping[str, Any] | None  # None: the message had no headers table
    content_type: str | None
    body: bytes
    attempt: int  # 1 for the first delivery (see delivery_attempt)
    reply_to: str | None = None  # where a request's answer goes (searches)
    correlation_id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A request's answer (facerec.broker.Consumer publishes it to the asker)."""

    body: bytes
    headers: Mapping[str, Any]
    content_type: str = "application/json"


@dataclass(frozen=True)
class DeadMessage:
    headers: Mapping[str, Any]
    content_type: str | None
    body: bytes


@dataclass
class _Call:
    fn: Callable[[BlockingChannel], Any]
    future: Future[Any] | None  # None: fire and forget


class Broker:
    """One connection owned by a background I/O thread; thread-safe.

    `call(fn)` runs fn(channel) on that thread and returns its result; a call whose
    connection fails is tried once more on a new connection (the first use of a connection
    the broker dropped fails, and so, now and then, does a declare racing another
    client's). Fire-and-forget calls (`publish_nowait`) wait in a bounded queue and are
    dropped, and counted, when it is full or RabbitMQ is down; after such a failure the
    thread backs off before it connects again.
    """

    def __init__(self, settings: Settings, name: str = "facerec", capacity: int = 10_000,
                 on_drop: Callable[[BaseException, float], None] | None = None) -> None:
        self._settings = settings
        self._name = name
        self._calls: queue.Queue[_Call | None] = queue.Queue(capacity)
        self._on_drop = on_drop
        self._backoff = Backoff(first=0.5, maximum=30.0)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._replies: dict[str, Future[Reply]] = {}  # correlation id -> the asker's future
        self._replies_on: BlockingChannel | None = None  # channel consuming REPLY_TO
        self._closed = False
        self.dropped = 0
        # Heartbeats are answered when the thread looks at the socket: more often than the
        # negotiated interval, so an idle connection is never taken for a dead one.
        self._idle = max(0.2, min(5.0, settings.rabbitmq_heartbeat / 4))
        self._thread = threading.Thread(target=self._run, name=f"amqp-{name}", daemon=True)
        self._thread.start()

    # -- any thread -----------------------------------------------------------------------

    def call(self, fn: Callable[[BlockingChannel], T], timeout: float = 15.0) -> T:
        """Run fn(channel) on the I/O thread; BrokerUnavailable if it cannot be done."""
        if self._closed:
            raise BrokerUnavailable("the broker connection is closed")
        future: Future[T] = Future()
        try:
            self._calls.put(_Call(fn, future), timeout=timeout)
        except queue.Full:
            raise BrokerUnavailable("too many RabbitMQ operations waiting") from None
        try:
            return future.result(timeout)
        except FutureTimeout:
            # Not started yet: it never will be, so an error answer means nothing was sent.
            future.cancel()
            raise BrokerUnavailable(f"RabbitMQ did not answer within {timeout:.0f}s") from None

    def publish(self, exchange: str, routing_key: str, body: bytes,
                headers: Mapping[str, Any] | None = None, content_type: str | None = None
                ) -> None:
        """Publish a persistent message; returns once the broker confirmed it is stored."""
        props = _properties(headers, content_type)
        self.call(lambda ch: _publish(ch, exchange, routing_key, body, props))

    def publish_image(self, msg: ImageMessage) -> None:
        """Queue an image; returns once the broker confirmed it is stored."""
        self.publish(WORK_EXCHANGE, IMAGE_ROUTING_KEY, msg.body, msg.headers(), CONTENT_TYPE)

    def publish_nowait(self, exchange: str, routing_key: str, body: bytes,
                       content_type: str | None = None) -> bool:
        """Queue a transient message for publishing (no confirm); False if dropped."""
        props = _properties(None, content_type, persistent=False)

        def send(ch: BlockingChannel) -> None:
            ch.basic_publish(exchange, routing_key, body, props)
        try:
            self._calls.put_nowait(_Call(send, None))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def request(self, routing_key: str, body: bytes, headers: Mapping[str, Any],
                timeout: float, content_type: str = CONTENT_TYPE) -> Reply:
        """Ask the consumers of a request queue and wait for the answer (RPC).

        SearchUnavailable at once when no consumer is there, or when none answered within
        `timeout`; the request expires in the queue after `timeout`, so a late worker
        never does the work for nobody.
        """
        correlation = uuid.uuid4().hex
        answer: Future[Reply] = Future()
        props = pika.BasicProperties(content_type=content_type, delivery_mode=1,
                                     headers=dict(headers), reply_to=REPLY_TO,
                                     correlation_id=correlation,
                                     expiration=str(max(1, int(timeout * 1000))))

        def send(ch: BlockingChannel) -> None:
            declared = ch.queue_declare(SEARCH_QUEUE, passive=True)
            if not declared.method.consumer_count:
                raise SearchUnavailable("no worker is serving searches right now")
            if self._replies_on is not ch:
                ch.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)
                self._replies_on = ch
            self._replies[correlation] = answer
            _publish(ch, WORK_EXCHANGE, routing_key, body, props)
        started = time.monotonic()
        try:
            self.call(send, timeout=timeout)
            return answer.result(max(0.0, timeout - (time.monotonic() - started)))
        except FutureTimeout:
            raise SearchUnavailable(f"no worker answered within {timeout:g}s") from None
        finally:
            self._replies.pop(correlation, None)

    def _on_reply(self, _ch: BlockingChannel, _method: pika.spec.Basic.Deliver,
                  props: pika.BasicProperties, body: bytes) -> None:
        answer = self._replies.pop(props.correlation_id or "", None)
        if answer is not None and not answer.done():
            answer.set_result(Reply(body, props.headers or {},
                                    props.content_type or "application/json"))

    def queue_depth(self, name: str = IMAGE_QUEUE) -> int:
        """Messages ready in a queue (unacknowledged ones are not counted)."""
        return self.call(lambda ch: int(ch.queue_declare(name, passive=True)
                                        .method.message_count))

    def ping(self, timeout: float = 5.0) -> bool:
        try:
            self.call(lambda ch: None, timeout=timeout)
            return True
        except BrokerUnavailable:
            return False

    def peek_dead(self, limit: int | None = None) -> list[DeadMessage]:
        """The dead letters (at most `limit`), oldest first, left in their queue."""
        def peek(ch: BlockingChannel) -> list[DeadMessage]:
            found: list[DeadMessage] = []
            try:
                while limit is None or len(found) < limit:
                    method, props, body = ch.basic_get(DEAD_QUEUE, auto_ack=False)
                    if method is None:
                        break
                    found.append(DeadMessage(props.headers or {}, props.content_type, body))
            finally:
                if found:
                    ch.basic_nack(delivery_tag=0, multiple=True, requeue=True)
            return found
        return self.call(peek)

    def requeue_dead(self, limit: int | None = None) -> int:
        """Move dead letters back to the work exchange, without their dead-letter headers.

        Each copy is confirmed before its dead letter is acknowledged (a crash in between
        leaves a duplicate, which the commit deduplicates, never a loss). Only what is
        there at the start is moved, so one dead-lettered again at once is not looped.
        """
        def move(ch: BlockingChannel) -> int:
            present = int(ch.queue_declare(DEAD_QUEUE, passive=True).method.message_count)
            todo = present if limit is None else min(limit, present)
            moved = 0
            while moved < todo:
                method, props, body = ch.basic_get(DEAD_QUEUE, auto_ack=False)
                if method is None:
                    break
                _publish(ch, WORK_EXCHANGE, IMAGE_ROUTING_KEY, body, _properties(
                    without_dead_letter_headers(props.headers), props.content_type))
                ch.basic_ack(method.delivery_tag)
                moved += 1
            return moved
        return self.call(move, timeout=120.0)

    def purge_dead(self, image_hash: str) -> int:
        """Drop the dead letters of one image (erasure); return how many.

        Each other dead letter present at the start is published again to the dead-letter
        queue (confirmed) before it is acknowledged: it moves to the end, never lost.
        """
        def purge(ch: BlockingChannel) -> int:
            present = int(ch.queue_declare(DEAD_QUEUE, passive=True).method.message_count)
            dropped = 0
            for _ in range(present):
                method, props, body = ch.basic_get(DEAD_QUEUE, auto_ack=False)
                if method is None:
                    break
                named = (props.headers or {}).get("hash")
                if isinstance(named, bytes):
                    named = named.decode("utf-8", "replace")
                if named != image_hash:
                    _publish(ch, DEAD_EXCHANGE, DEAD_ROUTING_KEY, body,
                             _properties(props.headers, props.content_type))
                else:
                    dropped += 1
                ch.basic_ack(method.delivery_tag)
            return dropped
        return self.call(purge, timeout=120.0)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to `timeout`), then close the connection."""
        if self._closed:
            return
        self._closed = True
        try:
            self._calls.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    # -- the I/O thread -------------------------------------------------------------------

    def _channel_now(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self._reset()
            self._connection, self._channel = connect(self._settings, self._name)
        return self._channel

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._replies_on = None
        for answer in list(self._replies.values()):
            if not answer.done():
                answer.set_exception(SearchUnavailable("the RabbitMQ connection was lost"))
        self._replies.clear()
        _close_quietly(connection)

    def _run(self) -> None:
        while True:
            try:
                # While answers are awaited, look at the socket often: they arrive there.
                item = self._calls.get(timeout=0.005 if self._replies else self._idle)
            except queue.Empty:
                self._keep_alive()
                continue
            if item is None:
                break
            if item.future is not None and not item.future.set_running_or_notify_cancel():
                continue  # its caller gave up waiting
            try:
                result = retry(functools.partial(self._apply, item.fn), on=_RECONNECT,
                               backoff=Backoff(first=0.0), attempts=2,
                               log=lambda _exc, _delay: self._reset())
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                self._failed(item, exc)
                continue
            self._backoff.reset()
            if item.future is not None:
                item.future.set_result(result)
        self._reset()

    def _apply(self, fn: Callable[[BlockingChannel], T]) -> T:
        return fn(self._channel_now())

    def _failed(self, item: _Call, exc: Exception) -> None:
        if isinstance(exc, AMQP_ERRORS):
            self._reset()
            exc = BrokerUnavailable(f"RabbitMQ operation failed: {exc!r}")
        if item.future is not None:
            item.future.set_exception(exc)
            return
        self.dropped += 1
        delay = self._backoff.next()
        if self._on_drop is not None:
            self._on_drop(exc, delay)
        time.sleep(delay)

    def _keep_alive(self) -> None:
        if self._connection is not None and self._connection.is_open:
            try:
                self._connection.process_data_events(time_limit=0)
            except AMQP_ERRORS:
                self._reset()


Handler = Callable[[Delivery], Verdict]
Responder = Callable[[Delivery], Reply]


class Consumer:
    """Consume a queue: each delivery is handled on a second thread, settled on this one.

    Each delivery ends in exactly one of ack, nack-requeue, or dead-letter (a confirmed
    publish to the dead-letter exchange with the reason, then ack). A lost connection is
    re-opened with backoff; a delivery whose handler finishes after its connection was
    lost is redelivered by RabbitMQ (the handler must be idempotent: the commit is).

    Without `handle`, the image queue is not consumed (a search-only worker). With
    `respond`, the search queue is consumed too, on a channel and a thread of its
    own (so a search never waits for the image in hand): each request's Reply is sent to
    its asker, then the request is acknowledged. With `on_dead`, so is the copy of every
    dead letter (DEAD_EVENTS_QUEUE), on that same thread: acknowledged once on_dead
    returns, returned to the queue if it raises.
    """

    def __init__(self, settings: Settings, handle: Handler | None, *,
                 stopping: threading.Event,
                 tick: Callable[[], None], on_error: Callable[[BaseException, float], None],
                 on_consume: Callable[[], None], queue_name: str = IMAGE_QUEUE,
                 respond: Responder | None = None,
                 on_dead: Callable[[Delivery], None] | None = None) -> None:
        self._settings = settings
        self._handle = handle
        self._stopping = stopping
        self._tick = tick
        self._on_error = on_error
        self._on_consume = on_consume
        self._queue = queue_name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delivery")
        self._respond = respond
        self._on_dead = on_dead
        self._requests = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
        self._busy = 0
        self._tag: str | None = None  # the image consumer's, while consuming

    def run(self) -> None:
        """Consume until `stopping` is set and the current delivery is settled."""
        def on_error(exc: BaseException, delay: float) -> None:
            self._tick()
            self._on_error(exc, delay)
        try:
            retry(self._session, on=_RECONNECT, backoff=Backoff(first=0.5, maximum=10.0),
                  stop=self._stopping, log=on_error)
        except _RECONNECT:
            pass  # stopped while RabbitMQ was away: unsettled deliveries are redelivered
        finally:
            self._executor.shutdown(wait=True)
            self._requests.shutdown(wait=True, cancel_futures=True)

    def _session(self) -> None:
        # The image thread may still finish a delivery of a lost connection; its settlement
        # would go to a dead channel, so it is no longer counted.
        self._busy = 0
        connection, channel = connect(self._settings, "facerec-worker")
        try:
            channel.basic_qos(prefetch_count=self._settings.prefetch)
            if self._handle is not None:
                self._tag = channel.basic_consume(self._queue,
                                                  partial(self._on_message, connection))
            requests: BlockingChannel | None = None
            if self._respond is not None or self._on_dead is not None:
                requests = connection.channel()
                requests.basic_qos(prefetch_count=1)
            if self._respond is not None and requests is not None:
                requests.basic_consume(SEARCH_QUEUE, partial(self._on_request, connection))
            if self._on_dead is not None and requests is not None:
                requests.basic_consume(DEAD_EVENTS_QUEUE,
                                       partial(self._on_dead_event, connection))
            self._on_consume()
            while not self._stopping.is_set() or self._busy:
                self._tick()
                if self._stopping.is_set():
                    self._cancel(channel)
                    if requests is not None:
                        requests.close()  # unanswered requests go to another worker
                        requests = None
                connection.process_data_events(time_limit=1)
        finally:
            _close_quietly(connection)

    @staticmethod
    def _dispatch(connection: pika.BlockingConnection, executor: ThreadPoolExecutor,
                  work: Callable[[Delivery], T], delivery: Delivery,
                  settle: Callable[[Future[T]], None]) -> None:
        """Run work(delivery) on `executor`; settle its future back on the I/O thread."""
        future = executor.submit(work, delivery)
        future.add_done_callback(lambda f: connection.add_callback_threadsafe(
            partial(settle, f)))

    def _on_message(self, connection: pika.BlockingConnection, channel: BlockingChannel,
                    method: pika.spec.Basic.Deliver, props: pika.BasicProperties,
                    body: bytes) -> None:
        self._busy += 1
        delivery = Delivery(props.headers, props.content_type, body,
                            delivery_attempt(props.headers))
        assert self._handle is not None  # consumed only with a handler
        self._dispatch(connection, self._executor, self._handle, delivery,
                       partial(self._settle, channel, method.delivery_tag, delivery))

    def _on_request(self, connection: pika.BlockingConnection, channel: BlockingChannel,
                    method: pika.spec.Basic.Deliver, props: pika.BasicProperties,
                    body: bytes) -> None:
        assert self._respond is not None
        delivery = Delivery(props.headers, props.content_type, body,
                            delivery_attempt(props.headers), props.reply_to,
                            props.correlation_id)
        self._dispatch(connection, self._requests, self._respond, delivery,
                       partial(self._answer, channel, method.delivery_tag, delivery))

    def _on_dead_event(self, connection: pika.BlockingConnection, channel: BlockingChannel,
                       method: pika.spec.Basic.Deliver, props: pika.BasicProperties,
                       body: bytes) -> None:
        assert self._on_dead is not None
        delivery = Delivery(props.headers, props.content_type, b"",
                            delivery_attempt(props.headers))
        self._dispatch(connection, self._requests, self._on_dead, delivery,
                       partial(self._noted, channel, method.delivery_tag))

    @staticmethod
    def _noted(channel: BlockingChannel, tag: int, future: Future[None]) -> None:
        """A dead event: acknowledged once handled, returned to its queue if that failed."""
        if not channel.is_open:
            return
        if future.exception() is None:
            channel.basic_ack(tag)
        else:
            channel.basic_nack(tag, requeue=True)

    def _answer(self, channel: BlockingChannel, tag: int, delivery: Delivery,
                future: Future[Reply]) -> None:
        if not channel.is_open:
            return
        try:
            reply = future.result()
        except Exception as exc:  # noqa: BLE001 - the asker gets an answer, not a timeout
            reply = Reply(b'{"error": "the worker failed on this request"}',
                          {"status": "error", "detail": repr(exc)[:500]})
        if delivery.reply_to:
            channel.basic_publish("", delivery.reply_to, reply.body, pika.BasicProperties(
                content_type=reply.content_type, correlation_id=delivery.correlation_id,
                headers=dict(reply.headers)))
        channel.basic_ack(tag)

    def _cancel(self, channel: BlockingChannel) -> None:
        """Stop receiving images (before settling the last one when stopping: an ack frees
        the prefetch slot, and a message sent into it would come back as a redelivery,
        costing an image it never saw one of its attempts)."""
        if self._tag is not None and channel.is_open:
            channel.basic_cancel(self._tag)
        self._tag = None

    def _settle(self, channel: BlockingChannel, tag: int, delivery: Delivery,
                future: Future[Verdict]) -> None:
        self._busy = max(0, self._busy - 1)
        if not channel.is_open:
            return  # RabbitMQ redelivers it
        if self._stopping.is_set():
            self._cancel(channel)
        try:
            verdict = future.result()
        except Exception as exc:  # noqa: BLE001 - a handler bug must not lose the message
            verdict = Verdict("requeue", f"handler failed: {exc!r}")
        if verdict.action == "requeue":
            channel.basic_nack(tag, requeue=True)
            return
        if verdict.action == "dead":
            _publish(channel, DEAD_EXCHANGE, DEAD_ROUTING_KEY, delivery.body, _properties(
                dead_letter_headers(delivery.headers, verdict.reason), delivery.content_type))
        channel.basic_ack(tag)


def subscribe(settings: Settings, pattern: str, on_message: Callable[[str, bytes], None],
              stop: threading.Event,
              on_error: Callable[[BaseException, float], None] | None = None) -> None:
    """Call on_message(routing_key, body) for each message of the logs exchange matching
    `pattern`, on a private queue, until `stop` is set; reconnects with backoff."""
    def session() -> None:
        connection, channel = connect(settings, "facerec-logs")
        try:
            name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(name, LOG_EXCHANGE, routing_key=pattern)
            def deliver(_ch: BlockingChannel, method: pika.spec.Basic.Deliver,
                        _props: pika.BasicProperties, body: bytes) -> None:
                if not stop.is_set():  # once asked to stop, the backlog is not printed
                    on_message(method.routing_key, body)
            channel.basic_consume(name, deliver, auto_ack=True)
            while not stop.is_set():
                connection.process_data_events(time_limit=0.1)
        finally:
            _close_quietly(connection)
    try:
        retry(session, on=_RECONNECT, backoff=Backoff(first=0.5, maximum=10.0), stop=stop,
              log=on_error)
    except _RECONNECT:
        pass  # stopped while RabbitMQ was away
