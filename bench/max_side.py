"""Choose DETECT_MAX_SIDE: speed and match decisions on the shared photos per max side.

    python bench/max_side.py [SIDES...]     (default: 0 640 800 1024 1280; 0 = full size)

For each max side, detects and encodes all 26 photos, then compares the 325 pairwise match
decisions (tolerance 0.6) with labels.csv and with full-resolution detection. A second
table tiles each photo 3x3 (nine copies, so every face is a third of its relative size,
as in a group photo) and counts the faces still found. Prints markdown tables.
"""

from __future__ import annotations

import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from facerec import faces
from facerec.matcher import exact_distances
from facerec.settings import Settings

DEFAULTS = Settings()


def detect(img: np.ndarray, side: int) -> faces.Faces:
    return faces.find_faces(img, DEFAULTS.detection_model, side, DEFAULTS.detect_upsample)

FACES = Path(__file__).resolve().parent.parent / "tests" / "data" / "faces"


def decisions(encodings: dict[str, np.ndarray], tol: float = 0.6) -> dict[tuple[str, str], bool]:
    out = {}
    for a, b in itertools.combinations(sorted(encodings), 2):
        ea, eb = encodings[a], encodings[b]
        out[a, b] = bool(len(ea) and len(eb) and min(
            exact_distances(eb, f).min() for f in ea) <= tol)
    return out


def main() -> None:
    sides = [int(s) for s in sys.argv[1:]] or [0, 640, 800, 1024, 1280]
    with open(FACES / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    truth = {}
    ids = {r["path"]: set(r["identities"].split(";")) - {"unknown_child", "unknown_adult"}
           for r in rows}
    for a, b in itertools.combinations(sorted(ids), 2):
        truth[a, b] = bool(ids[a] & ids[b])
    faces.load_models()
    images = {r["path"]: faces.decode((FACES / r["path"]).read_bytes(), 10**9) for r in rows}
    expected_faces = {r["path"]: int(r["faces"]) for r in rows}
    results = {}
    print("| max side | seconds (26 photos) | faces found = labels | pairs = labels "
          "| pairs = full size |")
    print("|---|---|---|---|---|")
    for side in sides:
        start = time.perf_counter()
        found = {p: detect(img, side) for p, img in images.items()}
        seconds = time.perf_counter() - start
        dec = decisions({p: f.encodings for p, f in found.items()})
        results[side] = dec
        faces_ok = sum(len(found[p].boxes) == expected_faces[p] for p in found)
        agree = sum(dec[k] == truth[k] for k in truth)
        same_full = (sum(dec[k] == results[0][k] for k in truth) if 0 in results else "-")
        print(f"| {side or 'full'} | {seconds:.1f} | {faces_ok}/26 | {agree}/{len(truth)} | "
              f"{same_full}/{len(truth)} |", flush=True)

    print()
    print("| max side | tiled 3x3: faces found / expected | seconds |")
    print("|---|---|---|")
    tiled = {p: np.tile(img, (3, 3, 1)) for p, img in images.items()}
    for side in [s for s in sides if s]:
        start = time.perf_counter()
        found_n = sum(len(detect(img, side).boxes) for img in tiled.values())
        print(f"| {side} | {found_n}/{9 * sum(expected_faces.values())} | "
              f"{time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
