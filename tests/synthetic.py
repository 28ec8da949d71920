"""Synthetic face encodings: identities as random centres, faces as noisy copies.

Centres lie about 1.1 apart and faces of one identity about 0.4 apart, like dlib's
encodings, so at tolerance 0.6 faces match within an identity and (almost) never across.
"""

from __future__ import annotations

import itertools

import numpy as np

from facerec.faces import Faces
from facerec.matcher import exact_distances


def identities(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0, 0.07, size=(n, 128))


def image_faces(rng: np.random.Generator, centres: np.ndarray, who: list[int]) -> Faces:
    enc = centres[who] + rng.normal(0, 0.025, size=(len(who), 128))
    return Faces([(0, 10, 10, 0)] * len(who), enc)


def brute_force_pairs(images: dict[str, np.ndarray], tol: float = 0.6) -> set[frozenset[str]]:
    """Pairs of images with any two faces within tol (float32 storage, float64 distance)."""
    pairs = set()
    for a, b in itertools.combinations(sorted(images), 2):
        ea, eb = images[a].astype(np.float32), images[b].astype(np.float32)
        if len(ea) and len(eb) and min(exact_distances(eb, f).min() for f in ea) <= tol:
            pairs.add(frozenset((a, b)))
    return pairs


def pairs_of(db4: dict[str, object]) -> set[frozenset[str]]:
    out = set()
    for h, others in db4.items():
        for o in others:  # type: ignore[attr-defined]
            out.add(frozenset((h, o.decode() if isinstance(o, bytes) else o)))
    return out
