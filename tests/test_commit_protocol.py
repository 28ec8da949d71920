"""The commit protocol against a real Redis: no lost matches, whatever the interleaving."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from facerec.faces import Faces
from facerec.pipeline import Processor
from facerec.settings import Settings
from facerec.store import (
    HASH_TO_ENCODINGS,
    HASH_TO_MATCHES,
    HASH_TO_NAMES,
    META,
    NAME_TO_HASH,
    Store,
    image_key,
)
from tests.services import RedisServer
from tests.synthetic import brute_force_pairs, identities, image_faces, pairs_of


def processors(settings: Settings, n: int) -> list[Processor]:
    store = Store(settings)
    result = [Processor(settings, store) for _ in range(n)]
    for p in result:
        p.load_index()
    return result


def random_images(rng: np.random.Generator, n_identities: int, n_images: int
                  ) -> dict[str, Faces]:
    """Images of 0 to 2 faces each, of a few identities, named by 64-hex-digit ids."""
    centres = identities(rng, n_identities)
    return {f"{i:064x}": image_faces(rng, centres,
                                     list(rng.integers(0, n_identities, rng.integers(0, 3))))
            for i in range(n_images)}


def test_two_workers_that_matched_before_either_committed_still_record_their_match(
        settings: Settings, redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(7)
    person = identities(rng, 1)
    first, second = processors(settings, 2)  # both indexes are empty: neither sees the other
    a = first.commit_faces("a" * 64, "a.jpg", image_faces(rng, person, [0]))
    b = second.commit_faces("b" * 64, "b.jpg", image_faces(rng, person, [0]))
    assert (a.retries, b.retries) == (0, 1)
    assert set(b.matches) == {"a" * 64}
    db4 = redis_server.client(HASH_TO_MATCHES)
    assert db4.smembers("a" * 64) == {"b" * 64}
    assert db4.smembers("b" * 64) == {"a" * 64}


def test_an_image_committed_twice_only_gains_a_name(settings: Settings,
                                                     redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(8)
    faces = image_faces(rng, identities(rng, 1), [0])
    first, second = processors(settings, 2)
    assert first.commit_faces("c" * 64, "one.jpg", faces).status == "processed"
    assert second.commit_faces("c" * 64, "two.jpg", faces).status == "duplicate"
    assert redis_server.client(HASH_TO_NAMES).smembers("c" * 64) == {"one.jpg", "two.jpg"}
    assert redis_server.client(NAME_TO_HASH).get("two.jpg") == "c" * 64
    assert redis_server.client(META).hget(image_key("c" * 64), "scans") == "1"
    assert redis_server.client(META).llen("facelog") == 1


def test_an_image_without_faces_is_stored_with_empty_encodings(
        settings: Settings, redis_server: RedisServer) -> None:
    redis_server.flush()
    (p,) = processors(settings, 1)
    p.commit_faces("d" * 64, "landscape.jpg", image_faces(np.random.default_rng(0),
                                                          identities(np.random.default_rng(0), 1),
                                                          []))
    assert redis_server.client(HASH_TO_ENCODINGS, decode=False).get("d" * 64) == b""
    assert redis_server.client(META).hget(image_key("d" * 64), "status") == "done"
    assert redis_server.client(META).llen("facelog") == 0


def test_a_worker_whose_redis_lost_its_data_rebuilds_its_index(
        settings: Settings, redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(9)
    person = identities(rng, 1)
    (p,) = processors(settings, 1)
    p.commit_faces("e" * 64, "e.jpg", image_faces(rng, person, [0]))
    redis_server.flush()
    other = processors(settings, 1)[0]
    other.commit_faces("f" * 64, "f.jpg", image_faces(rng, person, [0]))
    out = p.commit_faces("0" * 64, "g.jpg", image_faces(rng, person, [0]))
    assert set(out.matches) == {"f" * 64}  # not the forgotten e…
    assert p.index.version == 2


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n_workers=st.integers(1, 4),
       n_images=st.integers(2, 14), data=st.data())
def test_any_interleaving_of_workers_gives_the_brute_force_match_sets(
        settings: Settings, redis_server: RedisServer, seed: int, n_workers: int,
        n_images: int, data: st.DataObject) -> None:
    redis_server.flush()
    images = random_images(np.random.default_rng(seed), 4, n_images)
    workers = processors(settings, n_workers)
    # Each image goes to a worker chosen by hypothesis, in an order it chooses.
    order = data.draw(st.permutations(sorted(images)))
    for h in order:
        w = data.draw(st.integers(0, n_workers - 1))
        workers[w].commit_faces(h, f"{h}.jpg", images[h])
    got = pairs_of(redis_server.dump(HASH_TO_MATCHES))
    assert got == brute_force_pairs({h: f.encodings for h, f in images.items()})
    for h, others in redis_server.dump(HASH_TO_MATCHES).items():
        assert h.encode() not in others


# -- erasure ---------------------------------------------------------------------------------

def test_a_commit_racing_an_erasure_is_retried_and_never_points_at_the_erased_image(
        settings: Settings, redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(11)
    person = identities(rng, 1)
    first, second = processors(settings, 2)
    first.commit_faces("a" * 64, "a.jpg", image_faces(rng, person, [0]))
    second.sync()  # second's index holds a…
    assert Store(settings).erase_image("a" * 64) is not None  # …which is then erased
    out = second.commit_faces("b" * 64, "b.jpg", image_faces(rng, person, [0]))
    assert (out.status, out.retries, out.matches) == ("processed", 1, {})
    assert redis_server.dump(HASH_TO_MATCHES) == {}
    assert second.index.live_faces == 1  # a's face forgotten without a reload
    # The first worker learns of the erasure at its next commit, the same way.
    out = first.commit_faces("c" * 64, "c.jpg", image_faces(rng, person, [0]))
    assert set(out.matches) == {"b" * 64}
    assert first.index.live_faces == 2


def test_an_image_erased_while_it_is_processed_writes_nothing(
        settings: Settings, redis_server: RedisServer) -> None:
    redis_server.flush()
    rng = np.random.default_rng(12)
    store = Store(settings)
    (worker,) = processors(settings, 1)
    ticket = "1" * 32
    assert not store.prepare("d" * 64, "d.jpg", ticket)  # rest queued it
    assert store.erase_image("d" * 64) is not None  # erased while a worker has it
    out = worker.commit_faces("d" * 64, "d.jpg", image_faces(rng, identities(rng, 1), [0]),
                              ticket=ticket)
    assert out.status == "erased"
    assert all(redis_server.dump(db) == {} for db in (NAME_TO_HASH, HASH_TO_NAMES,
                                                      HASH_TO_ENCODINGS, HASH_TO_MATCHES))
    assert worker.index.live_faces == 0


@hsettings(max_examples=25, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), n_workers=st.integers(1, 4),
       n_images=st.integers(2, 12), data=st.data())
def test_any_interleaving_of_commits_and_erasures_gives_the_brute_force_match_sets(
        settings: Settings, redis_server: RedisServer, seed: int, n_workers: int,
        n_images: int, data: st.DataObject) -> None:
    redis_server.flush()
    images = random_images(np.random.default_rng(seed), 3, n_images)
    store = Store(settings)
    workers = processors(settings, n_workers)
    committed: list[str] = []
    erased: set[str] = set()
    # Each step commits the next image on a worker hypothesis chooses, or erases an image
    # committed earlier; workers' indexes lag behind until their own commits find out.
    for h in data.draw(st.permutations(sorted(images))):
        while committed and data.draw(st.booleans()):
            victim = data.draw(st.sampled_from(committed))
            committed.remove(victim)
            erased.add(victim)
            assert store.erase_image(victim) is not None
        workers[data.draw(st.integers(0, n_workers - 1))].commit_faces(h, f"{h}.jpg", images[h])
        committed.append(h)
    alive = {h: f.encodings for h, f in images.items() if h not in erased}
    db4 = redis_server.dump(HASH_TO_MATCHES)
    assert pairs_of(db4) == brute_force_pairs(alive)
    for h, others in db4.items():
        assert h.encode() not in others and h not in erased
        assert not {o.decode() for o in others} & erased  # type: ignore[attr-defined]
    for db in (NAME_TO_HASH, HASH_TO_NAMES, HASH_TO_ENCODINGS):
        assert not set(redis_server.dump(db)) & ({f"{h}.jpg" for h in erased} | erased)
    # A worker that starts now holds exactly the faces of the images left.
    (fresh,) = processors(settings, 1)
    assert fresh.index.live_faces == sum(len(f) for f in alive.values())
