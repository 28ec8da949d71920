"""Benchmark 2b: the exact int8 index at 1k … 1M faces, and where its full vectors live.

Synthetic encodings (bench/match_scaling.py's: 250,000 identities, one face per image)
are written to a private Redis in the real layout. At each size:

- start-up, in a fresh process, as a worker loads (`Processor.load_index`: batches of
  blobs into `extend_blobs`, the next batch read from Redis on a second thread): seconds
  and the process's memory growth (anonymous pages, i.e. what the index holds);
- match one face on one core (the native scan; candidates' vectors fetched from Redis in one
  MGET), p50 and p99, each query timed next to a bare float32 `faces @ q` over the same
  faces (one BLAS thread), and the ratio of the two medians; candidates re-checked in
  float64 per query; every query checked against a float64 brute force (match set and
  distances); the numpy fallback kernel on a few queries;
- at the largest size, the same searches with the vectors in memory and memory-mapped.

Queries: new faces of stored identities, and every fourth one a stored face moved to
the tolerance ± 1e-4 (the boundary cases).

    python bench/index_scaling.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Section, log, percentile, services, verdict
from bench.match_scaling import TOL, Synthetic, populate, stored_hash
from facerec._kernels import HEAD_DIMS, head_rows
from facerec.matcher import (
    FaceIndex,
    MemoryVectors,
    MmapVectors,
    RedisVectors,
    VectorSource,
    encode,
    exact_distances,
)
from facerec.pipeline import Processor
from facerec.settings import Settings
from facerec.store import HASH_TO_ENCODINGS, Store

FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 100_000)
RATIO_TARGET = 0.2  # search p50 / float32 matvec p50 at 1M faces, one core
BYTES_TARGET = 160


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    t = os.times()
    return t.user + t.system


def redis_vectors(port: int) -> RedisVectors:
    import redis
    db3 = redis.Redis(port=port, db=HASH_TO_ENCODINGS)
    return RedisVectors(lambda hashes: cast(list[bytes | None], db3.mget(hashes)))


def startup_child(port: int) -> None:
    """In a fresh process: load the face log as a worker does (Processor.load_index: batches
    of blobs into extend_blobs, the next batch read on a second thread); print JSON."""
    settings = Settings.from_env({}, redis_port=port)
    processor = Processor(settings, Store(settings))  # its index reads vectors from Redis
    anon0, rss0 = status_kib("RssAnon"), status_kib("VmRSS")
    start, cpu = time.perf_counter(), cpu_seconds()
    processor.load_index()
    index = processor.index
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "faces": index.n_faces,
                      "nbytes": index.nbytes,
                      "anon_growth_mib": (status_kib("RssAnon") - anon0) / 1024,
                      "rss_growth_mib": (status_kib("VmRSS") - rss0) / 1024,
                      "rss_mib": status_kib("VmRSS") / 1024,
                      "anon_mib": status_kib("RssAnon") / 1024}))


def measure_startup(port: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--startup-child", str(port)],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def head_pass(index: FaceIndex, queries: np.ndarray, rows: int = 1_000_000) -> float:
    """Fraction of stored faces whose head sum (the scan's first 64 codes) is within a
    query's threshold, i.e. whose tail the scan reads too: over the first `rows` faces."""
    codes = index._codes  # the bench looks inside: the scan does not count these
    passed = total = 0
    for q in queries:
        qc, limits = index.thresholds(q[None], TOL)
        seen = 0
        for chunk in codes.chunks:
            if seen >= rows:
                break
            d = head_rows(chunk).astype(np.int32) - qc[0, :HEAD_DIMS]
            passed += int((np.einsum("ij,ij->i", d, d) <= limits[0]).sum())
            total += len(d)
            seen += len(d)
    return passed / max(1, total)


def closer_identities(size: int, n_queries: int, rng: np.random.Generator) -> list[str]:
    """The same search over faces of identities as close as real strangers (centres
    N(0, 0.05²): two identities ~0.8 apart, the shared photos' strangers ~0.7–0.9), vectors
    in memory: what the head/tail split saves when the head rules out fewer faces."""
    synth = Synthetic(size, seed=12, spread=0.05)
    synth.grow(size)
    index = build_index(synth, size, MemoryVectors())
    faces = synth.faces[:size]
    queries = make_queries(synth, n_queries, rng)
    search, gemv, cands = time_searches(index, faces, queries)
    scans = []  # the scan alone: the search without re-checking its candidates
    for q in queries:
        start = time.perf_counter()
        index._candidates(*index.thresholds(q, TOL), 0)
        scans.append(time.perf_counter() - start)
    exact = sum({h: m.distance for h, m in index.search(q, TOL).items()}
                == brute_force(faces, q) for q in queries[:8])
    passed = head_pass(index, np.concatenate(queries[:5]))
    p50, g50 = percentile(search, 50), percentile(gemv, 50)
    return [f"{size:,}", f"{passed:.1%}", f"{p50 * 1e3:.2f}",
            f"{percentile(search, 99) * 1e3:.2f}", f"{percentile(scans, 50) * 1e3:.2f}",
            f"{g50 * 1e3:.1f}", f"{p50 / g50:.2f}", f"{int(np.median(cands))} / {max(cands)}",
            f"{exact}/8"]


def real_head_pass() -> tuple[int, int, int, int, int]:
    """On real encodings, the project's photos (tests/data/faces) at the default detection
    settings: (faces, pairs of faces of different photos, pairs the head alone lets
    through, pairs all 96 codes let through, pairs within the tolerance)."""
    from facerec import faces as face_ops
    from tests.services import photos
    settings = Settings.from_env({})
    found = []
    for photo in photos():
        rgb = face_ops.decode(photo.data, settings.max_image_pixels)
        for enc in face_ops.find_faces(rgb, settings.detection_model, settings.detect_max_side,
                                       settings.detect_upsample).encodings:
            found.append((photo.path, enc))
    index = FaceIndex()
    codes, errors = encode(np.stack([e for _, e in found]))
    index.max_error = float(errors.max())  # E, as an index holding these faces has it
    pairs = head = full = within = 0
    for i, (path, enc) in enumerate(found):
        qc, limits = index.thresholds(enc[None], TOL)
        for j in range(i + 1, len(found)):
            if found[j][0] == path:
                continue
            d = codes[j].astype(np.int64) - qc[0]
            pairs += 1
            head += int(d[:HEAD_DIMS] @ d[:HEAD_DIMS]) <= limits[0]
            full += int(d @ d) <= limits[0]
            within += float(exact_distances(found[j][1][None], enc)[0]) <= TOL
    return len(found), pairs, head, full, within


def make_queries(synth: Synthetic, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """New faces of stored identities; every fourth a stored face at the tolerance ± 1e-4."""
    out = []
    for k in range(n):
        if k % 4 == 3:
            j = int(rng.integers(0, synth.n))
            v = rng.normal(size=128)
            step = TOL + (1e-4 if k % 8 == 3 else -1e-4)
            out.append((synth.faces[j] + v / np.linalg.norm(v) * step).astype(np.float32)[None])
        else:
            out.append(synth.query().astype(np.float32))
    return out


def brute_force(faces: np.ndarray, q: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for lo in range(0, len(faces), 100_000):
        d = exact_distances(faces[lo:lo + 100_000], q[0])
        for k in np.flatnonzero(d <= TOL):
            out[stored_hash(lo + int(k))] = float(d[k])
    return out


def time_searches(index: FaceIndex, faces: np.ndarray, queries: list[np.ndarray]
                  ) -> tuple[list[float], list[float], list[int]]:
    """(search seconds, matvec seconds, candidates) per query, interleaved query by query."""
    from threadpoolctl import threadpool_limits
    search, gemv, cands = [], [], []
    index.search(queries[0], TOL)  # warm-up
    with threadpool_limits(1, user_api="blas"):
        faces @ queries[0][0]
        for q in queries:
            start = time.perf_counter()
            index.search(q, TOL)
            search.append(time.perf_counter() - start)
            cands.append(index.last_rechecked)
            q32 = q[0]
            start = time.perf_counter()
            faces @ q32
            gemv.append(time.perf_counter() - start)
    return search, gemv, cands


def build_index(synth: Synthetic, n: int, vectors: VectorSource, kernel: str | None = None
                ) -> FaceIndex:
    index = FaceIndex(vectors=vectors, kernel=kernel)
    blob = synth.faces[:n].tobytes()
    index.extend_blobs([stored_hash(i) for i in range(n)],
                       [blob[i * 512:(i + 1) * 512] for i in range(n)])
    return index


def run(quick: bool = False) -> Section:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    n_queries = 40 if quick else 100
    section = Section("2b. The exact int8 index", "python bench/index_scaling.py"
                      + (" --quick" if quick else ""))
    synth = Synthetic(max(sizes))
    rng = np.random.default_rng(11)
    rows, source_rows = [], []
    all_exact = True
    with services(vhost=False) as env:
        port = env.settings.redis_port
        for size in sizes:
            fill = populate(env.settings, synth, size)
            log(f"index scaling: {size:,} faces stored ({fill:.1f}s)")
            startup = measure_startup(port)
            index = build_index(synth, size, redis_vectors(port))
            faces = synth.faces[:size]
            queries = make_queries(synth, n_queries, rng)
            search, gemv, cands = time_searches(index, faces, queries)
            checks = queries if size <= 100_000 else queries[:12]
            exact = sum({h: m.distance for h, m in index.search(q, TOL).items()}
                        == brute_force(faces, q) for q in checks)
            all_exact &= exact == len(checks)
            slow = build_index(synth, size, redis_vectors(port), kernel="numpy")
            fallback = time_searches(slow, faces, queries[:3])[0]
            fb_same = all(set(slow.search(q, TOL)) == set(index.search(q, TOL))
                          for q in queries[:3])
            p50, p99, g50 = (percentile(search, 50), percentile(search, 99),
                             percentile(gemv, 50))
            ratio = p50 / g50
            per_face = startup["nbytes"] / startup["faces"]
            rows.append([
                f"{size:,}", f"{per_face:.0f}",
                f"{startup['seconds']:.2f} ({startup['cpu']:.2f})",
                f"{startup['anon_growth_mib']:.0f}",
                f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}", f"{g50 * 1e3:.2f}", f"{ratio:.2f}",
                f"≤ {RATIO_TARGET}: {verdict(ratio <= RATIO_TARGET)}" if size == 1_000_000
                else "–",
                f"{int(np.median(cands))} / {max(cands)}", f"{exact}/{len(checks)}",
                f"{percentile(fallback, 50) * 1e3:.1f} ({'same' if fb_same else '**differs**'})"])
            log(f"index scaling: {size:,}: p50 {p50 * 1e3:.2f} ms, matvec {g50 * 1e3:.2f} ms, "
                f"ratio {ratio:.2f}, start-up {startup['seconds']:.1f}s")
            if size == max(sizes):
                source_rows = compare_sources(synth, size, index, queries, port)
            del index, slow
    section.table(["stored faces", "index bytes / face", "start-up s (CPU s)",
                   "start-up memory growth MiB (anon)",
                   "match p50 ms (1 core)", "p99 ms", "float32 matvec p50 ms",
                   "ratio p50", "target (ratio)", "candidates re-checked / query (median / max)",
                   "= float64 brute force", "numpy fallback p50 ms (3 queries; matches)"], rows)
    section.note(
        f"Index bytes per face at 1M: {BYTES_TARGET} at most: "
        f"{verdict(all(float(r[1]) <= BYTES_TARGET for r in rows if r[0] == '1,000,000'))}"
        " (96 bytes of codes, 32 of image hash, the rest the partly filled last chunk, at "
        "most 2 MB: it dominates below 100k faces); the vectors stay in Redis. Start-up "
        "CPU seconds are the loading process's own (Redis works on the other core). "
        "Exact: every checked query gave the float64 brute force's match set and distances: "
        f"{'yes' if all_exact else '**no**'}. The matvec column is a bare `faces @ q` over "
        "the same float32 faces on one BLAS thread, timed after each search, so both see "
        "the same load.")
    if source_rows:
        section.table(["full vectors (at the largest size)", "match p50 ms", "p99 ms",
                       "worker bytes / face", "note"], source_rows)
    if not quick:
        closer = closer_identities(max(sizes), n_queries, rng)
        section.table(["closer identities: stored faces", "faces whose tail is read",
                       "match p50 ms", "p99 ms", "scan alone p50 ms", "float32 matvec p50 ms",
                       "ratio p50", "candidates / query (median / max)",
                       "= float64 brute force"], [closer])
        section.note(
            "Closer identities: the same search over faces whose identities are as close as "
            "real strangers (centres N(0, 0.05²), ~0.8 apart; the table above uses 0.07, "
            "~1.2 apart), vectors in memory. More heads are within the threshold, so more "
            "tails are read, and many more faces are within the bound of a query (the "
            "candidates, thousands of them true matches): the scan itself costs little more "
            "(\"scan alone\"); re-checking the candidates and building their matches is "
            "the rest. It stays exact.")
    n_real, pairs, head, full, within = real_head_pass()
    section.note(
        f"The scan reads every face's head (its 64 highest-variance codes) and the tail "
        f"(32 more) only where the head sum is within the threshold. On real encodings, the "
        f"{n_real} faces of the project's photos (tests/data/faces), {pairs} pairs of faces "
        f"of different photos: the head lets {head} through, all 96 codes {full}, and "
        f"{within} are within {TOL} (most of these photos show the same few people, so "
        f"{within} is far more than among strangers). Between strangers the head lets "
        f"through about {(head - within) / max(1, pairs - within):.0%} of pairs: on real "
        "faces the tails cost more than on these synthetic ones (whose identities are "
        "further apart), and the answers are the same either way.")
    if rows and rows[-1][0] == "1,000,000":
        ratio = float(rows[-1][7])
        section.note(
            f"- **Search ≤ {RATIO_TARGET}× the float32 matvec at 1M faces, one core: "
            f"{verdict(ratio <= RATIO_TARGET)}** ({ratio:.2f}; p99 {rows[-1][5]} ms). "
            "A search reads ~64 bytes a face (the heads, and the few tails the heads do not "
            "rule out) where the matvec reads 512.")
        section.note(
            f"- **≤ {BYTES_TARGET} bytes a face held by the index: "
            f"{verdict(float(rows[-1][1]) <= BYTES_TARGET)}** ({rows[-1][1]} at 1M).")
        section.note(
            f"- **Exact: {'met' if all_exact else '**missed**'}**, by construction (the "
            "bound, integer sums, a float64 re-check of every candidate) and as measured "
            "against the brute force above.")
    section.data["index"] = rows
    return section


def compare_sources(synth: Synthetic, size: int, index: FaceIndex, queries: list[np.ndarray],
                    port: int) -> list[list[str]]:
    """The same codes and queries, with the candidates' vectors from memory, mmap, Redis."""
    faces = synth.faces[:size]
    out = []
    redis_source = index.vectors
    memory, mapped = MemoryVectors(), MmapVectors()
    memory.append(faces)
    mapped.append(faces)
    notes = {"in memory": "512 bytes / face more; nothing to fetch",
             "memory-mapped file": "pages in the page cache (RSS as file pages); a disk copy "
                                   "of biometric data to erase too",
             "Redis (one MGET)": "nothing held; one round trip per search"}
    base = (index.nbytes - redis_source.nbytes) / size
    for name, source in (("in memory", memory), ("memory-mapped file", mapped),
                         ("Redis (one MGET)", redis_source)):
        index.vectors = source
        search, _, _ = time_searches(index, faces, queries)
        held = base + source.nbytes / size
        out.append([name, f"{percentile(search, 50) * 1e3:.3f}",
                    f"{percentile(search, 99) * 1e3:.3f}", f"{held:.0f}", notes[name]])
    index.vectors = redis_source
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--startup-child", type=int, metavar="REDIS_PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.startup_child:
        startup_child(args.startup_child)
        return
    print(run(args.quick).markdown())


if __name__ == "__main__":
    main()
