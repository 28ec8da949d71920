"""The in-memory face index: every committed face as one float32 matrix, searched with numpy.

A worker loads the face log once at start-up and then extends the matrix with the delta
it has not seen, so matching an image costs one matrix-vector product per face instead of
a Redis round trip per stored image.

Matching is memory-bound: one search reads the whole matrix once (512 bytes per stored
face, 512 MB at a million), so the scan is done in blocks that keep the per-face scores
in cache and does no other pass over all faces. Scans run on one BLAS thread: on a busy
machine, waking OpenBLAS's other threads costs more than the scan (5-8 ms against 0.3 ms
at 10k faces on 2 shared cores, and 120 ms against 65 ms at a million); a worker scales by
running more worker processes instead. See BENCHMARKS.md.
"""

from __future__ import annotations

from typing import ContextManager, Iterable

import numpy as np
from threadpoolctl import ThreadpoolController

from facerec.store import ENCODING_DIM, ENCODING_DTYPE, Match

# float32 dot products err by ~1e-6 here; candidates this close to the tolerance are
# re-measured exactly, so the decision equals a float64 brute-force comparison.
_MARGIN = 1e-3
# Rows scanned per matrix-vector product: 64 MB of faces, 512 KB of scores (cache-sized).
_BLOCK = 131_072
# Faces gathered before they are copied into the matrix when loading the face log.
_LOAD_BATCH = 16_384
_blas: ThreadpoolController | None = None


def _one_blas_thread() -> ContextManager[object]:
    """Limit BLAS to one thread for the duration."""
    global _blas
    if _blas is None:
        _blas = ThreadpoolController()
    return _blas.limit(limits=1, user_api="blas")  # type: ignore[attr-defined]


def exact_distances(stored: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 from float32 values: the same for (a, b) and (b, a)."""
    diff = stored.astype(np.float64) - face.astype(ENCODING_DTYPE).astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


class FaceIndex:
    """Faces of committed images in face-log order; `version` counts images loaded."""

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(1, capacity)
        self._matrix = np.empty((capacity, ENCODING_DIM), dtype=ENCODING_DTYPE)
        self._half_sqnorms = np.empty(capacity, dtype=ENCODING_DTYPE)  # |face|² / 2
        self._owner = np.empty(capacity, dtype=np.int64)
        self._hashes: list[str] = []
        self.n_faces = 0
        self.version = 0
        self.epoch = ""  # the face log's epoch these faces belong to (see facerec.store)

    def __len__(self) -> int:
        return self.n_faces

    @property
    def nbytes(self) -> int:
        return self._matrix.nbytes + self._half_sqnorms.nbytes + self._owner.nbytes

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _reserve(self, need: int) -> None:
        if need <= len(self._matrix):
            return
        cap = max(need, 2 * len(self._matrix))
        for name in ("_matrix", "_half_sqnorms", "_owner"):
            old = getattr(self, name)
            new = np.empty((cap, *old.shape[1:]), dtype=old.dtype)
            new[: self.n_faces] = old[: self.n_faces]
            setattr(self, name, new)

    def _append(self, hashes: list[str], counts: list[int], encodings: np.ndarray) -> None:
        """Append images (each with counts[i] > 0 faces) whose faces are `encodings`, in order."""
        need = self.n_faces + len(encodings)
        self._reserve(need)
        rows = slice(self.n_faces, need)
        self._matrix[rows] = encodings
        block = self._matrix[rows]
        self._half_sqnorms[rows] = 0.5 * np.einsum("ij,ij->i", block, block)
        first = len(self._hashes)
        self._owner[rows] = np.repeat(np.arange(first, first + len(hashes)), counts)
        self._hashes.extend(hashes)
        self.n_faces = need
        self.version += len(hashes)

    def add(self, image_hash: str, encodings: np.ndarray) -> None:
        """Append one image's faces (an image without faces only advances nothing)."""
        encodings = np.asarray(encodings, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)
        if len(encodings):
            self._append([image_hash], [len(encodings)], encodings)

    def extend(self, entries: Iterable[tuple[str, np.ndarray]]) -> int:
        """Add face-log entries in order; return the number of images added.

        Entries are gathered and copied in batches: per image, only list appends.
        """
        before = self.version
        hashes: list[str] = []
        counts: list[int] = []
        parts: list[np.ndarray] = []

        def flush() -> None:
            faces = np.concatenate(parts).astype(ENCODING_DTYPE, copy=False)
            self._append(hashes, counts, faces.reshape(-1, ENCODING_DIM))
            hashes.clear()
            counts.clear()
            parts.clear()

        pending = 0
        for image_hash, encodings in entries:
            if len(encodings) == 0:
                continue
            hashes.append(image_hash)
            counts.append(len(encodings))
            parts.append(encodings)
            pending += len(encodings)
            if pending >= _LOAD_BATCH:
                flush()
                pending = 0
        if hashes:
            flush()
        return self.version - before

    def face_count_at(self, version: int) -> int:
        """Number of faces held by the first `version` images (to search only a delta)."""
        if version >= self.version:
            return self.n_faces
        owners = self._owner[: self.n_faces]
        return int(np.searchsorted(owners, version))

    def search(self, faces: np.ndarray, tolerance: float, exclude: str = "",
               start_face: int = 0) -> dict[str, Match]:
        """Best match per stored image within `tolerance` of any of `faces`.

        Only stored faces from index `start_face` on are searched (the delta on a retry).
        """
        faces = np.asarray(faces, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)
        best: dict[str, Match] = {}
        if len(faces) == 0 or self.n_faces <= start_face:
            return best
        # |s - f|² <= bound  <=>  s·f - |s|²/2 >= (|f|² - bound) / 2: one product, one
        # subtraction and one comparison per stored face and query face.
        bound = (tolerance + _MARGIN) ** 2
        thresholds = (0.5 * (np.einsum("ij,ij->i", faces, faces) - bound)).astype(ENCODING_DTYPE)
        found_rows: list[np.ndarray] = []
        found_cols: list[np.ndarray] = []
        with _one_blas_thread():
            self._scan(faces, thresholds, start_face, found_rows, found_cols)
        if not found_rows:
            return best
        all_rows = np.concatenate(found_rows)
        all_cols = np.concatenate(found_cols)
        for col in np.unique(all_cols):
            cand = all_rows[all_cols == col]
            dist = exact_distances(self._matrix[cand], faces[col])
            keep = dist <= tolerance
            for row, d in zip(cand[keep], dist[keep]):
                h = self._hashes[self._owner[row]]
                if h != exclude and (h not in best or d < best[h].distance):
                    best[h] = Match(h, float(d))
        return best

    def _scan(self, faces: np.ndarray, thresholds: np.ndarray, start_face: int,
              found_rows: list[np.ndarray], found_cols: list[np.ndarray]) -> None:
        """Append (stored row, query column) pairs whose approximate distance is in bound."""
        single = len(faces) == 1
        for lo in range(start_face, self.n_faces, _BLOCK):
            hi = min(self.n_faces, lo + _BLOCK)
            if single:
                score = self._matrix[lo:hi] @ faces[0]
                score -= self._half_sqnorms[lo:hi]
                rows = np.flatnonzero(score >= thresholds[0])
                cols = np.zeros(len(rows), dtype=np.intp)
            else:
                scores = self._matrix[lo:hi] @ faces.T
                scores -= self._half_sqnorms[lo:hi, None]
                rows, cols = np.nonzero(scores >= thresholds)
            if len(rows):
                found_rows.append(rows + lo)
                found_cols.append(cols)
