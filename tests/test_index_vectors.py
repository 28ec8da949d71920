"""Where the index finds candidates' full vectors: memory, a mapped file, or Redis — the
same matches from each, and what the worker holds per face."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.matcher import FaceIndex, MemoryVectors, MmapVectors, RedisVectors, VectorSource
from facerec.store import HASH_TO_ENCODINGS, encodings_to_bytes
from tests.services import RedisServer

pytestmark = pytest.mark.timeout(60)


def stored_images(n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.07, (20, 128))
    return [(f"{i:064x}", (centres[rng.integers(0, 20, 1 + i % 3)]
                           + rng.normal(0, 0.025, (1 + i % 3, 128))).astype(np.float32))
            for i in range(n)]


def redis_source(redis_server: RedisServer, images: list[tuple[str, np.ndarray]]
                 ) -> RedisVectors:
    db3 = redis_server.client(HASH_TO_ENCODINGS, decode=False)
    db3.mset({h: encodings_to_bytes(e) for h, e in images})
    return RedisVectors(db3.mget)


def test_memory_mmap_and_redis_vectors_give_the_same_matches(
        redis_server: RedisServer) -> None:
    redis_server.flush()
    images = stored_images(300)
    sources: list[VectorSource] = [MemoryVectors(), MmapVectors(),
                                   redis_source(redis_server, images)]
    indexes = [FaceIndex(vectors=s) for s in sources]
    for index in indexes:
        index.extend(images[:200])
        for h, e in images[200:]:
            index.add(h, e)
    rng = np.random.default_rng(1)
    for _ in range(20):
        query = images[rng.integers(300)][1] + rng.normal(0, 0.02, 128).astype(np.float32)
        answers = [{h: m.distance for h, m in ix.search(query, 0.6).items()} for ix in indexes]
        assert answers[0] == answers[1] == answers[2] and answers[0]


def test_a_candidate_whose_encodings_are_gone_from_redis_matches_nothing(
        redis_server: RedisServer) -> None:
    redis_server.flush()
    images = stored_images(5)
    index = FaceIndex(vectors=redis_source(redis_server, images))
    index.extend(images)
    redis_server.client(HASH_TO_ENCODINGS).delete(images[2][0])  # erased meanwhile
    assert set(index.search(images[2][1], 1e-6)) == set()
    assert set(index.search(images[3][1], 1e-6)) == {images[3][0]}


def test_with_vectors_in_redis_the_index_holds_at_most_160_bytes_per_face(
        redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(2)
    faces = rng.normal(0, 0.07, (100_000, 128)).astype(np.float32)
    index = FaceIndex(vectors=RedisVectors(lambda hashes: [None] * len(hashes)))
    index.extend((f"{i:064x}", faces[i:i + 1]) for i in range(len(faces)))
    assert index.nbytes / index.n_faces <= 160
