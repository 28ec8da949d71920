"""Benchmark 1b: the dlib builds, dlib-bin against the fast build (scripts/fast-dlib.sh).

Each build is installed on its own (pip install --target .cache/dlib-builds/NAME) and put
first on PYTHONPATH of the processes that use it; everything else is the same venv. For
each build, in one run, on the same photos:

- detect: dlib's HOG detector over the 26 shared photos scaled to DETECT_MAX_SIDE, and
  encode: ms per face at full resolution; one thread (OPENBLAS_NUM_THREADS=1), timed apart;
- the plain in-process loop at full resolution, face_recognition's defaults (the lab's
  loop, throughput's loop (b)), and at the project's settings (loop (a)), over
  throughput.py's 52 photos;
- the service: rest → RabbitMQ → 1 and 2 workers → Redis over the same photos.

The end-to-end ratio is the plain full-resolution loop *with dlib-bin* (what a user of the
library runs) over the 2-worker service with the build; issue 18's goal is ≥ 4×. The
fast wheel is built if .cache/wheels has none (8-10 minutes; `make fast-dlib` builds the
same one), the dlib-bin wheel is fetched by pip.

    python bench/dlib_builds.py [--quick]
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Section, log, main, services, start_rest, verdict
from bench.throughput import PROFILE_PARTS, derive_photos, pipeline_run, profile

CACHE = ROOT / ".cache" / "dlib-builds"
FAST_WHEELS = ROOT / ".cache" / "wheels"
GOAL = 4.0


@dataclass
class Build:
    name: str
    wheel: Path
    build_seconds: float | None  # None: prebuilt
    what: str

    @property
    def target(self) -> Path:
        return CACHE / self.name

    def env(self, **extra: str) -> dict[str, str]:
        return {"PYTHONPATH": str(self.target), **extra}


def pinned_dlib_bin() -> str:
    text = (ROOT / "requirements" / "base.txt").read_text()
    match = re.search(r"^dlib-bin==(\S+)", text, re.M)
    assert match, "no dlib-bin pin in requirements/base.txt"
    return match.group(1)


def builds(quick: bool) -> list[Build]:
    (CACHE / "wheels").mkdir(parents=True, exist_ok=True)
    (CACHE.parent / ".gitignore").write_text("*\n")
    pin = pinned_dlib_bin()
    found = sorted((CACHE / "wheels").glob(f"dlib_bin-{pin}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary", ":all:", "-d", str(CACHE / "wheels"),
                        f"dlib-bin=={pin}"], check=True)
        found = sorted((CACHE / "wheels").glob(f"dlib_bin-{pin}-*.whl"))
    out = [Build("dlib-bin", found[0], None, "PyPI wheel: -mavx, no BLAS")]
    fast = sorted(FAST_WHEELS.glob("dlib-*.whl"))
    if not fast and quick:
        log("dlib builds: no fast wheel in .cache/wheels (make fast-dlib): dlib-bin only")
    else:
        if not fast:
            log("dlib builds: building the fast wheel (8-10 minutes)")
        wheel = subprocess.run(["scripts/fast-dlib.sh", "build", str(FAST_WHEELS),
                                sys.executable], cwd=ROOT, check=True, capture_output=True,
                               text=True).stdout.strip()
        info = (FAST_WHEELS / "build.txt").read_text()
        seconds = re.search(r"seconds=(\d+)", info)
        out.append(Build("fast", Path(wheel), float(seconds.group(1)) if seconds else None,
                         "source: -march=x86-64-v3 -mtune=generic, OpenBLAS + LAPACK, "
                         "no GUI"))
    for b in out:
        stamp = b.target / f".installed-{b.wheel.name}"
        if not stamp.exists():
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                            "--upgrade", "--target", str(b.target), str(b.wheel)], check=True)
            stamp.touch()
    return out


def child(build: Build, mode: str, paths: list[Path], **env: str) -> dict[str, float]:
    """Run this module's --child MODE in a process that imports `build`'s dlib."""
    environ = dict(os.environ, **build.env(**env))
    out = subprocess.run([sys.executable, __file__, "--child", mode, *map(str, paths)],
                         cwd=ROOT, env=environ, capture_output=True, text=True)
    if out.returncode:  # e.g. the fast build without its runtime libraries (OpenBLAS)
        raise RuntimeError(f"{build.name} {mode} failed:\n{out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _probe(paths: list[Path]) -> dict[str, float]:
    """Detection on the downscaled copies, encoding at full resolution, timed apart."""
    import numpy as np
    from PIL import Image

    from facerec import faces
    from facerec.settings import Settings
    settings = Settings()
    fr = faces._face_recognition()
    import dlib
    detect = encode = 0.0
    n_faces = 0
    for path in paths:
        rgb = faces.decode(path.read_bytes(), settings.max_image_pixels)
        height, width = rgb.shape[:2]
        scale, small = 1.0, rgb
        if max(height, width) > settings.detect_max_side:
            scale = settings.detect_max_side / max(height, width)
            small = np.asarray(Image.fromarray(rgb).resize(
                (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR,
                reducing_gap=2.0))
        start = time.perf_counter()
        found = fr.face_locations(small, number_of_times_to_upsample=settings.detect_upsample)
        detect += time.perf_counter() - start
        boxes = [(round(t / scale), round(r / scale), round(b / scale), round(lft / scale))
                 for t, r, b, lft in found]
        start = time.perf_counter()
        n_faces += len(fr.face_encodings(rgb, known_face_locations=boxes))
        encode += time.perf_counter() - start
    return {"detect": detect, "encode_ms": encode / max(n_faces, 1) * 1000,
            "faces": n_faces, "blas": float(bool(dlib.DLIB_USE_BLAS))}


def _loop(paths: list[Path], max_side: int) -> dict[str, float]:
    from bench.throughput import plain_loop
    seconds, n_faces, cpu, busy = plain_loop(paths, max_side)
    return {"seconds": seconds, "faces": n_faces, "cpu": cpu, "busy": busy}


def run(quick: bool = False) -> Section:
    from bench.common import FACES
    from facerec.settings import Settings
    from tests.services import photos
    section = Section("1b. dlib builds (issue 18)", "python bench/dlib_builds.py"
                      + (" --quick" if quick else ""))
    max_side = Settings().detect_max_side
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    chosen = builds(quick)
    shared = [FACES / p.path for p in photos()]
    rows = []
    results: dict[str, dict[str, float]] = {}
    spied: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as tmp:
        paths = derive_photos(Path(tmp), (1.0,) if quick else (1.0, 0.85))
        with services() as env:
            url = start_rest(env)
            for b in chosen:
                r = child(b, "probe", shared, OPENBLAS_NUM_THREADS="1")
                log(f"dlib builds: {b.name}: detect {r['detect']:.1f}s, encode "
                    f"{r['encode_ms']:.0f} ms/face")
                r["loop_b"] = child(b, "loop-full", paths)["seconds"]
                log(f"dlib builds: {b.name}: plain loop (b) {r['loop_b']:.1f}s")
                loop_a = child(b, "loop-project", paths, OPENBLAS_NUM_THREADS="1")
                r["loop_a"], r["loop_a_cpu"] = loop_a["seconds"], loop_a["cpu"]
                log(f"dlib builds: {b.name}: plain loop (a) {r['loop_a']:.1f}s")
                r["pipe_1"], _, r["cpu_1"], r["busy_1"] = pipeline_run(env, url, paths, 1,
                                                                       **b.env())
                log(f"dlib builds: {b.name}: 1 worker {r['pipe_1']:.1f}s")
                # The fastest of two (one in --quick): another user's job taking a core for
                # a while halves a 2-worker run.
                r["pipe_2"], _, r["cpu_2"], r["busy_2"] = min(
                    pipeline_run(env, url, paths, 2, **b.env()) for _ in range(1 if quick else 2))
                log(f"dlib builds: {b.name}: 2 workers {r['pipe_2']:.1f}s "
                    f"({r['busy_2']:.2f} cores busy on the machine)")
                results[b.name] = r
        for b in chosen:
            spied[b.name] = dict((part, share) for part, _, share in profile(
                CACHE / f"py-spy-{b.name}.txt", **b.env()))
            log(f"dlib builds: {b.name}: py-spy " + ", ".join(
                f"{p} {x * 100:.1f}%" for p, x in spied[b.name].items()))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    reference = results["dlib-bin"]["loop_b"]
    for b in chosen:
        r = results[b.name]
        ratio = reference / r["pipe_2"]
        rows.append([
            f"{b.name} ({b.what})", f"{r['detect']:.1f}", f"{r['encode_ms']:.0f}",
            f"{r['loop_b']:.1f}", f"{r['loop_a']:.1f} (CPU {r['loop_a_cpu']:.1f} s)",
            f"{r['pipe_1']:.1f} ({(r['pipe_1'] / r['loop_a'] - 1) * 100:+.0f}% vs (a); worker "
            f"CPU {r['cpu_1']:.1f} s)",
            f"{r['pipe_2']:.1f} (workers {r['cpu_2'] / r['pipe_2']:.2f} cores of "
            f"{r['busy_2']:.2f} busy)",
            f"**{ratio:.2f}×** ({r['loop_b'] / r['pipe_2']:.2f}×)",
            verdict(ratio >= GOAL),
            "prebuilt" if b.build_seconds is None else f"{b.build_seconds / 60:.1f} min",
            f"{b.wheel.stat().st_size / 1e6:.1f} MB"])
    section.table(["build", "detect s (26 photos ≤ 1024 px, 1 thread)", "encode ms / face",
                   "plain loop (b) full res s", "plain loop (a) s", "service, 1 worker s",
                   "service, 2 workers s",
                   "end to end: loop (b) with dlib-bin / 2 workers (same build's loop (b))",
                   f"≥ {GOAL:.0f}×", "build time", "wheel size"], rows)
    n = len(paths)
    section.note(f"Run on {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores. "
                 f"One run, in this order for each build: detect/encode probe, loop (b), "
                 f"loop (a), service with 1 then 2 workers (2 workers: the faster of two "
                 f"runs). Loops (a) and (b) and the service "
                 f"go over {n} distinct JPEGs derived from the 26 shared photos "
                 f"(throughput.py's set); loop (a) detects on a copy scaled to {max_side} px "
                 f"as the worker does. Load average (1, 5, 15 min) before: {load_before}; "
                 f"after: {load_after} (2 cores shared with other users' test runs: a load "
                 f"above 2 means the run was short of CPU). Loop (b) runs with OpenBLAS's "
                 f"default threads (as a user runs it); loop (a), the probe and the workers "
                 f"with one (the worker's default now), so that (a) and the 1-worker service "
                 f"compare like for like. Build time: "
                 f"scripts/fast-dlib.sh's own record (.cache/wheels/build.txt).")
    overhead = {b.name: results[b.name]["cpu_1"] / results[b.name]["loop_a_cpu"] - 1
                for b in chosen}
    ideal = {b.name: reference / (results[b.name]["pipe_1"] / 2) for b in chosen}
    section.note("The worker's overhead over the in-process loop, in CPU (what it adds, "
                 "whatever else the machine runs): the 1-worker service's worker process "
                 "against loop (a): " + "; ".join(
                     f"{name} {x * 100:+.1f}% (≤ 5%: {verdict(x <= 0.05)})"
                     for name, x in overhead.items())
                 + ". In wall time it is larger: the worker waits for a core while rest, "
                 "RabbitMQ and Redis (and other users) run. Two workers could at best run "
                 "at twice the 1-worker rate: " + "; ".join(
                     f"{name} {x:.2f}× loop (b) with dlib-bin" for name, x in ideal.items())
                 + " — the ceiling of the end-to-end ratio on 2 cores with these builds.")
    if "fast" in results:
        fast, bin_ = results["fast"], results["dlib-bin"]
        section.note(
            f"What limits it: the fast build encodes {bin_['encode_ms'] / fast['encode_ms']:.1f}× "
            f"faster ({bin_['encode_ms']:.0f} → {fast['encode_ms']:.0f} ms a face: OpenBLAS), "
            f"but detects no faster than dlib-bin ({bin_['detect']:.1f} → "
            f"{fast['detect']:.1f} s: dlib-bin, built by GCC 14 with -mavx, already detects as "
            f"fast as GCC 12 does with AVX2; issue 18's table), and detection is what is "
            f"left: about 80% of a fast-build worker's busy samples (below). ≥ {GOAL:.0f}× "
            f"would need the ceiling above to rise, i.e. cheaper detection (a smaller "
            f"DETECT_MAX_SIDE, README's bench/max_side.py table), not a quieter worker.")
    parts = [name for name, _ in PROFILE_PARTS] + ["other"]

    def beyond(name: str) -> str:
        share = 1 - spied[name].get(parts[0], 0) - spied[name].get(parts[1], 0)
        return f"**{share * 100:.1f}%**"
    section.table(["py-spy: a worker's busy samples (1 worker, the same photos)",
                   *[b.name for b in chosen]],
                  [[part, *[f"{spied[b.name].get(part, 0) * 100:.1f}%" for b in chosen]]
                   for part in parts]
                  + [["**beyond detect + encode** (all but the first two rows)",
                      *[beyond(b.name) for b in chosen]]])
    section.note("`python bench/throughput.py --py-spy OUT` records the same for the venv's "
                 "dlib (py-spy record --format raw: folded stacks in OUT). A sample counts "
                 "for the first row whose frame is on its stack, innermost first; py-spy "
                 "sees Python threads only (OpenBLAS's own threads are not in it: the "
                 "worker now keeps OpenBLAS on one thread, OPENBLAS_NUM_THREADS=1 unless "
                 "set). Decode and resize are work the plain loop does too.")
    section.data.update({k: v for k, v in results.items()})
    return section


def _child_main(argv: list[str]) -> int:
    mode, *names = argv
    paths = [Path(p) for p in names]
    if mode == "probe":
        result = _probe(paths)
    elif mode == "loop-full":
        result = _loop(paths, 0)
    else:
        from facerec.settings import Settings
        result = _loop(paths, Settings().detect_max_side)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    main(run, __doc__)
