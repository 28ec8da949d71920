"""The index's integer scan: squared distances between int8 codes, compared with a threshold.

Codes are kept in blocks of `BLOCK_ROWS` faces laid out dimension pair by dimension pair
(`[block][dim pair][row][2]`), so one 16-byte load holds the same two dimensions of eight
faces. Two kernels give the same answers, bit for bit (integer arithmetic, no rounding):

- numba (the default when numba imports): per block, sign-extend 16 codes to int16,
  subtract the query's pair, and multiply-add adjacent pairs into int32 (`vpmaddwd` on
  x86: 16 dimensions in 4 instructions). The loop is written as LLVM IR because numba's
  own code for it widens every value to 32 bits and keeps the sums in memory (2× slower).
- numpy: the same sums with int32 arrays, a block range at a time.

Squared differences of int8 codes are at most 254² and a face has CODE_DIMS of them, so
every sum fits an int32 exactly (96 × 64516 < 2³¹).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

# Dimensions kept in the codes (the scan's lower bound uses only these; see matcher.py).
CODE_DIMS = 96
BLOCK_ROWS = 64
BLOCK_BYTES = BLOCK_ROWS * CODE_DIMS
_GROUPS = BLOCK_ROWS // 8  # 16-byte loads (8 rows × one dimension pair) per dimension pair

# scan(chunk, row_lo, row_hi, queries, thresholds, out_rows, out_cols) -> candidates found.
# `chunk` is one flat int8 array of whole blocks; rows are numbered within it. Candidates
# beyond len(out_rows) are counted but not written (the caller retries with room for all).
ScanFn = Callable[[np.ndarray, int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], int]

KERNEL_ENV = "FACEREC_INDEX_KERNEL"  # "numba", "numpy", or unset/"auto"


def scan_numpy(chunk: np.ndarray, row_lo: int, row_hi: int, queries: np.ndarray,
               thresholds: np.ndarray, out_rows: np.ndarray, out_cols: np.ndarray) -> int:
    """The reference scan in numpy: int32 squared distances over rows [row_lo, row_hi)."""
    b_lo, b_hi = row_lo // BLOCK_ROWS, -(-row_hi // BLOCK_ROWS)
    blocks = chunk[b_lo * BLOCK_BYTES:b_hi * BLOCK_BYTES].reshape(
        b_hi - b_lo, CODE_DIMS // 2, BLOCK_ROWS, 2)
    codes = blocks.transpose(0, 2, 1, 3).reshape(-1, CODE_DIMS).astype(np.int32)
    first = b_lo * BLOCK_ROWS
    codes = codes[row_lo - first:row_hi - first]
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


def _build_numba() -> ScanFn:
    """Compile the numba kernel (about a second, once per process)."""
    import numba
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    v16i8, v16i16 = ir.VectorType(ir.IntType(8), 16), ir.VectorType(i16, 16)
    v16i32, v8i32 = ir.VectorType(i32, 16), ir.VectorType(i32, 8)
    even = ir.Constant(v8i32, list(range(0, 16, 2)))
    odd = ir.Constant(v8i32, list(range(1, 16, 2)))

    @intrinsic
    def block_sums(typingctx, chunk, base, queries, qbase, acc):  # type: ignore[no-untyped-def]
        """acc[r] = Σ (chunk code - query code)² for the BLOCK_ROWS rows at byte `base`."""
        sig = types.void(chunk, base, queries, qbase, acc)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            c_arr = context.make_array(signature.args[0])(context, builder, args[0])
            q_arr = context.make_array(signature.args[2])(context, builder, args[2])
            a_arr = context.make_array(signature.args[4])(context, builder, args[4])
            cptr = builder.gep(c_arr.data, [args[1]])
            qptr = builder.bitcast(builder.gep(q_arr.data, [args[3]]), i32.as_pointer())
            sums = [cgutils.alloca_once_value(builder,  # type: ignore[no-untyped-call]
                                              ir.Constant(v8i32, [0] * 8))
                    for _ in range(_GROUPS)]
            with cgutils.for_range(builder, ir.Constant(i64, CODE_DIMS // 2)) as loop:
                pair = builder.load(builder.gep(qptr, [loop.index]), align=2)
                qv = builder.insert_element(ir.Constant(v8i32, ir.Undefined), pair,
                                            ir.Constant(i32, 0))
                qv = builder.bitcast(builder.shuffle_vector(qv, qv, ir.Constant(v8i32, [0] * 8)),
                                     v16i16)
                offset = builder.mul(loop.index, ir.Constant(i64, 2 * BLOCK_ROWS))
                for g in range(_GROUPS):
                    p = builder.gep(cptr, [builder.add(offset, ir.Constant(i64, 16 * g))])
                    codes = builder.load(builder.bitcast(p, v16i8.as_pointer()), align=1)
                    d = builder.sext(builder.sub(builder.sext(codes, v16i16), qv), v16i32)
                    sq = builder.mul(d, d)  # adjacent pairs summed: LLVM emits pmaddwd
                    s = builder.add(builder.shuffle_vector(sq, sq, even),
                                    builder.shuffle_vector(sq, sq, odd))
                    builder.store(builder.add(builder.load(sums[g]), s), sums[g])
            aptr = builder.bitcast(a_arr.data, v8i32.as_pointer())
            for g in range(_GROUPS):
                builder.store(builder.load(sums[g]), builder.gep(aptr, [ir.Constant(i32, g)]),
                              align=4)
            return context.get_dummy_value()
        return sig, codegen

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def scan(chunk, row_lo, row_hi, queries, thresholds, out_rows, out_cols):  # type: ignore[no-untyped-def]
        acc = np.zeros(BLOCK_ROWS, np.int32)
        flat_q = queries.reshape(-1)
        count = 0
        for b in range(row_lo // BLOCK_ROWS, (row_hi + BLOCK_ROWS - 1) // BLOCK_ROWS):
            for col in range(queries.shape[0]):
                block_sums(chunk, b * BLOCK_BYTES, flat_q, col * CODE_DIMS, acc)  # type: ignore[call-arg]
                t = thresholds[col]
                for r in range(BLOCK_ROWS):
                    if acc[r] <= t:
                        row = b * BLOCK_ROWS + r
                        if row_lo <= row < row_hi:
                            if count < out_rows.shape[0]:
                                out_rows[count] = row
                                out_cols[count] = col
                            count += 1
        return count

    @numba.njit(nogil=True, boundscheck=False, cache=False)
    def encode(vectors, dims, scale, code_max, limit, codes, errors):  # type: ignore[no-untyped-def]
        """facerec.matcher.encode in one pass: the same codes; the error sums the squares
        (exact in float64: float32 differences) in float64, so it is tighter."""
        inv = np.float32(1.0) / np.float32(scale)
        for i in range(vectors.shape[0]):
            odd = False
            for k in range(dims.shape[0]):
                if not abs(vectors[i, dims[k]]) < limit:  # also NaN
                    odd = True
            total = 0.0
            for k in range(dims.shape[0]):
                x = vectors[i, dims[k]]
                if odd:
                    x = np.float32(0.0)
                c = np.rint(x * np.float32(scale))
                c = min(max(c, np.float32(-code_max)), np.float32(code_max))
                codes[i, k] = np.int8(c)
                diff = np.float64(x - c * inv)
                total += diff * diff
            errors[i] = np.inf if odd else np.sqrt(total * (1 + 1e-5))

    _kernels_built["encode"] = encode
    return scan


_numba_scan: ScanFn | None = None
_kernels_built: dict[str, Callable[..., None]] = {}


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def get_scan(kernel: str | None = None) -> tuple[str, ScanFn]:
    """(name, scan function) for `kernel` ("numba", "numpy"; None: $FACEREC_INDEX_KERNEL,
    else numba when it is installed, else numpy)."""
    global _numba_scan
    kernel = (kernel or os.environ.get(KERNEL_ENV, "") or "auto").lower()
    if kernel not in ("auto", "numba", "numpy"):
        raise ValueError(f"unknown index kernel {kernel!r} (numba, numpy or auto)")
    if kernel == "numpy" or (kernel == "auto" and not numba_available()):
        return "numpy", scan_numpy
    if _numba_scan is None:
        fn = _build_numba()
        # Compile now, on tiny inputs, rather than during the first search.
        q = np.zeros((1, CODE_DIMS), np.int16)
        out = np.zeros(1, np.int64)
        fn(np.zeros(BLOCK_BYTES, np.int8), 0, 1, q, np.zeros(1, np.int32), out, out.copy())
        _kernels_built["encode"](read_only(np.zeros((1, 128), np.float32)),
                                 np.arange(CODE_DIMS), 128.0, 127, np.float32(1.5),
                                 np.zeros((1, CODE_DIMS), np.int8), np.zeros(1))
        _numba_scan = fn
    return "numba", _numba_scan


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: the encoder is compiled for those only (blobs decoded from Redis
    are read-only), so once, not once per writability."""
    view = a.view()
    view.flags.writeable = False
    return view


def get_encode(kernel: str) -> Callable[..., None] | None:
    """The numba encoder (after get_scan("numba")), or None for numpy's."""
    return _kernels_built.get("encode") if kernel == "numba" else None
