"""The in-memory face index: every committed face as one float32 matrix, searched with numpy.

A worker loads the face log once at start-up and then extends the matrix with the delta
it has not seen, so matching an image costs one matrix-vector product per face instead of
a Redis round trip per stored image.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from facerec.store import ENCODING_DIM, ENCODING_DTYPE, Match

# float32 dot products err by ~1e-6 here; candidates this close to the tolerance are
# re-measured exactly, so the decision equals a float64 brute-force comparison.
_MARGIN = 1e-3


def exact_distances(stored: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 from float32 values: the same for (a, b) and (b, a)."""
    diff = stored.astype(np.float64) - face.astype(ENCODING_DTYPE).astype(np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


class FaceIndex:
    """Faces of committed images in face-log order; `version` counts images loaded."""

    def __init__(self, capacity: int = 1024) -> None:
        self._matrix = np.empty((capacity, ENCODING_DIM), dtype=ENCODING_DTYPE)
        self._sqnorms = np.empty(capacity, dtype=ENCODING_DTYPE)
        self._owner = np.empty(capacity, dtype=np.int64)
        self._hashes: list[str] = []
        self.n_faces = 0
        self.version = 0
        self.epoch = ""  # the face log's epoch these faces belong to (see facerec.store)

    def __len__(self) -> int:
        return self.n_faces

    @property
    def nbytes(self) -> int:
        return self._matrix.nbytes + self._sqnorms.nbytes + self._owner.nbytes

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def add(self, image_hash: str, encodings: np.ndarray) -> None:
        """Append one image's faces (an image without faces only advances nothing)."""
        encodings = np.asarray(encodings, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)
        k = len(encodings)
        if k == 0:
            return
        need = self.n_faces + k
        if need > len(self._matrix):
            cap = max(need, 2 * len(self._matrix))
            for name in ("_matrix", "_sqnorms", "_owner"):
                old = getattr(self, name)
                new = np.empty((cap, *old.shape[1:]), dtype=old.dtype)
                new[: self.n_faces] = old[: self.n_faces]
                setattr(self, name, new)
        rows = slice(self.n_faces, need)
        self._matrix[rows] = encodings
        self._sqnorms[rows] = np.einsum("ij,ij->i", encodings, encodings)
        self._owner[rows] = len(self._hashes)
        self._hashes.append(image_hash)
        self.n_faces = need
        self.version += 1

    def extend(self, entries: Iterable[tuple[str, np.ndarray]]) -> int:
        """Add face-log entries in order; return the number of images added."""
        before = self.version
        for image_hash, encodings in entries:
            self.add(image_hash, encodings)
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
        stored = self._matrix[start_face: self.n_faces]
        best: dict[str, Match] = {}
        if len(faces) == 0 or len(stored) == 0:
            return best
        bound = (tolerance + _MARGIN) ** 2
        approx = (self._sqnorms[start_face: self.n_faces, None]
                  + np.einsum("ij,ij->i", faces, faces)[None, :]
                  - 2.0 * (stored @ faces.T))
        rows, cols = np.nonzero(approx <= bound)
        for col in np.unique(cols):
            cand = rows[cols == col]
            dist = exact_distances(stored[cand], faces[col])
            for row, d in zip(cand[dist <= tolerance], dist[dist <= tolerance]):
                h = self._hashes[self._owner[start_face + row]]
                if h != exclude and (h not in best or d < best[h].distance):
                    best[h] = Match(h, float(d))
        return best
