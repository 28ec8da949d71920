"""The index's integer scan: squared distances between int8 codes, compared with a threshold.

A face's CODE_DIMS codes are kept in two parts (facerec.matcher.DIMS orders the coded
dimensions by their variance in dlib's encodings, largest first):

- the head, its first HEAD_DIMS codes, in blocks of `BLOCK_ROWS` faces laid out dimension
  pair by dimension pair (`[block][dim pair][row][2]`), so one 16-byte load holds the same
  two dimensions of eight faces. Every search reads all of it: 64 bytes a face.
- the tail, the other TAIL_DIMS codes, row by row (`[row][TAIL_DIMS]`, 32 bytes a face),
  read only for a face whose head sum is already within the threshold. A sum of squares
  only grows, so a face over it after the head is over it after all 96 codes: skipping the
  tail changes no answer. On the benchmarks' faces the head rules out all but ~1 face in
  1000 (BENCHMARKS.md), so a search reads ~64 bytes a face instead of 96.

Two kernels give the same candidates (integer arithmetic, no rounding):

- native (facerec._scan, C, built by the project's install; the default when it imports):
  per block, sign-extend 16 codes to int16, subtract the query's pair, and multiply-add
  adjacent pairs into int32 (`pmaddwd`: 16 dimensions in 4 instructions) with AVX2, or a
  portable C loop on a CPU without it. It releases the GIL.
- numpy: the same sums with int32 arrays; the fallback where the extension is not built.

Squared differences of int8 codes are at most 254² and a face has CODE_DIMS of them, so
every sum fits an int32 exactly (96 × 64516 < 2³¹).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from types import ModuleType

import numpy as np

HEAD_DIMS = 64
TAIL_DIMS = 32
# Dimensions kept in the codes (the scan's lower bound uses only these; see matcher.py).
CODE_DIMS = HEAD_DIMS + TAIL_DIMS
BLOCK_ROWS = 64
BLOCK_BYTES = BLOCK_ROWS * HEAD_DIMS  # one block of the head

# scan(head, tail, row_lo, row_hi, queries, thresholds, out_rows, out_cols) -> candidates.
# `head` is one flat int8 array of whole blocks, `tail` the same rows' [row][TAIL_DIMS];
# rows are numbered within them. Candidates beyond len(out_rows) are counted but not
# written (the caller retries with room for all). The order of the candidates written is
# the kernel's own.
ScanFn = Callable[[np.ndarray, np.ndarray, int, int, np.ndarray, np.ndarray, np.ndarray,
                   np.ndarray], int]

KERNEL_ENV = "FACEREC_INDEX_KERNEL"  # "native", "numpy", or unset/"auto"


def head_rows(head: np.ndarray) -> np.ndarray:
    """The head's codes back in row order, [rows][HEAD_DIMS] (a copy)."""
    blocks = head.reshape(-1, HEAD_DIMS // 2, BLOCK_ROWS, 2)
    return blocks.transpose(0, 2, 1, 3).reshape(-1, HEAD_DIMS)


def scan_numpy(head: np.ndarray, tail: np.ndarray, row_lo: int, row_hi: int,
               queries: np.ndarray, thresholds: np.ndarray, out_rows: np.ndarray,
               out_cols: np.ndarray) -> int:
    """The reference scan in numpy: int32 squared distances over rows [row_lo, row_hi)."""
    b_lo, b_hi = row_lo // BLOCK_ROWS, -(-row_hi // BLOCK_ROWS)
    first = b_lo * BLOCK_ROWS
    heads = head_rows(head[b_lo * BLOCK_BYTES:b_hi * BLOCK_BYTES])[row_lo - first:row_hi - first]
    codes = np.concatenate([heads, tail.reshape(-1, TAIL_DIMS)[row_lo:row_hi]], axis=1
                           ).astype(np.int32)
    count = 0
    for col in range(len(queries)):
        diff = codes - queries[col].astype(np.int32)
        sq = np.einsum("ij,ij->i", diff, diff)
        rows = np.flatnonzero(sq <= thresholds[col]) + row_lo
        room = max(0, min(len(rows), len(out_rows) - count))
        out_rows[count:count + room] = rows[:room]
        out_cols[count:count + room] = col
        count += len(rows)
    return count


@functools.cache
def native() -> ModuleType | None:
    """facerec._scan, or None where the install could not build it (imported once)."""
    try:
        from facerec import _scan
    except ImportError:
        return None
    layout = (_scan.BLOCK_ROWS, _scan.HEAD_DIMS, _scan.TAIL_DIMS)
    if layout != (BLOCK_ROWS, HEAD_DIMS, TAIL_DIMS):  # a stale build of an older _scan.c
        raise RuntimeError(f"facerec._scan was built for blocks, head and tail {layout}, "
                           f"not {(BLOCK_ROWS, HEAD_DIMS, TAIL_DIMS)}: rebuild it (make venv)")
    module: ModuleType = _scan
    return module


def get_scan(kernel: str | None = None) -> tuple[str, ScanFn]:
    """(name, scan function) for `kernel` ("native", "numpy"; None: $FACEREC_INDEX_KERNEL,
    else native when the extension is built, else numpy)."""
    kernel = (kernel or os.environ.get(KERNEL_ENV, "") or "auto").lower()
    if kernel not in ("auto", "native", "numpy"):
        raise ValueError(f"unknown index kernel {kernel!r} (native, numpy or auto)")
    module = native() if kernel != "numpy" else None
    if module is None:
        if kernel == "native":
            raise RuntimeError("the native index kernel (facerec._scan) is not built: "
                               "reinstall the project with a C compiler, or use numpy")
        return "numpy", scan_numpy
    scan: ScanFn = module.scan
    return "native", scan


def native_fn(kernel: str, name: str) -> Callable[..., None] | None:
    """facerec._scan's `name` ("encode", "pack") for an index on the native kernel, or None
    (the index then does that part in numpy)."""
    module = native() if kernel == "native" else None
    if module is None:
        return None
    fn: Callable[..., None] = getattr(module, name)
    return fn
