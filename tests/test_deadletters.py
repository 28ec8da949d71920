"""facerec.deadletters: list the dead-letter queue without changing it, requeue from it."""

from __future__ import annotations

from facerec import broker as amqp
from facerec.deadletters import DeadLetter, list_dead, requeue_dead
from facerec.messages import ImageMessage, sha256_hex
from tests.services import FACES, Env, publish_raw, read_queue, wait_until

PHOTO = (FACES / "obama/obama_small.jpg").read_bytes()


def dead_letter(env: Env, body: bytes, headers: dict[str, object], reason: str) -> None:
    """Dead-letter a message exactly as a worker does."""
    publish_raw(env.settings, body, amqp.dead_letter_headers(headers, reason),
                exchange=amqp.DEAD_EXCHANGE, routing_key=amqp.DEAD_ROUTING_KEY)


def rabbit_dead_letter(env: Env, body: bytes, headers: dict[str, object]) -> None:
    """A message as RabbitMQ dead-letters it after the delivery limit (x-death)."""
    death = {"count": 1, "reason": "delivery_limit", "queue": amqp.IMAGE_QUEUE,
             "exchange": amqp.WORK_EXCHANGE, "routing-keys": [amqp.IMAGE_ROUTING_KEY]}
    publish_raw(env.settings, body, {**headers, "x-death": [death],
                                     "x-first-death-reason": "delivery_limit",
                                     amqp.DELIVERY_COUNT_HEADER: 5},
                exchange=amqp.DEAD_EXCHANGE, routing_key=amqp.DEAD_ROUTING_KEY)


def test_an_empty_dead_letter_queue_lists_nothing(env: Env) -> None:
    assert list_dead(env.settings) == []
    assert requeue_dead(env.settings) == 0


def test_dead_letters_are_listed_with_hash_name_reason_and_deliveries_and_stay_put(
        env: Env) -> None:
    msg = ImageMessage.for_image(PHOTO, "obama.jpg", "upload")
    dead_letter(env, PHOTO, {**msg.headers(), amqp.DELIVERY_COUNT_HEADER: 4},
                "failed 5 times, last: RuntimeError('boom')")
    dead_letter(env, b"junk", {"schema": 9}, "invalid message: unsupported schema 9")
    rabbit_dead_letter(env, PHOTO, ImageMessage.for_image(PHOTO, "crash.jpg", "upload").headers())
    expected = [
        DeadLetter(msg.image_hash, "obama.jpg", "failed 5 times, last: RuntimeError('boom')", 5),
        DeadLetter("", "", "invalid message: unsupported schema 9", 1),
        DeadLetter(msg.image_hash, "crash.jpg", "delivered 5 times without being settled (the "
                   "worker crashed or lost its connection each time)", 5),
    ]
    # Listing twice gives the same answer: listing is not consuming, and the dead-letter
    # queue's own delivery counter does not leak into what is reported.
    assert sorted(list_dead(env.settings), key=str) == sorted(expected, key=str)
    assert sorted(list_dead(env.settings), key=str) == sorted(expected, key=str)
    assert len(list_dead(env.settings, limit=2)) == 2
    assert env.queue_depth(amqp.DEAD_QUEUE) == 3


def test_requeued_dead_letters_go_back_to_the_work_queue_without_their_past(env: Env) -> None:
    first = ImageMessage.for_image(PHOTO, "obama.jpg", "upload")
    dead_letter(env, PHOTO, {**first.headers(), amqp.DELIVERY_COUNT_HEADER: 4},
                "failed 5 times, last: ConnectionError()")
    rabbit_dead_letter(env, b"other", {"schema": 1, "hash": sha256_hex(b"other"),
                                       "name": "other", "kind": "upload"})
    assert requeue_dead(env.settings, limit=1) == 1
    assert env.queue_depth(amqp.DEAD_QUEUE) == 1
    assert requeue_dead(env.settings) == 1
    assert env.queue_depth(amqp.DEAD_QUEUE) == 0
    queued = read_queue(env.settings, amqp.IMAGE_QUEUE)
    # The work queue counts deliveries afresh (it reports 0 for a first delivery).
    assert [m.headers.pop(amqp.DELIVERY_COUNT_HEADER, 0) for m in queued] == [0, 0]
    assert [m.headers for m in queued] == [first.headers(), {
        "schema": 1, "hash": sha256_hex(b"other"), "name": "other", "kind": "upload"}]
    assert [m.body for m in queued] == [PHOTO, b"other"]


def test_a_requeued_image_is_processed_by_a_worker_with_its_full_retries(env: Env) -> None:
    msg = ImageMessage.for_image(PHOTO, "obama.jpg", "upload")
    # Dead-lettered on its last attempt: requeued with that counter, it would get one try.
    dead_letter(env, PHOTO, {**msg.headers(), amqp.DELIVERY_COUNT_HEADER: 4}, "Redis was down")
    assert requeue_dead(env.settings) == 1
    env.start_worker()
    env.wait_processed({msg.image_hash}, timeout=120)
    assert env.statuses() == {msg.image_hash: "done"}
    wait_until(lambda: env.queue_depth() == 0, 30, "the queue to drain")
    assert env.queue_depth(amqp.DEAD_QUEUE) == 0
