"""The in-memory index gives exactly the brute-force answer, whatever its growth pattern."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from facerec.matcher import FaceIndex, exact_distances


def brute(stored: dict[str, np.ndarray], query: np.ndarray, tol: float, exclude: str = ""
          ) -> dict[str, float]:
    out = {}
    for h, enc in stored.items():
        if h == exclude or not len(enc):
            continue
        d = min(exact_distances(enc.astype(np.float32), q).min() for q in query)
        if d <= tol:
            out[h] = float(d)
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_images=st.integers(0, 60),
       tol=st.floats(0.3, 0.9), capacity=st.integers(1, 8))
def test_search_returns_exactly_the_brute_force_matches(seed: int, n_images: int, tol: float,
                                                        capacity: int) -> None:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.07, size=(5, 128))
    stored = {f"img{i}": centres[rng.integers(0, 5, rng.integers(0, 4))]
              + rng.normal(0, 0.03, size=(1, 128)) for i in range(n_images)}
    index = FaceIndex(capacity=capacity)
    for h, enc in stored.items():
        index.add(h, enc)
    query = centres[rng.integers(0, 5, 2)] + rng.normal(0, 0.03, size=(2, 128))
    got = {h: m.distance for h, m in index.search(query, tol, exclude="img0").items()}
    want = brute(stored, query, tol, exclude="img0")
    assert got.keys() == want.keys()
    for h in want:
        assert got[h] == want[h]


def test_search_from_a_face_offset_sees_only_the_delta() -> None:
    rng = np.random.default_rng(1)
    face = rng.normal(0, 0.07, size=(1, 128))
    index = FaceIndex()
    index.add("old", face)
    index.add("empty", np.empty((0, 128)))
    index.add("new", face + 0.001)
    assert index.version == 2  # images without faces are not in the face log
    assert set(index.search(face, 0.6)) == {"old", "new"}
    assert set(index.search(face, 0.6, start_face=index.face_count_at(1))) == {"new"}


def test_distance_is_symmetric_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 0.07, size=(2, 128))
    ia, ib = FaceIndex(), FaceIndex()
    ia.add("a", a[None])
    ib.add("b", b[None])
    assert ib.search(a[None], 2.0)["b"].distance == ia.search(b[None], 2.0)["a"].distance
