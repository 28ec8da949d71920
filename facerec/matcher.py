"""The in-memory face index: int8 codes of every committed face, searched exactly.

A worker loads the face log once at start-up and then appends the delta it has not seen.
Matching used to read every stored float32 face (512 bytes each); it now scans 96-byte
codes with integer arithmetic and a proven error bound (most faces are ruled out by their
first 64 codes: facerec._kernels), and measures only the few candidates that bound cannot
rule out in float64 — the same match sets and distances as a float64 brute force over
every stored face, on every input. See BENCHMARKS.md.

Codes. Face x (float32, as stored in Redis) keeps CODE_DIMS of its 128 dimensions (`DIMS`:
the 32 dropped have the least variance in dlib's encodings of the shared photos),
each as c = round(128·x) clipped to ±127. Its quantization error e(x) = |P·x - c/128|
(P: the kept dimensions; `encode` computes it rounded up) is at most √96/256 = 0.038
unless a value saturates; faces over that (a value beyond ±127.5/128, or not finite) are
kept in float32 in memory and always compared exactly, so one odd face cannot loosen the
bound for the others. `E` is the largest error of the other faces, kept up to date on
insert (never lowered by a removal: it stays a bound). Per face the index holds 96 bytes
of codes and 32 of image hash (SHA-256, binary).

The bound. For a stored face x and a query q with codes c, c_q and errors e(x) ≤ E, e(q):
  |x - q| ≥ |P(x - q)| ≥ |c - c_q|/128 - e(x) - e(q)        (a projection, then the
                                                              triangle inequality twice)
so |x - q| ≤ tol implies  |c - c_q|² ≤ (128·(tol + E + e(q)))².  The left side is an
integer computed exactly in int32 (see facerec._kernels), the right side is rounded up
(with a relative slack of 1e-9 that covers every float64 rounding in E, e(q) and the final
distance), so no face within tolerance is ever dropped. Candidates are then measured
exactly with `exact_distances`, the float64 definition.

Where the float32 vectors of the candidates come from is a `VectorSource` given to the
index: in memory (the default: simple, 512 bytes a face), a memory-mapped file, or Redis
(`RedisVectors`: one MGET per search, nothing held in the worker). BENCHMARKS.md compares
them. `remove` (erasure) overwrites an image's codes and held vectors with zeros and
forgets its hash at once; its rows keep their numbers (`n_faces` stays a cursor) and
their memory, reclaimed only when the index is rebuilt (`clear`).
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import math
import mmap
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np

from facerec import _kernels
from facerec._kernels import BLOCK_ROWS, CODE_DIMS, HEAD_DIMS, TAIL_DIMS
from facerec.faces import ENCODING_DIM, ENCODING_DTYPE
from facerec.store import FACE_BYTES, Match, encodings_from_bytes

# Dimensions with the least variance in dlib encodings (the 30 faces of the shared photos),
# left out of the codes: a distance over fewer coordinates is still a lower bound.
_DROPPED = (3, 7, 10, 15, 17, 19, 20, 26, 29, 32, 39, 47, 50, 53, 56, 60, 62, 65, 68, 83,
            86, 87, 90, 94, 95, 97, 98, 99, 104, 107, 119, 122)
# The coded dimensions, by that variance, largest first: the first HEAD_DIMS (71% of the
# variance of all 128 on those faces, 80% of the coded ones) are the scan's head, read for
# every face; the others its tail, read only for faces the head does not rule out.
DIMS = np.array([71, 121, 31, 35, 4, 88, 80, 85, 81, 109, 61, 70, 69, 63, 11, 14, 44, 25, 89,
                 28, 125, 112, 93, 110, 27, 13, 74, 108, 78, 67, 8, 30, 105, 115, 16, 96, 113,
                 79, 75, 120, 111, 102, 34, 92, 6, 72, 103, 55, 106, 117, 2, 123, 49, 1, 23,
                 57, 5, 59, 37, 18, 84, 76, 64, 58, 54, 101, 116, 127, 40, 9, 100, 73, 118,
                 43, 66, 12, 41, 24, 52, 126, 22, 124, 38, 48, 77, 21, 82, 45, 114, 51, 0,
                 91, 42, 46, 36, 33], dtype=np.int64)
assert len(DIMS) == CODE_DIMS and set(DIMS.tolist()) == set(range(ENCODING_DIM)) - set(_DROPPED)
SCALE = 128.0  # codes per unit: a power of two, so c/128 and x - c/128 are exact
CODE_MAX = 127
# The largest error of a face whose values all fit the codes: half a step per dimension.
ERROR_CAP = math.sqrt(CODE_DIMS) * 0.5 / SCALE
_SLACK = 1e-9
# Rows per storage chunk once the index is large (1.5 MB of codes): growing never copies,
# and the last chunk, partly empty, costs at most 2 MB.
_CHUNK_ROWS = 16_384
# Faces gathered before they are encoded into the index when loading the face log.
_LOAD_BATCH = 16_384
_FEW = 32  # rows up to which per-row Python beats numpy's fancy indexing
_TRIM_AFTER = 65_536  # entries loaded by one extend() after which the heap is trimmed
_HEX64 = re.compile(r"[0-9a-f]*")
_NO_HASH = bytes(32)
_EMPTY = np.empty(0, dtype=np.int64)
_INT32_MAX = 2**31 - 1


def keep_nearest(best: dict[str, Match], more: dict[str, Match]) -> None:
    """Merge matches per image into `best`, keeping the nearer of two."""
    for other, m in more.items():
        if other not in best or m.distance < best[other].distance:
            best[other] = m


def exact_distances(stored: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 from float32 values: the same for (a, b) and (b, a)."""
    diff = stored.astype(np.float64) - face.astype(ENCODING_DTYPE).astype(np.float64)
    out: np.ndarray = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def encode(vectors: np.ndarray, kernel: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes of the kept dimensions, upper bounds of their quantization errors) of
    float32 rows. A row with a value that is not finite, or of magnitude 1.5 or more, gets
    an infinite error (it is then compared exactly, never through its codes).

    The native encoder gives the same codes and sums the squares in float64 (tighter).
    Every step is exact in float32 except the sum of squares: scaling by 128 and rounding,
    and d = x - c/128 (Sterbenz: x is within half a step of c/128, so within a factor 2 of
    it when c ≠ 0). The 97 roundings of Σd² (products and sums of non-negative terms, in
    any order) add at most 97·2⁻²⁴ < 6e-6 relative, so Σd²·(1 + 1e-5) bounds |d|² above.
    """
    fast = _kernels.native_fn(kernel, "encode")
    if fast is not None:
        codes8 = np.empty((len(vectors), CODE_DIMS), dtype=np.int8)
        bounds = np.empty(len(vectors), dtype=np.float64)
        fast(np.ascontiguousarray(vectors, dtype=ENCODING_DTYPE), DIMS, SCALE, CODE_MAX, 1.5,
             codes8, bounds)
        return codes8, bounds
    kept = vectors.take(DIMS, axis=1)
    magnitude = np.abs(kept).max(axis=1, initial=0.0)
    odd = ~(magnitude < 1.5)  # also NaN
    if odd.any():
        kept[odd] = 0.0
    codes = np.rint(kept * np.float32(SCALE))
    np.minimum(np.maximum(codes, -CODE_MAX, out=codes), CODE_MAX, out=codes)
    kept -= codes * np.float32(1 / SCALE)
    errors = np.sqrt(np.einsum("ij,ij->i", kept, kept).astype(np.float64) * (1 + 1e-5))
    errors[odd] = np.inf
    return codes.astype(np.int8), errors


def release_free_heap() -> None:
    """Give back to the OS the heap that loading freed (batch buffers, hash strings):
    glibc keeps it otherwise, ~20 bytes a face after a full load. A no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- where the full vectors live --------------------------------------------------------

class VectorSource(Protocol):
    """The float32 encodings of the index's rows, for re-checking candidates."""

    @property
    def nbytes(self) -> int: ...

    def append(self, vectors: np.ndarray) -> None:
        """Rows n_faces … n_faces + len(vectors) - 1, in order (float32, 128 wide)."""

    def fetch(self, rows: np.ndarray, hashes: Sequence[str], positions: np.ndarray
              ) -> np.ndarray:
        """Vectors of `rows` (face `positions[i]` of image `hashes[i]`), as float32.
        A face that no longer exists comes back as NaN (it matches nothing)."""

    def erase(self, rows: np.ndarray) -> None:
        """Overwrite these rows (an erased image's faces) with zeros, if held here."""

    def clear(self) -> None: ...


class _Chunks:
    """Rows of a fixed shape in chunks that double up to _CHUNK_ROWS rows: no copy on growth."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type, first: int) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.first = max(BLOCK_ROWS, -(-first // BLOCK_ROWS) * BLOCK_ROWS)
        self.chunks: list[np.ndarray] = []
        self.starts: list[int] = []
        self.capacity = 0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    def reserve(self, need: int) -> None:
        while self.capacity < need:
            rows = min(_CHUNK_ROWS, max(self.first, self.capacity))
            self.chunks.append(self.new_chunk(rows))
            self.starts.append(self.capacity)
            self.capacity += rows

    def new_chunk(self, rows: int) -> np.ndarray:
        return np.zeros((rows, *self.shape), dtype=self.dtype)

    def rows_of(self, chunk: int) -> int:
        return len(self.chunks[chunk])

    def spans(self, lo: int, hi: int) -> Iterable[tuple[int, int, int]]:
        """(chunk, first row, last row + 1) within each chunk, for rows lo … hi - 1."""
        k = max(0, int(np.searchsorted(self.starts, lo, side="right")) - 1)
        while lo < hi:
            start = self.starts[k]
            end = min(hi, start + self.rows_of(k))
            yield k, lo - start, end - start
            lo = end
            k += 1

    def write(self, row: int, values: np.ndarray) -> None:
        done = 0
        for k, a, b in self.spans(row, row + len(values)):
            self.chunks[k][a:b] = values[done:done + b - a]
            done += b - a

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        starts = self.starts
        if len(rows) <= _FEW:  # a few candidates: plain Python is fastest
            for i, r in enumerate(rows.tolist()):
                k = bisect.bisect_right(starts, r) - 1
                out[i] = self.chunks[k][r - starts[k]]
            return out
        for k, at in self.by_chunk(rows):
            out[at] = self.chunks[k][rows[at] - starts[k]]
        return out

    def row(self, r: int) -> np.ndarray:
        k = bisect.bisect_right(self.starts, r) - 1
        out: np.ndarray = self.chunks[k][r - self.starts[k]]
        return out

    def by_chunk(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(chunk, positions in `rows` of the rows it holds), for each chunk holding some."""
        ks = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(ks, kind="stable")
        for at in np.split(order, np.flatnonzero(np.diff(ks[order])) + 1):
            if len(at):
                yield int(ks[at[0]]), at

    def put(self, rows: np.ndarray, value: object) -> None:
        for k, at in self.by_chunk(rows):
            self.chunks[k][rows[at] - self.starts[k]] = value


class _Codes(_Chunks):
    """int8 codes in the kernels' layout (facerec._kernels): chunk k's head is flat,
    [block][pair][row][2] over the first HEAD_DIMS codes; its tail, tails[k], holds the
    other TAIL_DIMS codes row by row."""

    def __init__(self, first: int, kernel: str) -> None:
        super().__init__((), np.int8, first)
        self.tails: list[np.ndarray] = []
        self._pack = _kernels.native_fn(kernel, "pack")

    @property
    def nbytes(self) -> int:
        return super().nbytes + sum(t.nbytes for t in self.tails)

    def new_chunk(self, rows: int) -> np.ndarray:
        self.tails.append(np.zeros((rows, TAIL_DIMS), dtype=np.int8))
        return np.zeros(rows * HEAD_DIMS, dtype=np.int8)

    def rows_of(self, chunk: int) -> int:
        return len(self.chunks[chunk]) // HEAD_DIMS

    def blocks(self, chunk: int) -> np.ndarray:
        c = self.chunks[chunk]
        return c.reshape(len(c) // (BLOCK_ROWS * HEAD_DIMS), HEAD_DIMS // 2, BLOCK_ROWS, 2)

    def write(self, row: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.int8)
        if self._pack is not None:  # the same layout, ~3× faster than numpy's transposes
            done = 0
            for k, a, b in self.spans(row, row + len(values)):
                self._pack(values[done:done + b - a], self.chunks[k], self.tails[k], a)
                done += b - a
            return
        head = np.ascontiguousarray(values[:, :HEAD_DIMS])
        pairs = head.reshape(len(values), HEAD_DIMS // 2, 2)
        pairs16 = head.view(np.int16)
        done = 0
        for k, a, b in self.spans(row, row + len(values)):
            self.tails[k][a:b] = values[done:done + b - a, HEAD_DIMS:]
            view = self.blocks(k)
            while a < b:
                blk, lane = divmod(a, BLOCK_ROWS)
                if lane == 0 and b - a >= BLOCK_ROWS:  # whole blocks at once
                    n = (b - a) // BLOCK_ROWS
                    # A pair of int8 codes as one int16: numpy transposes 2-byte items
                    # several times faster than (…, 2) int8 ones.
                    view.view(np.int16)[blk:blk + n, :, :, 0] = pairs16[
                        done:done + n * BLOCK_ROWS].reshape(
                        n, BLOCK_ROWS, HEAD_DIMS // 2).transpose(0, 2, 1)
                    e = a + n * BLOCK_ROWS
                else:  # rows a … e - 1 of one block
                    e = min(b, (blk + 1) * BLOCK_ROWS)
                    view[blk, :, lane:lane + e - a, :] = pairs[done:done + e - a].transpose(
                        1, 0, 2)
                done += e - a
                a = e

    def zero(self, rows: np.ndarray) -> None:
        ks = np.searchsorted(self.starts, rows, side="right") - 1
        for k, r in zip(ks, rows, strict=True):
            blk, lane = divmod(int(r) - self.starts[k], BLOCK_ROWS)
            self.blocks(int(k))[blk, :, lane, :] = 0
            self.tails[int(k)][int(r) - self.starts[k]] = 0

    def take(self, rows: np.ndarray) -> np.ndarray:  # for tests: codes back in row order
        out = np.empty((len(rows), CODE_DIMS), dtype=np.int8)
        ks = np.searchsorted(self.starts, rows, side="right") - 1
        for i, (k, r) in enumerate(zip(ks, rows, strict=True)):
            blk, lane = divmod(int(r) - self.starts[k], BLOCK_ROWS)
            out[i, :HEAD_DIMS] = self.blocks(int(k))[blk, :, lane, :].reshape(-1)
            out[i, HEAD_DIMS:] = self.tails[int(k)][int(r) - self.starts[k]]
        return out


class MemoryVectors:
    """The float32 vectors in the worker's memory (512 bytes a face): the simple default."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._rows = _Chunks((ENCODING_DIM,), ENCODING_DTYPE, capacity)
        self._n = 0

    @property
    def nbytes(self) -> int:
        return self._rows.nbytes

    def append(self, vectors: np.ndarray) -> None:
        self._rows.reserve(self._n + len(vectors))
        self._rows.write(self._n, vectors)
        self._n += len(vectors)

    def fetch(self, rows: np.ndarray, hashes: Sequence[str], positions: np.ndarray
              ) -> np.ndarray:
        return self._rows.take(rows)

    def erase(self, rows: np.ndarray) -> None:
        self._rows.put(rows, 0.0)

    def clear(self) -> None:
        self.__init__(self._capacity)  # type: ignore[misc]


class MmapVectors:
    """The float32 vectors in an unlinked temporary file, memory-mapped for reading.

    Nothing of it counts as the worker's anonymous memory; the pages read stay in the page
    cache (and in RSS as file pages) until the kernel needs them back.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        fd, path = tempfile.mkstemp(prefix="facerec-vectors-", dir=directory)
        os.unlink(path)  # gone with the process, whatever happens
        self._file = os.fdopen(fd, "r+b", buffering=1 << 20)
        self._n = 0
        self._map: mmap.mmap | None = None
        self._mapped = 0

    @property
    def nbytes(self) -> int:
        return 0  # file-backed: see the class docstring

    def append(self, vectors: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(vectors, dtype=ENCODING_DTYPE).tobytes())
        self._n += len(vectors)

    def _view(self) -> np.ndarray:
        if self._mapped < self._n:
            self._file.flush()
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self._file.fileno(), self._n * FACE_BYTES)
            self._mapped = self._n
        assert self._map is not None
        return np.frombuffer(self._map, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)

    def fetch(self, rows: np.ndarray, hashes: Sequence[str], positions: np.ndarray
              ) -> np.ndarray:
        out: np.ndarray = self._view()[rows]
        return out

    def erase(self, rows: np.ndarray) -> None:
        if len(rows):
            view = self._view()
            view[rows] = 0.0
            assert self._map is not None
            self._map.flush()

    def clear(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()
        self.__init__(self._directory)  # type: ignore[misc]


class RedisVectors:
    """The float32 vectors read from Redis (database 3) for each search's candidates.

    `fetch_blobs(hashes)` returns the stored encodings of each hash (None if gone) in one
    round trip, e.g. an MGET on database 3. The worker holds nothing of the vectors.
    """

    def __init__(self, fetch_blobs: Callable[[list[str]], Sequence[bytes | None]]) -> None:
        self._fetch_blobs = fetch_blobs

    @property
    def nbytes(self) -> int:
        return 0

    def append(self, vectors: np.ndarray) -> None:
        pass

    def fetch(self, rows: np.ndarray, hashes: Sequence[str], positions: np.ndarray
              ) -> np.ndarray:
        unique = sorted(set(hashes))
        blobs = dict(zip(unique, self._fetch_blobs(unique), strict=True))
        out = np.full((len(rows), ENCODING_DIM), np.nan, dtype=ENCODING_DTYPE)
        for i, (h, pos) in enumerate(zip(hashes, positions, strict=True)):
            blob = blobs[h]
            if blob is not None:
                faces = encodings_from_bytes(blob)
                if pos < len(faces):
                    out[i] = faces[pos]
        return out

    def erase(self, rows: np.ndarray) -> None:
        pass  # erasing database 3 is the erasure protocol's job

    def clear(self) -> None:
        pass


class _Ints:
    """A growable int64 array (amortised appends, a numpy view for searching)."""

    def __init__(self) -> None:
        self._a = np.zeros(16, dtype=np.int64)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self._a):
            bigger = np.zeros(max(need, 2 * len(self._a)), dtype=np.int64)
            bigger[:self.n] = self._a[:self.n]
            self._a = bigger
        self._a[self.n:need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self._a[:self.n]

    @property
    def nbytes(self) -> int:
        return self._a.nbytes


# -- the index --------------------------------------------------------------------------

class FaceIndex:
    """Faces of face-log entries in order; `version` counts entries (images) loaded.

    Image ordinal i is face-log position i. Rows (faces) are numbered in insertion order
    and keep their numbers when an image is removed, so `n_faces` is a cursor.
    """

    def __init__(self, capacity: int = 1024, vectors: VectorSource | None = None,
                 kernel: str | None = None) -> None:
        self._capacity = max(1, capacity)
        self.vectors: VectorSource = vectors if vectors is not None else MemoryVectors(capacity)
        self.kernel, self._scan = _kernels.get_scan(kernel)
        self.epoch = ""  # the face log's epoch these faces belong to (see facerec.store)
        self._reset()

    def _reset(self) -> None:
        self.n_faces = 0
        self.version = 0
        self.max_error = 0.0  # E: the largest quantization error of a coded face
        self.removed_faces = 0
        self.last_rechecked = 0  # candidates the last search measured in float64
        self._codes = _Codes(self._capacity, self.kernel)
        self._hashes = _Chunks((32,), np.uint8, self._capacity)  # SHA-256, binary
        self._odd_hashes: dict[int, str] = {}  # hashes that are not 64 lowercase hex digits
        # Image i starts at row i + offset; the offset changes only after an image with
        # 0 or ≥ 2 faces, so only those are recorded: (first image, its first row).
        self._break_image = _Ints()
        self._break_row = _Ints()
        self._break_image.extend(np.zeros(1, np.int64))
        self._break_row.extend(np.zeros(1, np.int64))
        self._outliers: dict[int, np.ndarray] = {}  # row -> float32 face (codes saturate)
        self._out = np.empty(256, np.int64), np.empty(256, np.int64)  # the scan's output

    def __len__(self) -> int:
        return self.n_faces

    @property
    def kernel_detail(self) -> str:
        """The scan in use, for the logs: "native avx2", "native portable" or "numpy"."""
        module = _kernels.native() if self.kernel == "native" else None
        return "numpy" if module is None else f"native {module.kernel()}"

    @property
    def live_faces(self) -> int:
        """Faces of images not removed."""
        return self.n_faces - self.removed_faces

    @property
    def nbytes(self) -> int:
        return (self._codes.nbytes + self._hashes.nbytes + self._break_image.nbytes
                + self._break_row.nbytes + FACE_BYTES * len(self._outliers)
                + self.vectors.nbytes)

    def clear(self) -> None:
        self.vectors.clear()
        self.epoch = ""
        self._reset()

    # -- rows and images ----------------------------------------------------------------

    def _image_start(self, images: np.ndarray) -> np.ndarray:
        bi, br = self._break_image.view, self._break_row.view
        k = np.searchsorted(bi, images, side="right") - 1
        start: np.ndarray = br[k] + (images - bi[k])
        return start

    def _owners(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(image ordinal, face position in that image) of each row."""
        bi, br = self._break_image.view, self._break_row.view
        if len(bi) == 1:  # every image so far has one face: row r is image r
            return rows, np.zeros(len(rows), dtype=np.int64)
        k = np.searchsorted(br, rows, side="right") - 1
        images = bi[k] + (rows - br[k])
        nxt = np.minimum(k + 1, len(bi) - 1)
        last = np.where(k + 1 < len(bi), bi[nxt] - 1, self.version - 1)
        images = np.minimum(images, last)
        return images, rows - self._image_start(images)

    def _hash_of(self, image: int) -> str:
        odd = self._odd_hashes.get(image)
        if odd is not None:
            return odd
        b = self._hashes.row(image).tobytes()
        return "" if b == _NO_HASH else b.hex()

    def _hashes_of(self, images: np.ndarray) -> list[str]:
        """_hash_of for many images: one hex conversion for all of them."""
        if len(images) <= _FEW:
            return [self._hash_of(i) for i in images.tolist()]
        raw = self._hashes.take(images)
        text = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype="S64")
        out: list[str] = text.astype("U64").tolist()
        for i in np.flatnonzero(~raw.any(axis=1)).tolist():
            out[i] = ""
        if self._odd_hashes:
            odd = np.fromiter(self._odd_hashes, dtype=np.int64, count=len(self._odd_hashes))
            for i in np.flatnonzero(np.isin(images, odd)).tolist():
                out[i] = self._odd_hashes[int(images[i])]
        return out

    def face_count_at(self, version: int) -> int:
        """Number of faces held by the first `version` images (to search only a delta)."""
        if version >= self.version:
            return self.n_faces
        return int(self._image_start(np.array([max(0, version)]))[0])

    # -- adding -------------------------------------------------------------------------

    def _append(self, hashes: list[str], counts: np.ndarray, encodings: np.ndarray) -> None:
        """Append images (counts[i] faces each, possibly 0) whose faces are `encodings`."""
        n_img, n_new = len(hashes), len(encodings)
        first_image, first_row = self.version, self.n_faces
        encodings = np.ascontiguousarray(encodings, dtype=ENCODING_DTYPE)
        codes, errors = encode(encodings, self.kernel)
        odd_rows = np.flatnonzero(~(errors <= ERROR_CAP))
        regular = np.delete(errors, odd_rows)
        if len(regular):
            self.max_error = max(self.max_error, float(regular.max()))
        self._codes.reserve(first_row + n_new)
        self._codes.write(first_row, codes)
        for r in odd_rows:
            self._outliers[first_row + int(r)] = encodings[r].copy()
        self.vectors.append(encodings)
        self._hashes.reserve(first_image + n_img)
        self._hashes.write(first_image, self._binary_hashes(first_image, hashes, counts))
        uneven = np.flatnonzero(counts != 1)
        if len(uneven):
            ends = first_row + np.cumsum(counts)
            self._break_image.extend(first_image + uneven + 1)
            self._break_row.extend(ends[uneven])
        self.n_faces += n_new
        self.version += n_img

    def _binary_hashes(self, first_image: int, hashes: list[str], counts: np.ndarray
                       ) -> np.ndarray:
        """Hashes as 32 bytes each; others (and all-zero ones) go to _odd_hashes.
        Images without faces (tombstones) keep no hash: they can never be returned."""
        joined = "".join(hashes)
        try:  # fromhex also takes upper case and spaces: the two checks rule them out
            raw = bytes.fromhex(joined) if len(joined) == 64 * len(hashes) else b""
        except ValueError:
            raw = b""
        if len(raw) == 32 * len(hashes) and joined == joined.lower():
            out = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 32).copy()
        else:
            out = np.zeros((len(hashes), 32), dtype=np.uint8)
            for i, h in enumerate(hashes):
                if len(h) == 64 and _HEX64.fullmatch(h):
                    out[i] = np.frombuffer(bytes.fromhex(h), dtype=np.uint8)
                elif counts[i]:
                    self._odd_hashes[first_image + i] = h
        out[counts == 0] = 0
        for j in np.flatnonzero((counts > 0) & ~out.any(axis=1)):
            if first_image + int(j) not in self._odd_hashes:
                self._odd_hashes[first_image + int(j)] = hashes[j]  # "000…0"
        return out

    def add(self, image_hash: str, encodings: np.ndarray) -> None:
        """Append one committed image's faces (an image without faces is not in the log)."""
        encodings = np.asarray(encodings, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)
        if len(encodings):
            self._append([image_hash], np.array([len(encodings)]), encodings)

    def extend(self, entries: Iterable[tuple[str, np.ndarray]]) -> int:
        """Add face-log entries in order; return the number of entries (images) added.

        An entry without encodings (an erased image's tombstone) still takes its ordinal.
        Entries are gathered and encoded in batches: per image, only list appends.
        """
        before = self.version
        hashes: list[str] = []
        counts: list[int] = []
        parts: list[np.ndarray] = []
        pending = 0

        def flush() -> None:
            faces = (np.concatenate(parts) if parts
                     else np.empty((0, ENCODING_DIM), dtype=ENCODING_DTYPE))
            self._append(hashes, np.array(counts, dtype=np.int64),
                         faces.reshape(-1, ENCODING_DIM))
            hashes.clear()
            counts.clear()
            parts.clear()

        for image_hash, encodings in entries:
            n = len(encodings)
            hashes.append(image_hash)
            counts.append(n)
            if n:
                parts.append(encodings)
                pending += n
            if pending >= _LOAD_BATCH or len(hashes) >= _LOAD_BATCH:
                flush()
                pending = 0
        if hashes:
            flush()
        if self.version - before >= _TRIM_AFTER:
            release_free_heap()
        return self.version - before

    def extend_blobs(self, hashes: list[str], blobs: Sequence[bytes]) -> int:
        """Add face-log entries given as stored blobs (database 3's format), in order: the
        batch form of `extend`, with no per-image numpy call. Returns the entries added."""
        if len(hashes) != len(blobs):
            raise ValueError("one blob per hash")
        lengths = np.array(list(map(len, blobs)), dtype=np.int64)
        if (lengths % FACE_BYTES).any():
            raise ValueError("an encoding blob is not a whole number of faces")
        for lo in range(0, len(hashes), _LOAD_BATCH):
            part = blobs[lo:lo + _LOAD_BATCH]
            self._append(hashes[lo:lo + _LOAD_BATCH], lengths[lo:lo + _LOAD_BATCH] // FACE_BYTES,
                         encodings_from_bytes(b"".join(part)))
        return len(hashes)

    # -- erasure ------------------------------------------------------------------------

    def remove(self, ordinals: Iterable[int]) -> int:
        """Forget the images at these face-log positions; return the faces removed.

        Their codes (and vectors held here) are overwritten with zeros and their hashes
        forgotten at once. Their rows keep their numbers and their memory (reused only
        when the index is rebuilt). Positions not loaded yet are ignored: they will arrive
        as tombstones. Idempotent.
        """
        wanted = sorted({int(i) for i in ordinals})
        if wanted and wanted[0] < 0:
            raise ValueError(f"negative face-log position {wanted[0]}")
        images = np.array([i for i in wanted if i < self.version], dtype=np.int64)
        if not len(images):
            return 0
        starts = self._image_start(images)
        ends = self._image_start(images + 1)
        removed = 0
        for image, lo, hi in zip(images, starts, ends, strict=True):
            if self._hash_of(int(image)) == "":
                continue  # removed already, or a tombstone
            rows = np.arange(lo, hi)
            self._codes.zero(rows)
            self.vectors.erase(rows)
            for r in rows:
                self._outliers.pop(int(r), None)
            self._hashes.put(np.array([image]), 0)
            self._odd_hashes.pop(int(image), None)
            removed += len(rows)
        self.removed_faces += removed
        return removed

    # -- searching ----------------------------------------------------------------------

    def thresholds(self, faces: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
        """(query codes as int16, integer thresholds on |c - c_q|²) for float32 faces."""
        codes, errors = encode(np.asarray(faces, dtype=ENCODING_DTYPE), self.kernel)
        radius = tolerance + self.max_error + errors
        radius = radius * (1 + _SLACK) + _SLACK
        limit = np.floor(np.square(SCALE * radius)) + 1
        limit = np.where(radius < 0, -1, np.minimum(limit, _INT32_MAX))
        return codes.astype(np.int16), limit.astype(np.int32)

    def search(self, faces: np.ndarray, tolerance: float, exclude: str = "",
               start_face: int = 0) -> dict[str, Match]:
        """Best match per stored image within `tolerance` of any of `faces`.

        Only stored faces from row `start_face` on are searched (the delta on a retry).
        """
        best: dict[str, Match] = {}
        for found in self.search_each(faces, tolerance, exclude, start_face):
            keep_nearest(best, found)
        return best

    def search_each(self, faces: np.ndarray, tolerance: float, exclude: str = "",
                    start_face: int = 0) -> list[dict[str, Match]]:
        """For each of `faces`, the best match per stored image within `tolerance` of it:
        one scan for all of them (`search` merges these)."""
        faces = np.asarray(faces, dtype=ENCODING_DTYPE).reshape(-1, ENCODING_DIM)
        self.last_rechecked = 0
        per_face: list[dict[str, Match]] = [{} for _ in range(len(faces))]
        lo = max(0, start_face)
        # A face with a value that is not finite is at distance NaN or inf from every face.
        usable = np.flatnonzero(np.isfinite(faces).all(axis=1))
        if math.isnan(tolerance) or not len(usable) or self.n_faces <= lo:
            return per_face
        faces = faces[usable]
        best = [per_face[k] for k in usable.tolist()]
        queries, limits = self.thresholds(faces, tolerance)
        rows, cols = self._candidates(queries, limits, lo)
        if self._outliers:
            odd = np.array(sorted(r for r in self._outliers if r >= lo), dtype=np.int64)
            odd_set = set(odd.tolist())
            keep = np.array([r not in odd_set for r in rows.tolist()], dtype=bool)
            rows, cols = rows[keep], cols[keep]
        else:
            odd = np.empty(0, dtype=np.int64)
        faces_at = usable.tolist()
        self._recheck(rows, cols, faces, tolerance, exclude, best, True, faces_at)
        if len(odd):
            self._recheck(np.repeat(odd, len(faces)), np.tile(np.arange(len(faces)), len(odd)),
                          faces, tolerance, exclude, best, False, faces_at)
        return per_face

    def _candidates(self, queries: np.ndarray, limits: np.ndarray, lo: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, query columns) whose code distance is within the limit, rows ≥ lo."""
        found_rows: list[np.ndarray] = []
        found_cols: list[np.ndarray] = []
        out_rows, out_cols = self._out
        queries = np.ascontiguousarray(queries)
        for k, a, b in self._codes.spans(lo, self.n_faces):
            head, tail = self._codes.chunks[k], self._codes.tails[k]
            n = self._scan(head, tail, a, b, queries, limits, out_rows, out_cols)
            if n > len(out_rows):
                self._out = out_rows, out_cols = np.empty(n, np.int64), np.empty(n, np.int64)
                n = self._scan(head, tail, a, b, queries, limits, out_rows, out_cols)
            if n:
                found_rows.append(out_rows[:n] + self._codes.starts[k])
                found_cols.append(out_cols[:n].copy())
        if not found_rows:
            return _EMPTY, _EMPTY
        if len(found_rows) == 1:
            return found_rows[0], found_cols[0]
        return np.concatenate(found_rows), np.concatenate(found_cols)

    def _recheck(self, rows: np.ndarray, cols: np.ndarray, faces: np.ndarray,
                 tolerance: float, exclude: str, best: list[dict[str, Match]],
                 from_source: bool, faces_at: list[int]) -> None:
        """Measure candidate pairs exactly and keep the best match per image and face
        (faces_at: each searched face's position among the faces asked about)."""
        if not len(rows):
            return
        images, positions = self._owners(rows)
        hashes = self._hashes_of(images)
        keep = [h != "" and h != exclude for h in hashes]
        if not all(keep):
            sel = np.array(keep, dtype=bool)
            rows, cols, positions = rows[sel], cols[sel], positions[sel]
            hashes = [h for h, k in zip(hashes, keep, strict=True) if k]
            if not len(rows):
                return
        if from_source:
            vectors = self.vectors.fetch(rows, hashes, positions)
        else:
            vectors = np.stack([self._outliers[r] for r in rows.tolist()])
        self.last_rechecked += len(rows)
        if len(faces) == 1:
            dist = exact_distances(vectors, faces[0])
        else:
            dist = np.empty(len(rows), dtype=np.float64)
            for col in np.unique(cols):  # exact_distances itself: brute force's very bits
                sel = cols == col
                dist[sel] = exact_distances(vectors[sel], faces[col])
        for i in np.flatnonzero(dist <= tolerance).tolist():
            col = int(cols[i])
            h, d, found = hashes[i], float(dist[i]), best[col]
            if h not in found or d < found[h].distance:
                found[h] = Match(h, d, face=faces_at[col], stored_face=int(positions[i]))
