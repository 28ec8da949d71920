"""The int8 index returns exactly the float64 brute-force matches, for both kernels, on
inputs built to break it: faces at the tolerance ± the bound, differences hidden in the
dimensions the codes leave out, duplicates, values that saturate the codes, non-finite
values, and any interleaving of extend / add / remove / search."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facerec import _kernels
from facerec.matcher import DIMS, ERROR_CAP, SCALE, FaceIndex, encode, exact_distances

KERNELS = ["native", "numpy"]
DROPPED = np.setdiff1d(np.arange(128), DIMS)
# Distances from the tolerance at which faces are placed: on it, a float32 step either
# side, and about the bound's size either side (E + e(q) is ≈ 0.05).
OFFSETS = [0.0, 1e-7, -1e-7, 1e-4, -1e-4, 0.02, -0.02, 0.045, -0.045, 0.06, -0.06]


def brute(images: list[tuple[str, np.ndarray, bool]], query: np.ndarray, tol: float,
          first: int = 0, exclude: str = "") -> dict[str, float]:
    """Best float64 distance per live image (ordinal ≥ first) within tol of any query face."""
    out: dict[str, float] = {}
    for h, enc, removed in images[first:]:
        if removed or not len(enc) or h == exclude:
            continue
        for q in query:
            d = exact_distances(enc, q)
            d = d[d <= tol]
            if len(d) and (h not in out or d.min() < out[h]):
                out[h] = float(d.min())
    return out


def unit(rng: np.random.Generator, dims: np.ndarray) -> np.ndarray:
    v = np.zeros(128)
    v[dims] = rng.normal(size=len(dims))
    return v / np.linalg.norm(v)


def adversarial_face(rng: np.random.Generator, query: np.ndarray, tol: float, kind: int
                     ) -> np.ndarray:
    """One stored face, placed against `query` in one of several hostile ways."""
    offset = OFFSETS[rng.integers(len(OFFSETS))]
    if kind == 0:  # at tol + offset, the difference in every dimension
        face = query + unit(rng, np.arange(128)) * (tol + offset)
    elif kind == 1:  # the whole difference in dimensions the codes leave out
        face = query + unit(rng, DROPPED) * (tol + offset)
    elif kind == 2:  # the whole difference in coded dimensions (the bound is tightest)
        face = query + unit(rng, DIMS) * (tol + offset)
    elif kind == 3:  # a duplicate
        face = query.copy()
    elif kind == 4:  # values that saturate the codes (|x| > 127/128), near the query
        face = query.copy()
        face[rng.choice(128, 3, replace=False)] = rng.choice([-1.5, 0.995, 4.0, -300.0], 3)
    elif kind == 5:  # a value that is not finite
        face = query.copy()
        face[rng.integers(128)] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 6:  # codes at both ends of the range
        face = rng.choice([-127 / 128, 127 / 128], size=128) + rng.normal(0, 1e-3, 128)
    else:  # an ordinary face of someone else
        face = rng.normal(0, 0.07, 128)
    return face.astype(np.float32)


@contextmanager
def native_scan(variant: str) -> Iterator[ModuleType]:
    """facerec._scan with its `variant` scan ("avx2", "portable") selected, and the one
    in use before selected again afterwards."""
    module = _kernels.native()
    assert module is not None
    before = module.kernel()
    module.select(variant)
    try:
        yield module
    finally:
        module.select(before)


@contextmanager
def kernel_in_use(kernel: str) -> Iterator[str]:
    """The FaceIndex kernel for `kernel`: "portable" is the native one with its portable C
    loop selected (AVX2, where the CPU has it, again afterwards)."""
    if kernel != "portable":
        yield kernel
        return
    with native_scan("portable"):
        yield "native"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kernel", [*KERNELS, "portable"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tol=st.sampled_from([0.6, 0.5, 0.3, 0.0, 1.2]),
       ops=st.lists(st.tuples(st.sampled_from(["extend", "add", "remove", "search"]),
                              st.integers(0, 2**16)), min_size=1, max_size=12),
       capacity=st.integers(1, 70))
def test_search_equals_the_float64_brute_force_under_any_interleaving(
        kernel: str, seed: int, tol: float, ops: list[tuple[str, int]], capacity: int) -> None:
    with kernel_in_use(kernel) as name:
        interleave(seed, tol, ops, capacity, FaceIndex(capacity=capacity, kernel=name))


def interleave(seed: int, tol: float, ops: list[tuple[str, int]], capacity: int,
               index: FaceIndex) -> None:
    rng = np.random.default_rng(seed)
    anchors = rng.normal(0, 0.07, size=(3, 128)).astype(np.float32)
    anchors[0] = np.clip(anchors[0] * 8, -1.2, 1.2)  # a query near the codes' range ends
    images: list[tuple[str, np.ndarray, bool]] = []  # the model: ordinal = position
    names = itertools.count()

    def new_image(n_faces: int) -> tuple[str, np.ndarray]:
        n = next(names)
        h = f"{n:064x}" if rng.random() < 0.8 else f"img{n}"
        enc = np.stack([adversarial_face(rng, anchors[rng.integers(3)], tol, rng.integers(8))
                        for _ in range(n_faces)]) if n_faces else np.empty((0, 128), np.float32)
        return h, enc

    for op, arg in ops:
        if op == "extend":
            batch = [new_image(int(rng.choice([0, 1, 1, 1, 2, 3]))) for _ in range(arg % 40)]
            assert index.extend(batch) == len(batch)
            images += [(h, e, False) for h, e in batch]
        elif op == "add":
            h, enc = new_image(1 + arg % 3)
            index.add(h, enc)
            images.append((h, enc, False))
        elif op == "remove" and images:
            chosen = rng.choice(len(images), size=1 + arg % 4)
            expect = sum(len(images[i][1]) for i in set(chosen.tolist()) if not images[i][2])
            assert index.remove(chosen.tolist()) == expect
            for i in chosen:
                images[i] = (images[i][0], images[i][1], True)
        # Queries: the anchors themselves (faces sit at tol + offset from them), or close.
        query = np.stack([anchors[rng.integers(3)] + (rng.random() < 0.3)
                          * rng.normal(0, 0.01, 128).astype(np.float32)
                          for _ in range(1 + arg % 2)])
        first = int(rng.integers(0, len(images) + 1))
        exclude = images[arg % len(images)][0] if images and arg % 3 == 0 else ""
        got = index.search(query, tol, exclude=exclude, start_face=index.face_count_at(first))
        want = brute(images, query, tol, first, exclude)
        assert {h: m.distance for h, m in got.items()} == want
    assert index.version == len(images)
    assert index.live_faces == sum(len(e) for _, e, removed in images if not removed)


@pytest.mark.timeout(60)
@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tol=st.floats(0.0, 1.5),
       offset=st.sampled_from(OFFSETS), scale=st.sampled_from([0.07, 0.3, 1.0]))
def test_no_face_within_tolerance_is_ever_outside_the_integer_threshold(
        seed: int, tol: float, offset: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    q = rng.normal(0, scale, 128).astype(np.float32)
    x = (q + unit(rng, np.arange(128)) * (tol + offset)).astype(np.float32)
    index = FaceIndex(kernel="numpy")
    index.add("x", x[None])
    codes, errors = encode(x[None].astype(np.float32))
    qcodes, limits = index.thresholds(q[None], tol)
    if exact_distances(x[None], q)[0] <= tol and errors[0] <= ERROR_CAP:
        diff = codes[0].astype(np.int64) - qcodes[0].astype(np.int64)
        assert int(diff @ diff) <= int(limits[0])


def native_variants() -> list[str]:
    """The native module's scans on this CPU: AVX2 where it has it, and the portable loop."""
    module = _kernels.native()
    assert module is not None, "facerec._scan is not built: `pip install -e .` builds it"
    return (["avx2"] if module.kernel() == "avx2" else []) + ["portable"]


def test_the_native_kernel_is_built_and_uses_avx2_where_the_cpu_has_it() -> None:
    # CI and the images build the extension: a missing build must fail here, not fall back
    # to numpy unnoticed.
    module = _kernels.native()
    assert module is not None and FaceIndex().kernel == "native"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert (module.kernel() == "avx2") == (" avx2" in flags)


@pytest.mark.timeout(60)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), rows=st.integers(1, 300), lo=st.integers(0, 300),
       n_queries=st.integers(1, 3))
def test_every_kernel_finds_the_same_candidates_as_the_definition(
        seed: int, rows: int, lo: int, n_queries: int) -> None:
    """Candidates are the rows whose squared code distance over all 96 codes is within the
    threshold, whatever the scan skips (the tail after a head over it)."""
    rng = np.random.default_rng(seed)
    blocks = -(-rows // _kernels.BLOCK_ROWS)
    values = [-127, -126, -1, 0, 1, 126, 127, 5, -40]
    head = rng.choice(values, size=blocks * _kernels.BLOCK_BYTES).astype(np.int8)
    tail = rng.choice(values, size=(blocks * _kernels.BLOCK_ROWS, _kernels.TAIL_DIMS)
                      ).astype(np.int8)
    codes = np.concatenate([_kernels.head_rows(head), tail], axis=1).astype(np.int64)
    queries = rng.integers(-127, 128, size=(n_queries, _kernels.CODE_DIMS)).astype(np.int16)
    sums = ((codes[:, None, :] - queries[None].astype(np.int64)) ** 2).sum(axis=2)
    # Thresholds at exact sums (ties), just below them, at a head-only sum, and the extremes.
    picks = rng.integers(rows, size=n_queries)
    limits = np.array([sums[r, c] - int(rng.integers(0, 2)) for c, r in enumerate(picks)])
    head_only = ((codes[picks, :_kernels.HEAD_DIMS] - queries[:, :_kernels.HEAD_DIMS]) ** 2
                 ).sum(axis=1)
    limits = np.where(rng.random(n_queries) < 0.2, head_only, limits)
    limits[rng.random(n_queries) < 0.2] = np.iinfo(np.int32).max
    limits[rng.random(n_queries) < 0.1] = -1
    limits = limits.astype(np.int32)
    lo = min(lo, rows)
    want = sorted((r, c) for c in range(n_queries) for r in range(lo, rows)
                  if sums[r, c] <= limits[c])

    def run(scan: _kernels.ScanFn) -> list[tuple[int, int]]:
        out_rows = np.empty(blocks * 64 * n_queries, np.int64)
        out_cols = np.empty_like(out_rows)
        n = scan(head, tail, lo, rows, queries, limits, out_rows, out_cols)
        return sorted(zip(out_rows[:n].tolist(), out_cols[:n].tolist(), strict=True))

    results = {"numpy": run(_kernels.scan_numpy)}
    for variant in native_variants():
        with native_scan(variant) as module:
            results[variant] = run(module.scan)
    for name, got in results.items():
        assert got == want, name


def test_the_native_scan_refuses_buffers_too_small_for_the_rows_asked() -> None:
    scan = _kernels.get_scan("native")[1]
    head = np.zeros(_kernels.BLOCK_BYTES, np.int8)
    tail = np.zeros((_kernels.BLOCK_ROWS, _kernels.TAIL_DIMS), np.int8)
    q = np.zeros((1, _kernels.CODE_DIMS), np.int16)
    out = np.empty(4, np.int64)
    with pytest.raises(ValueError, match="head"):
        scan(head, tail, 0, 65, q, np.zeros(1, np.int32), out, out.copy())
    with pytest.raises(ValueError, match="tail"):
        scan(head, tail[:10], 0, 64, q, np.zeros(1, np.int32), out, out.copy())
    with pytest.raises(ValueError, match="queries"):
        scan(head, tail, 0, 64, q, np.zeros(2, np.int32), out, out.copy())
    assert scan(head, tail, 0, 64, q, np.zeros(1, np.int32), out, out.copy()) == 64


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_scan_with_more_candidates_than_room_still_returns_them_all(kernel: str) -> None:
    rng = np.random.default_rng(3)
    faces = rng.normal(0, 0.01, (2000, 128)).astype(np.float32)  # all within 0.6 of 0
    index = FaceIndex(kernel=kernel)
    index.extend((f"{i:064x}", faces[i:i + 1]) for i in range(2000))
    got = index.search(np.zeros((1, 128)), 0.6)
    assert len(got) == 2000 and index.last_rechecked == 2000


def test_the_kernel_is_chosen_by_parameter_environment_or_availability(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert FaceIndex(kernel="numpy").kernel == "numpy"
    monkeypatch.setenv(_kernels.KERNEL_ENV, "numpy")
    assert FaceIndex().kernel == "numpy"
    monkeypatch.setenv(_kernels.KERNEL_ENV, "auto")
    assert FaceIndex().kernel == "native"
    monkeypatch.setattr(_kernels, "native", lambda: None)  # the extension not built
    assert FaceIndex().kernel == "numpy"
    with pytest.raises(RuntimeError, match="not built"):
        FaceIndex(kernel="native")
    with pytest.raises(ValueError, match="unknown index kernel"):
        FaceIndex(kernel="fortran")


def test_the_error_bound_is_the_largest_error_of_a_coded_face_and_ignores_saturated_ones(
        ) -> None:
    rng = np.random.default_rng(4)
    faces = rng.normal(0, 0.07, (50, 128)).astype(np.float32)
    index = FaceIndex()
    index.extend((f"{i:064x}", faces[i:i + 1]) for i in range(50))
    _, errors = encode(faces, index.kernel)
    assert index.max_error == errors.max() <= ERROR_CAP
    index.add("f" * 64, np.full((1, 128), 9.0, dtype=np.float32))  # saturates: kept exact
    assert index.max_error == errors.max()
    assert set(index.search(np.full((1, 128), 9.0), 0.1)) == {"f" * 64}
    assert math.isclose(ERROR_CAP, math.sqrt(96) / (2 * SCALE))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(10, 60),
       eps=st.sampled_from([1e-6, 1e-4, 1e-2, 0.2]), carrier=st.sampled_from(["face", "query",
                                                                             "both"]),
       nudge=st.sampled_from([-1, 0, 1]))
def test_faces_built_to_sit_exactly_on_the_bound_are_found(
        kernel: str, seed: int, steps: int, eps: float, carrier: str, nudge: int) -> None:
    """The worst case of the triangle inequality: quantization errors as large as they can
    be (half a step in every coded dimension) and pointing along the difference, so the
    code distance exceeds the true one by exactly E + e(q). A bound any tighter misses it."""
    rng = np.random.default_rng(seed)
    sign = np.zeros(128)
    sign[DIMS] = rng.choice([-1.0, 1.0], len(DIMS))
    grid_q = rng.integers(-60, 60, 128) / SCALE
    grid_x = grid_q + steps * sign / SCALE
    half = (0.5 - eps) / SCALE
    x, q = grid_x.copy(), grid_q.copy()
    if carrier in ("face", "both"):
        x -= half * sign  # rounds back to grid_x, moved towards q
    if carrier in ("query", "both"):
        q += half * sign
    x32, q32 = x.astype(np.float32), q.astype(np.float32)
    d = float(exact_distances(x32[None], q32)[0])
    tol = float(np.nextafter(d, d + nudge)) if nudge else d
    index = FaceIndex(kernel=kernel)
    index.add("x" * 64, x32[None])
    index.add("y" * 64, np.zeros((1, 128), np.float32))  # another face, far away
    got = index.search(q32[None], tol)
    assert ("x" * 64 in got) == (d <= tol)
    assert got.get("x" * 64) is None or got["x" * 64].distance == d


@pytest.mark.timeout(60)
@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.07, 0.5, 1.0, 3.0]))
def test_both_encoders_give_the_same_codes_and_errors_that_bound_the_true_ones(
        seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    vectors = (rng.normal(0, scale, (50, 128))).astype(np.float32)
    vectors[rng.random(50) < 0.1, rng.integers(128)] = np.nan
    vectors[:3] = (rng.integers(-127, 128, (3, 128)) + 0.5) / SCALE  # halfway: ties
    codes_np, bound_np = encode(vectors, "numpy")
    codes_nb, bound_nb = encode(vectors, "native")
    assert np.array_equal(codes_np, codes_nb)
    assert np.array_equal(np.isinf(bound_np), np.isinf(bound_nb))
    for v, c, b1, b2 in zip(vectors, codes_np, bound_np, bound_nb, strict=True):
        if np.isfinite(b1):
            true = math.sqrt(math.fsum((float(x) - float(k) / SCALE) ** 2
                                       for x, k in zip(v[DIMS], c, strict=True)))
            assert true <= b1 and true <= b2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kernel", KERNELS)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_query=st.integers(1, 4))
def test_search_each_gives_every_face_its_own_brute_force_answer_in_one_scan(
        kernel: str, seed: int, n_query: int) -> None:
    rng = np.random.default_rng(seed)
    anchors = rng.normal(0, 0.07, (4, 128)).astype(np.float32)
    images = [(f"{i:064x}", np.stack([adversarial_face(rng, anchors[rng.integers(4)], 0.6,
                                                       rng.integers(8))]), False)
              for i in range(60)]
    index = FaceIndex(kernel=kernel)
    index.extend((h, e) for h, e, _ in images)
    query = anchors[rng.integers(0, 4, n_query)]
    query[rng.random(n_query) < 0.2, 0] = np.nan  # such a face matches nothing
    each = index.search_each(query, 0.6)
    assert [{h: m.distance for h, m in found.items()} for found in each] == [
        brute(images, q[None], 0.6) for q in query]
    assert {h: m.distance for h, m in index.search(query, 0.6).items()} == brute(
        images, query[np.isfinite(query).all(axis=1)], 0.6)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batches=st.lists(st.integers(0, 150), min_size=1,
                                                       max_size=6),
       capacity=st.integers(1, 200))
def test_numpy_and_native_write_the_same_bytes_into_the_layout(
        seed: int, batches: list[int], capacity: int) -> None:
    """The native pack and numpy's transposes fill heads and tails identically, across
    block and chunk boundaries (then both scans read the same codes)."""
    rng = np.random.default_rng(seed)
    indexes = [FaceIndex(capacity=capacity, kernel=k) for k in KERNELS]
    for n in batches:
        faces = rng.normal(0, 0.3, (n, 128)).astype(np.float32)
        for index in indexes:
            index.extend((f"{i:064x}", faces[i:i + 1]) for i in range(n))
    native, numpy_ = (index._codes for index in indexes)
    assert len(native.chunks) == len(numpy_.chunks)
    for a, b, ta, tb in zip(native.chunks, numpy_.chunks, native.tails, numpy_.tails,
                            strict=True):
        assert np.array_equal(a, b) and np.array_equal(ta, tb)
    rows = np.arange(indexes[0].n_faces)
    assert np.array_equal(native.take(rows), numpy_.take(rows))


@pytest.mark.parametrize("kernel", KERNELS)
def test_many_candidates_keep_their_own_hashes_odd_ones_included(kernel: str) -> None:
    # Past a few dozen candidates the hashes are converted in one batch: hex, other
    # strings and the all-zero hash must each come back as stored, erased ones not at all.
    rng = np.random.default_rng(8)
    names = [f"{i:064x}" if i % 3 else f"photo-{i}.jpg" for i in range(200)]
    names[0] = "0" * 64
    faces = rng.normal(0, 0.01, (200, 128)).astype(np.float32)
    index = FaceIndex(kernel=kernel)
    index.extend((h, faces[i:i + 1]) for i, h in enumerate(names))
    index.remove([5, 6, 7])
    got = index.search(np.zeros((1, 128)), 0.6)
    assert set(got) == set(names) - {names[5], names[6], names[7]}
    for h, m in got.items():
        assert m.distance == float(exact_distances(faces[names.index(h)][None],
                                                   np.zeros(128, np.float32))[0])


def test_an_extension_built_for_another_layout_is_refused(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # A stale facerec._scan (an older _scan.c) would read the codes with the wrong layout.
    monkeypatch.setattr(_kernels, "HEAD_DIMS", _kernels.HEAD_DIMS - 8)
    _kernels.native.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="rebuild it"):
            _kernels.native()
    finally:
        monkeypatch.undo()
        _kernels.native.cache_clear()
    assert _kernels.native() is not None
