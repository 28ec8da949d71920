"""Erasure in the index: tombstones keep face-log positions, removed images leave no trace."""

from __future__ import annotations

import numpy as np
import pytest

from facerec.matcher import FaceIndex, MemoryVectors, MmapVectors

pytestmark = pytest.mark.timeout(30)


def faces(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.07, (n, 128)).astype(np.float32)


def test_an_entry_without_faces_takes_its_face_log_position() -> None:
    a, b = faces(1, 1), faces(2, 2)
    index = FaceIndex()
    assert index.extend([("a" * 64, a), ("", np.empty((0, 128), np.float32)),
                         ("b" * 64, b)]) == 3
    assert (index.version, index.n_faces) == (3, 3)
    assert index.face_count_at(1) == index.face_count_at(2) == 1
    assert index.remove([2]) == 2  # position 2 is b, whatever came before it
    assert set(index.search(b, 0.1)) == set()
    assert set(index.search(a, 0.1)) == {"a" * 64}


def test_add_of_an_image_without_faces_changes_nothing() -> None:
    index = FaceIndex()
    index.add("a" * 64, np.empty((0, 128)))
    assert (index.version, index.n_faces) == (0, 0)


@pytest.mark.parametrize("vectors", ["memory", "mmap"])
def test_a_removed_image_is_never_returned_and_leaves_no_trace_in_memory(
        vectors: str) -> None:
    source = MemoryVectors() if vectors == "memory" else MmapVectors()
    enc = faces(3, 6)
    enc[5, 0] = 5.0  # a face whose codes saturate: kept in float32, must go too
    index = FaceIndex(vectors=source)
    index.extend([(f"{i:064x}", enc[2 * i:2 * i + 2]) for i in range(3)])
    assert set(index.search(enc, 1e-3)) == {f"{i:064x}" for i in range(3)}
    before = index.n_faces
    assert index.remove([1, 2]) == 4
    assert index.remove([1, 2, 99]) == 0  # idempotent; a position not loaded is ignored
    assert set(index.search(enc, 2.0)) == {f"{0:064x}"}
    assert (index.n_faces, index.live_faces, index.removed_faces) == (before, 2, 4)
    assert index.face_count_at(2) == 4  # rows keep their numbers: cursors stay valid
    rows = np.arange(2, 6)
    assert not index._codes.take(rows).any()
    assert not source.fetch(rows, [""] * 4, rows).any()
    assert index._hash_of(1) == index._hash_of(2) == ""
    assert not index._outliers
    assert all(h != f"{i:064x}" for i in (1, 2) for h in index._odd_hashes.values())


def test_removing_an_image_with_an_unusual_hash_forgets_the_hash() -> None:
    index = FaceIndex()
    index.add("not-a-sha256", faces(4, 1))
    index.add("0" * 64, faces(5, 1))
    assert index.remove([0, 1]) == 2
    assert index._odd_hashes == {}
    assert index.search(faces(4, 1), 2.0) == {}


def test_faces_added_after_a_removal_are_found_and_the_delta_cursor_still_works() -> None:
    index = FaceIndex(capacity=1)
    index.extend((f"{i:064x}", faces(i, 1)) for i in range(100))
    index.remove(range(0, 100, 2))
    cursor = index.n_faces
    index.add("e" * 64, faces(7, 1))  # the same face as image 7, which is still there
    assert set(index.search(faces(7, 1), 1e-6)) == {f"{7:064x}", "e" * 64}
    assert set(index.search(faces(7, 1), 1e-6, start_face=cursor)) == {"e" * 64}
    assert set(index.search(faces(8, 1), 1e-6)) == set()


def test_searching_without_storing_changes_nothing() -> None:
    index = FaceIndex()
    index.extend((f"{i:064x}", faces(i, 1)) for i in range(10))
    state = (index.version, index.n_faces, index.nbytes, index.max_error)
    assert set(index.search(faces(3, 1), 1e-6)) == {f"{3:064x}"}
    assert (index.version, index.n_faces, index.nbytes, index.max_error) == state


def test_clear_keeps_the_vector_source_and_forgets_everything() -> None:
    source = MmapVectors()
    index = FaceIndex(vectors=source)
    index.add("a" * 64, faces(1, 1))
    index.epoch = "e1"
    index.clear()
    assert index.vectors is source
    assert (index.version, index.n_faces, index.epoch, index.max_error) == (0, 0, "", 0.0)
    index.add("b" * 64, faces(2, 1))
    assert set(index.search(faces(2, 1), 1e-6)) == {"b" * 64}


def test_loading_blobs_in_batches_builds_the_same_index_as_extend() -> None:
    rng = np.random.default_rng(9)
    entries = [(f"{i:064x}", rng.normal(0, 0.07, (int(rng.integers(0, 4)), 128))
                .astype(np.float32)) for i in range(500)]
    one, two = FaceIndex(), FaceIndex()
    one.extend(entries)
    assert two.extend_blobs([h for h, _ in entries], [e.tobytes() for _, e in entries]) == 500
    assert (one.version, one.n_faces, one.max_error) == (two.version, two.n_faces,
                                                         two.max_error)
    for _, enc in entries[::37]:
        assert one.search(enc, 0.5) == two.search(enc, 0.5)
    with pytest.raises(ValueError, match="whole number of faces"):
        two.extend_blobs(["a" * 64], [b"\0" * 100])
