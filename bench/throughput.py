"""Benchmark 1: end-to-end throughput, REST → queue → worker(s) → Redis, against plain loops.

Distinct photos are derived from tests/data/faces in a temporary directory (each photo
re-encoded as JPEG at a few scales, so every file has its own hash). The same files go:

- (a) through a plain in-process face_recognition loop at the project's detection
  settings (detect on a copy scaled to DETECT_MAX_SIDE, encode at full resolution);
- (b) through the same loop at face_recognition's defaults (detect at full resolution);
- through the service: uploaded with POST /scan/image to a running rest, consumed by 1 or
  2 workers, committed to Redis; timed from the first upload to the last commit.

(a) and the one-worker pipeline are each run three times (once in --quick), alternately,
and the fastest run of each is kept, to damp the noise of a shared machine. CPU time per
image (the loop's process, the workers' processes) is shown too: it is far less
sensitive to other load than wall time.

    python bench/throughput.py [--quick]
    python bench/throughput.py --py-spy OUT    where one worker's time goes (py-spy)
"""

from __future__ import annotations

import http.client
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    FACES,
    Section,
    busy_cores,
    cpu_seconds,
    log,
    machine_jiffies,
    main,
    services,
    start_rest,
    start_worker,
    verdict,
)
from facerec import broker as amqp
from facerec.messages import sha256_hex
from facerec.settings import Settings
from facerec.store import META, image_key
from tests.services import Env, photos, reset_vhost

SCALES_FULL = (1.0, 0.85)
SCALES_QUICK = (1.0,)


def derive_photos(directory: Path, scales: tuple[float, ...], every: int = 1) -> list[Path]:
    """Re-encode every `every`-th shared photo as JPEG at each scale; all files distinct."""
    out = []
    for photo in photos()[::every]:
        img = ImageOps.exif_transpose(Image.open(FACES / photo.path)).convert("RGB")
        for k, scale in enumerate(scales):
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            scaled = img if scale == 1.0 else img.resize(size, Image.Resampling.LANCZOS)
            path = directory / f"{photo.path.replace('/', '_').rsplit('.', 1)[0]}-{k}.jpg"
            scaled.save(path, "JPEG", quality=92)
            out.append(path)
    hashes = {sha256_hex(p.read_bytes()) for p in out}
    assert len(hashes) == len(out), "derived photos are not all distinct"
    return out


def _face_recognition():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import face_recognition
    return face_recognition


def plain_loop(paths: list[Path], max_side: int) -> tuple[float, int, float, float]:
    """The lab's loop: load, locate, encode each photo.

    Returns (seconds, faces found, CPU s, cores busy on the whole machine meanwhile).
    """
    fr = _face_recognition()
    faces = 0
    jiffies = machine_jiffies()
    cpu = time.process_time()
    start = time.perf_counter()
    for path in paths:
        image = fr.load_image_file(str(path))
        height, width = image.shape[:2]
        scale, small = 1.0, image
        if max_side and max(height, width) > max_side:
            scale = max_side / max(height, width)
            small = np.asarray(Image.fromarray(image).resize(
                (round(width * scale), round(height * scale)), Image.Resampling.BILINEAR,
                reducing_gap=2.0))
        boxes = [(round(t / scale), round(r / scale), round(b / scale), round(lft / scale))
                 for t, r, b, lft in fr.face_locations(small, number_of_times_to_upsample=1)]
        faces += len(fr.face_encodings(image, known_face_locations=boxes))
    return (time.perf_counter() - start, faces, time.process_time() - cpu,
            busy_cores(jiffies, machine_jiffies()))


def consumers(settings: Settings) -> int:
    b = amqp.Broker(settings)
    try:
        return b.call(lambda ch: int(ch.queue_declare(amqp.IMAGE_QUEUE, passive=True)
                                     .method.consumer_count))
    except Exception:  # noqa: BLE001 - the queue does not exist until a worker declares it
        return 0
    finally:
        b.close()


def pipeline_run(env: Env, url: str, paths: list[Path], workers: int, **worker_env: str
                 ) -> tuple[float, int, float, float]:
    """Upload every photo, wait for every commit (workers started with `worker_env` added
    to their environment).

    Returns (seconds, faces found, workers' CPU s, cores busy on the machine meanwhile).
    """
    env.redis.flush()
    reset_vhost(env.settings)
    procs = [start_worker(env, **worker_env) for _ in range(workers)]
    deadline = time.monotonic() + 120
    while consumers(env.settings) < workers:
        assert time.monotonic() < deadline, "workers did not start consuming"
        assert all(p.poll() is None for p in procs), "a worker exited at start-up"
        time.sleep(0.1)
    bodies = [(p.name, p.read_bytes()) for p in paths]
    keys = [image_key(sha256_hex(data)) for _, data in bodies]
    meta = env.redis.client(META)
    cpu = sum(cpu_seconds(p.pid) for p in procs)
    jiffies = machine_jiffies()
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    start = time.perf_counter()
    for name, data in bodies:
        conn.request("POST", f"/scan/image/{name}", body=data,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    conn.close()
    deadline = time.monotonic() + 600
    while True:
        pipe = meta.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "status")
        statuses = pipe.execute()
        if all(s in ("done", "failed") for s in statuses):
            break
        assert time.monotonic() < deadline, "pipeline did not finish"
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu
    busy = busy_cores(jiffies, machine_jiffies())
    assert "failed" not in statuses
    pipe = meta.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "faces")
    faces = sum(len(eval_boxes(f)) for f in pipe.execute())
    for p in procs:
        env.stop(p)
    env.procs[:] = [p for p in env.procs if p not in procs]
    return seconds, faces, cpu, busy


def eval_boxes(text: str | None) -> list[object]:
    import json
    return json.loads(text) if text else []


def run(quick: bool = False) -> Section:
    section = Section("1. End-to-end throughput", "python bench/throughput.py"
                      + (" --quick" if quick else ""))
    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as tmp:
        paths = derive_photos(Path(tmp), SCALES_QUICK if quick else SCALES_FULL,
                              every=2 if quick else 1)
        n = len(paths)
        megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths) / 1e6
        log(f"throughput: {n} distinct photos ({megapixels:.0f} MP)")
        max_side = Settings().detect_max_side
        rounds = 1 if quick else 3
        with services() as env:
            url = start_rest(env)
            loop_a, pipe_1 = [], []
            for _ in range(rounds):
                loop_a.append(plain_loop(paths, max_side))
                log(f"throughput: loop (a) {loop_a[-1][0]:.1f}s")
                pipe_1.append(pipeline_run(env, url, paths, 1))
                log(f"throughput: pipeline, 1 worker {pipe_1[-1][0]:.1f}s")
            pipe_2 = pipeline_run(env, url, paths, 2)
            log(f"throughput: pipeline, 2 workers {pipe_2[0]:.1f}s")
        loop_b = plain_loop(paths, 0)
        log(f"throughput: loop (b) {loop_b[0]:.1f}s")
    a, p1 = min(loop_a), min(pipe_1)
    rate = {"a": n / a[0], "b": n / loop_b[0], "1": n / p1[0], "2": n / pipe_2[0]}
    slower = p1[0] / a[0] - 1
    cpu_slower = min(x[2] for x in pipe_1) / min(x[2] for x in loop_a) - 1

    def cpu(x: tuple[float, int, float, float]) -> str:
        return f"{x[2] / n * 1000:.0f}"

    def cores(x: tuple[float, int, float, float]) -> str:
        return f"{x[2] / x[0]:.2f} / {x[3]:.2f}"
    rows = [
        ["plain face_recognition loop (a): project detection settings (max side "
         f"{max_side})", f"{a[0]:.1f}", f"{rate['a']:.2f}", cpu(a), cores(a), a[1], "reference",
         "–"],
        ["plain face_recognition loop (b): library defaults (full resolution)",
         f"{loop_b[0]:.1f}", f"{rate['b']:.2f}", cpu(loop_b), cores(loop_b), loop_b[1],
         f"(a) is {rate['a'] / rate['b']:.2f}× (b)", "–"],
        ["pipeline, 1 worker", f"{p1[0]:.1f}", f"{rate['1']:.2f}", cpu(p1), cores(p1), p1[1],
         f"{slower * 100:+.1f}% wall time vs (a) ({cpu_slower * 100:+.1f}% CPU); "
         f"{rate['1'] / rate['b']:.2f}× (b)",
         f"≤ 5% slower than (a): {verdict(slower <= 0.05)}; ≥ 2.5× (b): "
         f"{verdict(rate['1'] / rate['b'] >= 2.5)}"],
        ["pipeline, 2 workers", f"{pipe_2[0]:.1f}", f"{rate['2']:.2f}", cpu(pipe_2),
         cores(pipe_2), pipe_2[1],
         f"{rate['2'] / rate['1']:.2f}× 1 worker; {rate['2'] / rate['b']:.2f}× (b)",
         f"≥ 1.8× 1 worker: {verdict(rate['2'] / rate['1'] >= 1.8)}"],
    ]
    section.table(["run", "seconds", "images/s", "CPU ms / image",
                   "cores used by it / busy on the machine", "faces found", "ratio", "target"],
                  rows)
    runs = ", ".join(f"{x[0]:.1f}" for x in loop_a)
    runs1 = ", ".join(f"{x[0]:.1f}" for x in pipe_1)
    section.note(f"{n} distinct JPEGs ({megapixels:.0f} megapixels) derived from "
                 f"{'13 of ' if quick else ''}the 26 shared photos at scales "
                 f"{', '.join(map(str, SCALES_QUICK if quick else SCALES_FULL))}. "
                 f"Pipeline time runs from the first upload to the last commit (workers "
                 f"started and consuming beforehand; rest, Redis and RabbitMQ on the same "
                 f"2 cores); its CPU columns count the worker processes only. "
                 f"\"Busy on the machine\" "
                 f"counts every process (other users' too) from /proc/stat: when it nears 2 "
                 f"while the run itself uses less, the run was short of CPU. Runs of (a): "
                 f"{runs} s; of the 1-worker pipeline: {runs1} s (fastest kept).")
    section.note(f"The 1-worker pipeline does the work of loop (a) plus queueing and "
                 f"matching, so it cannot beat (a); (a) is {rate['a'] / rate['b']:.2f}× (b) "
                 f"here, which caps the 1-worker pipeline below the 2.5× target at "
                 f"DETECT_MAX_SIDE={max_side}. Reaching 2.5× with one worker needs cheaper "
                 f"detection: the README's bench/max_side.py table has 640 at 2.6× full "
                 f"size, but finding 215/270 instead of 261/270 faces at a third of their "
                 f"size — a settings decision, not a bug.")
    section.data["cpu_slower"] = cpu_slower
    section.data.update(rate)
    return section


# Where a worker's samples fall, by the first of these frames (innermost first) found in a
# stack; the rest is "other".
PROFILE_PARTS = (
    ("detect (dlib HOG)", ("face_locations", "_raw_face_locations")),
    ("encode (dlib ResNet)", ("face_encodings", "_raw_face_landmarks")),
    ("resize for detection", ("resize (PIL",)),
    ("decode (Pillow)", ("decode (facerec/faces.py", "_decode (facerec/faces.py")),
    ("match (index search)", ("search_each",)),
    ("commit (Redis)", ("commit (facerec/store.py",)),
    ("index sync / load", ("sync (facerec/pipeline.py", "load_index")),
    ("broker (pika)", ("pika/",)),
    ("logging", ("logging/",)),
)


def profile(out: Path, rate: int = 250, **worker_env: str) -> list[tuple[str, int, float]]:
    """py-spy record on one worker processing the photos (after its start-up): folded
    stacks in `out`; returns (part, samples, share of the busy samples). py-spy samples
    the Python threads only (a native thread, such as OpenBLAS's, is not seen)."""
    import shutil
    import subprocess
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as tmp, services() as env:
        paths = derive_photos(Path(tmp), SCALES_FULL)
        url = start_rest(env)
        env.redis.flush()
        reset_vhost(env.settings)
        proc = start_worker(env, **worker_env)
        deadline = time.monotonic() + 120
        while consumers(env.settings) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, "worker did not start"
            time.sleep(0.1)
        recorder = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--rate",
                                     str(rate), "--format", "raw", "--output", str(out),
                                     "--nonblocking"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT)
        time.sleep(1.0)
        bodies = [(p.name, p.read_bytes()) for p in paths]
        keys = [image_key(sha256_hex(data)) for _, data in bodies]
        u = urlparse(url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        for name, data in bodies:
            conn.request("POST", f"/scan/image/{name}", body=data,
                         headers={"Content-Type": "application/octet-stream"})
            conn.getresponse().read()
        meta = env.redis.client(META)
        while not all(meta.hget(k, "status") in ("done", "failed") for k in keys):
            time.sleep(0.05)
        recorder.send_signal(2)  # SIGINT: py-spy writes the file and exits
        recorder.wait(60)
    totals: dict[str, int] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[::-1]  # innermost first
        part = next((name for frame in frames for name, keys in PROFILE_PARTS
                     if any(k in frame for k in keys)), "other")
        totals[part] = totals.get(part, 0) + int(count)
    busy = sum(totals.values()) or 1
    return sorted(((p, n, n / busy) for p, n in totals.items()), key=lambda x: -x[1])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--py-spy":
        for part, samples, share in profile(Path(sys.argv[2])):
            print(f"{part:28} {samples:7d} {share * 100:6.1f}%")
        sys.exit(0)
    main(run, __doc__)
