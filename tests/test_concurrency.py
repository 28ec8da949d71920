"""1, 2 and 4 competing workers over the shuffled shared photos give identical databases."""

from __future__ import annotations

import itertools
import random

import pytest

from facerec.messages import ImageMessage
from tests.services import Env, photos, reset_vhost, wait_until
from tests.synthetic import pairs_of

pytestmark = pytest.mark.slow


def run(env: Env, workers: int, seed: int) -> dict[int, dict[str, object]]:
    env.redis.flush()
    reset_vhost(env.settings)
    shuffled = photos()
    random.Random(seed).shuffle(shuffled)
    broker = env.broker()
    for p in shuffled:
        broker.publish_image(ImageMessage.for_image(p.data, p.path, "upload"))
    broker.close()
    for _ in range(workers):
        env.start_worker()
    env.wait_processed({ImageMessage.for_image(p.data, p.path, "upload").image_hash
                        for p in shuffled})
    wait_until(lambda: env.queue_depth() == 0, 30, "the queue to drain")
    env.stop_all()
    return env.databases()


def test_the_databases_do_not_depend_on_the_number_of_workers_or_the_order(env: Env) -> None:
    results = {n: run(env, n, seed=n) for n in (1, 2, 4)}
    assert results[1] == results[2] == results[4]

    by_hash = {ImageMessage.for_image(p.data, p.path, "upload").image_hash: p
               for p in photos()}
    expected = {frozenset((a, b)) for a, b in itertools.combinations(by_hash, 2)
                if by_hash[a].identities & by_hash[b].identities}
    assert pairs_of(results[4][4]) == expected
    assert len(results[4][3]) == 26  # every processed image has its encodings
