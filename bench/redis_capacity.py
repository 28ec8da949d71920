"""What Redis holds per image, per face, per name and per match: capacity for `maxmemory`.

    python bench/redis_capacity.py [--images 2000]

Writes images the way the service does — `Store.prepare` (rest, before the publish) then
`Store.commit` (the worker) — into a private redis-server, and divides the growth of
`used_memory` by the number of images. Each row changes one thing from the first (one
face, one 24-character name, no match), so the differences are the cost of a face, of a
name given to an already processed image, and of a match (both sides of it).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from facerec.faces import ENCODING_DIM, ENCODING_DTYPE  # noqa: E402
from facerec.settings import Settings  # noqa: E402
from facerec.store import Match, Store  # noqa: E402
from tests.services import RedisServer  # noqa: E402


@dataclass(frozen=True)
class Shape:
    label: str
    faces: int = 1
    names: int = 1
    matches: int = 0
    url: bool = False


SHAPES = (
    Shape("1 face, 1 name (the reference)"),
    Shape("no face, 1 name", faces=0),
    Shape("4 faces, 1 name", faces=4),
    Shape("1 face, 5 names", names=5),
    Shape("1 face, 1 name, 10 matches", matches=10),
    Shape("1 face, scanned by URL (name = URL, URL cache entry)", url=True),
)


def used_memory(server: RedisServer) -> int:
    return int(server.client(0).info("memory")["used_memory"])


def fill(store: Store, shape: Shape, images: int, rng: np.random.Generator) -> None:
    done: list[str] = []
    for i in range(images):
        h = hashlib.sha256(f"{shape.label}/{i}".encode()).hexdigest()
        names = [f"https://photos.example.org/{i:06d}/{j}.jpg" if shape.url
                 else f"photos/{i:06d}-{j:02d}.jpeg" for j in range(shape.names)]
        ticket = uuid.uuid4().hex
        store.prepare(h, names[0], ticket, names[0] if shape.url else "")
        encodings = rng.normal(0, 0.07, (shape.faces, ENCODING_DIM)).astype(ENCODING_DTYPE)
        boxes = [(10, 60, 60, 10)] * shape.faces
        matches = [Match(m, 0.42) for m in done[-shape.matches:]] if shape.matches else []
        result = store.commit(h, names[:1], encodings, boxes, matches,
                              store.face_log_state(), ticket)
        assert result.status == "ok", result
        for name in names[1:]:  # more names for a processed image: what rest records
            assert store.prepare(h, name, uuid.uuid4().hex)
        done.append(h)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    for shape in SHAPES:
        server = RedisServer().start()
        try:
            store = Store(Settings.from_env({}, redis_port=server.port))
            before = used_memory(server)
            fill(store, shape, args.images, rng)
            rows.append((shape, (used_memory(server) - before) / args.images))
            store.close()
        finally:
            server.close()
    ref = rows[0][1]
    print(f"Redis memory per image ({args.images} images per row, `used_memory` growth):")
    print()
    print("| images of this shape | bytes per image | difference from the reference |")
    print("|---|---|---|")
    for shape, per_image in rows:
        diff = per_image - ref
        what = ""
        if shape.faces != 1:
            what = f" ({diff / (shape.faces - 1):+,.0f} per face)"
        elif shape.names != 1:
            what = f" ({diff / (shape.names - 1):+,.0f} per name)"
        elif shape.matches:
            what = f" ({diff / shape.matches:+,.0f} per match)"
        print(f"| {shape.label} | {per_image:,.0f} | {diff:+,.0f}{what} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
