"""What one hostile upload costs: time and peak memory of validation (rest) and of
decoding + detection (the worker), for each class of tests/hostile.py and for the largest
file of each format the limits allow.

    python bench/hostile_bounds.py                  the current facerec/faces.py
    python bench/hostile_bounds.py --ref 8bc240b    faces.py as of a commit (before/after)
    python bench/hostile_bounds.py --service        a running rest: concurrent large uploads
                                                    (peak memory) and slow clients (probes)

Each case runs in a process of its own (so peaks do not mix); the peak is the growth of
the process's resident high-water mark over its size before the call (VmHWM, reset
through /proc/self/clear_refs), with the input already built. A case still running after
--timeout seconds is reported as such. `estimate` is what facerec.faces.inspect predicts
(check: validation; decode: the worker), which rest reserves from its decoder memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from tests import hostile  # noqa: E402

MAX_PIXELS = 50_000_000  # the default MAX_IMAGE_PIXELS
CAP = 20 * 1024 * 1024  # the default MAX_UPLOAD_BYTES
SIDE = 7000  # 49 M pixels: just under MAX_IMAGE_PIXELS

CASES: dict[str, Callable[[], bytes]] = {
    # CPU: files whose decoding work is out of proportion to their size.
    "JPEG, 10,000 tiny scans, 2000x2000": lambda: hostile.many_scans_jpeg(2000, 2000, 10_000),
    "JPEG, 40,000 tiny scans, 4000x4000": lambda: hostile.many_scans_jpeg(4000, 4000, 40_000),
    "JPEG, 4 M empty segments": lambda: hostile.many_segments_jpeg(4_000_000),
    "PNG, 1 M empty IDAT chunks": lambda: hostile.many_chunks_png(1_000_000),
    "PNG, 1 M tEXt chunks": lambda: hostile.many_chunks_png(1_000_000, b"tEXt"),
    "BMP, 20 MB of RLE8 runs": lambda: hostile.rle_bmp(4000, 4000, CAP - 2000),
    "TIFF, 20,000 strips sharing 1 MB": lambda: hostile.shared_strips_tiff(1000, 20_000,
                                                                          1 << 20),
    # The largest allowed (or most expensive still accepted) of each format.
    "JPEG, 100 scans (the limit), 4000x4000": lambda: hostile.many_scans_jpeg(4000, 4000, 90),
    "JPEG baseline 7000x7000": lambda: hostile.flat("JPEG", SIDE, SIDE, quality=50),
    "JPEG progressive 4:4:4 7000x7000": lambda: hostile.flat(
        "JPEG", SIDE, SIDE, progressive=True, subsampling=0, quality=50),
    "PNG RGBA 7000x7000": lambda: hostile.flat("PNG", SIDE, SIDE, "RGBA"),
    "PNG RGBA 5000x5000": lambda: hostile.flat("PNG", 5000, 5000, "RGBA"),
    "WebP lossless 7000x7000": lambda: hostile.lossless_webp(SIDE, SIDE),
    "WebP lossless 3500x3500": lambda: hostile.lossless_webp(3500, 3500),
    "TIFF RGB deflate 7000x7000": lambda: hostile.flat("TIFF", SIDE, SIDE,
                                                        compression="tiff_adobe_deflate"),
    "BMP 1-bit 7000x7000": lambda: hostile.flat("BMP", SIDE, SIDE, "1"),
}


def _faces_module(ref: str | None) -> ModuleType:
    if ref is None:
        from facerec import faces
        return faces
    source = subprocess.run(["git", "show", f"{ref}:facerec/faces.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "faces_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("faces_at_ref", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["faces_at_ref"] = module
    spec.loader.exec_module(module)
    return module


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def _measure(fn: Callable[[], object]) -> dict[str, object]:
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current size
    base = _kib("VmRSS")
    start = time.perf_counter()
    try:
        fn()
        outcome = "accepted"
    except Exception as exc:  # noqa: BLE001 - the outcome is the measurement
        outcome = f"{type(exc).__name__}: {exc}"
    return {"outcome": outcome, "seconds": time.perf_counter() - start,
            "peak_mib": (_kib("VmHWM") - base) / 1024}


def run_case(name: str, ref: str | None) -> dict[str, object]:
    faces = _faces_module(ref)
    data = CASES[name]()
    result: dict[str, object] = {"bytes": len(data)}
    if hasattr(faces, "MemoryBudget"):  # as rest validates: within its decoder memory
        from rest.scan import DECODE_MEMORY
        budget = faces.MemoryBudget(DECODE_MEMORY)
        result["check"] = _measure(lambda: faces.validate(data, MAX_PIXELS, budget))
    else:
        result["check"] = _measure(lambda: faces.validate(data, MAX_PIXELS))
    if result["check"]["outcome"] == "accepted":  # type: ignore[index]
        faces.load_models()

        def worker() -> None:
            rgb = faces.decode(data, MAX_PIXELS)
            faces.find_faces(rgb, "hog", 1024, 1)
        result["worker"] = _measure(worker)
    if hasattr(faces, "inspect"):
        try:
            info = faces.inspect(data, MAX_PIXELS)
            result["estimate"] = [info.check_bytes / 2**20, info.decode_bytes / 2**20]
        except Exception:  # noqa: BLE001 - refused from the structure: no estimate
            pass
    return result


def _cell(m: dict[str, object] | None) -> str:
    if m is None:
        return "–"
    outcome = str(m["outcome"])
    short = "accepted" if outcome == "accepted" else "refused: " + outcome.split(": ", 1)[-1]
    return f"{short[:58]}; {m['seconds']:.2f} s; {m['peak_mib']:.0f} MiB"


def _counts(codes: list[int]) -> str:
    return ", ".join(f"{codes.count(c)}x {c or 'no answer'}" for c in sorted(set(codes)))


def _service() -> None:
    """rest under gunicorn (one process, 8 threads): the peak of concurrent worst-case
    uploads, and /healthz and /match while slow clients hold every slot they can."""
    import concurrent.futures
    import socket

    from bench.common import services
    from tests.services import Reply, gunicorn_workers, memory_kib
    from tests.services import http as plain_http

    def http(*args: object, **kwargs: object) -> Reply:
        try:
            return plain_http(*args, **kwargs)  # type: ignore[arg-type]
        except OSError:  # no answer within the timeout
            return Reply(0, b"", {})

    with services() as env:
        rest = env.start_rest(WEB_CONCURRENCY="1", WEB_THREADS="8", FETCH_TIMEOUT="10",
                              FETCH_ALLOW_NETWORKS="127.0.0.0/8")
        (worker,) = gunicorn_workers(env.procs[0].pid)
        print("| rest, 1 process x 8 threads | answers | time | process peak |")
        print("|---|---|---|---|")
        for label, make in (
                ("8 concurrent PNG RGBA 5000x5000 (95 MiB each to validate)",
                 lambda i: hostile.encode(Image.new("RGBA", (5000, 5000),
                                                            (i, i, i, 255)), "PNG")),
                ("8 concurrent lossless WebP 3500x3500 (187 MiB each)",
                 lambda i: hostile.encode(Image.new("RGB", (3500, 3500), (i, i, i)),
                                          "WEBP", lossless=True, method=0)),
                ("8 concurrent lossless WebP 7000x7000 (750 MiB each)",
                 lambda i: hostile.encode(Image.new("RGB", (7000, 7000), (i, i, i)),
                                          "WEBP", lossless=True, method=0))):
            bodies = [make(i) for i in range(8)]
            Path(f"/proc/{worker}/clear_refs").write_text("5")
            base = memory_kib(worker, "VmRSS")
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                codes = sorted(pool.map(lambda b: http("POST", f"{rest}/scan/image/x", b,
                                                       timeout=300).status, bodies))
            seconds = time.perf_counter() - start
            peak = (memory_kib(worker) - base) / 1024
            print(f"| {label} | {_counts(codes)}"
                  f" | {seconds:.1f} s | +{peak:.0f} MiB |", flush=True)
        port = int(rest.rsplit(":", 1)[1])
        held = []
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /match/" + b"0" * 64 + b" HTTP/1.1\r\nX-Slow: ")
            held.append(s)
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/a.jpg"
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(http, "POST", f"{rest}/scan/url", None, {"url": url}, None,
                                 60) for _ in range(16)]
            time.sleep(1)
            for path in ("/healthz", f"/match/{'0' * 64}"):
                start = time.perf_counter()
                status = http("GET", f"{rest}{path}", timeout=20).status or "no answer"
                print(f"| 40 trickled heads + 16 /scan/url to a silent server: GET "
                      f"{path.split('/')[1]} | {status} | "
                      f"{(time.perf_counter() - start) * 1000:.0f} ms | |", flush=True)
            codes = sorted(c.result().status for c in calls)
        print(f"| ... the 16 /scan/url | {_counts(codes)} | | |")
        silent.close()
        for s in held:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="measure facerec/faces.py as of this git commit")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--service", action="store_true",
                        help="measure a running rest instead (concurrency, slow clients)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.service:
        _service()
        return 0
    if args.case:
        print(json.dumps(run_case(args.case, args.ref)))
        return 0
    title = f"faces.py at {args.ref}" if args.ref else "faces.py of the working tree"
    print(f"{title}: validation (rest) | decode + detect (worker) | estimate check/decode")
    print()
    print("| input | bytes | validation (rest) | worker | estimate MiB |")
    print("|---|---|---|---|---|")
    for name in CASES:
        if args.only and args.only not in name:
            continue
        cmd = [sys.executable, __file__, "--case", name] + (["--ref", args.ref] if args.ref
                                                            else [])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                 check=True).stdout
        except subprocess.TimeoutExpired:
            print(f"| {name} | | still running after {args.timeout:.0f} s | | |", flush=True)
            continue
        r = json.loads(out.strip().splitlines()[-1])
        est = r.get("estimate")
        print(f"| {name} | {r['bytes']:,} | {_cell(r['check'])} | {_cell(r.get('worker'))} | "
              f"{f'{est[0]:.0f} / {est[1]:.0f}' if est else '–'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
