"""Accepted means processed: a seeded, bounded differential fuzz of the accepted formats.

Seeds are small real photos in every accepted format and mode (with and without EXIF,
interlaced, 16-bit, palette, CMYK...); each case mutates one seed (bit flips, overwritten
or inserted bytes, truncation, a duplicated slice, a header field set to a boundary, the
EXIF block replaced by garbage). Whatever `validate` (rest) accepts, the worker's
processing (`decode` + `find_faces`, with face_recognition imported as in the worker) must
accept or refuse as InvalidImage — never another exception; and `validate` itself raises
nothing but InvalidImage (anything else would be a 500).

The seed and the case count are fixed: a failure names its case, which reproduces with
`cases(SEED)[i]`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from facerec import faces
from facerec.errors import InvalidImage
from tests.hostile import encode, photo, png_chunk

SEED = 20_240_601
CASES = 400
MAX_PIXELS = 50_000_000


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def seeds() -> list[tuple[str, bytes]]:
    img = photo((40, 30))
    rgba = img.convert("RGBA")
    grey16 = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    png = encode(img, "PNG")
    idat = png.index(b"IDAT") - 4
    out = [
        ("jpeg", encode(img, "JPEG", quality=80)),
        ("jpeg progressive", encode(img, "JPEG", progressive=True)),
        ("jpeg exif 6", encode(img, "JPEG", exif=_exif(6))),
        ("jpeg grey", encode(img.convert("L"), "JPEG")),
        ("jpeg cmyk", encode(img.convert("CMYK"), "JPEG")),
        ("jpeg 4:4:4 restarts", encode(img, "JPEG", subsampling=0, restart_marker_blocks=1)),
        ("png rgb", png),
        ("png exif 8", png[:idat] + png_chunk(b"eXIf", _exif(8)) + png[idat:]),
        ("png rgba interlaced", encode(rgba, "PNG", interlace=1)),
        ("png palette", encode(img.convert("P"), "PNG")),
        ("png 16-bit grey", encode(grey16, "PNG")),
        ("png 1-bit", encode(img.convert("1"), "PNG")),
        ("webp lossy", encode(img, "WEBP", quality=70)),
        ("webp lossless alpha", encode(rgba, "WEBP", lossless=True)),
        ("webp exif 3", encode(img, "WEBP", exif=_exif(3))),
        ("bmp 24-bit", encode(img, "BMP")),
        ("bmp palette", encode(img.convert("P"), "BMP")),
        ("tiff raw", encode(img, "TIFF")),
        ("tiff lzw exif 6", encode(img, "TIFF", compression="tiff_lzw", exif=_exif(6))),
        ("tiff deflate cmyk", encode(img.convert("CMYK"), "TIFF",
                                     compression="tiff_adobe_deflate")),
        ("tiff packbits grey", encode(img.convert("L"), "TIFF", compression="packbits")),
        ("tiff 16-bit grey", encode(grey16, "TIFF")),
        ("tiff group4", encode(img.convert("1"), "TIFF", compression="group4")),
    ]
    return out


def _exif_span(data: bytes) -> tuple[int, int] | None:
    """Where the EXIF block sits (JPEG APP1, PNG eXIf, WebP EXIF), if any."""
    for tag, skip in ((b"Exif\0\0", 6), (b"eXIf", 4), (b"EXIF", 8)):
        at = data.find(tag)
        if at >= 0:
            return at + skip, min(len(data), at + skip + 64)
    return None


Mutation = Callable[[random.Random, bytearray], str]


def flip_bits(rng: random.Random, b: bytearray) -> str:
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return "bit flips"


def overwrite(rng: random.Random, b: bytearray) -> str:
    at = rng.randrange(len(b))
    b[at:at + 16] = rng.randbytes(len(b[at:at + 16]))
    return f"16 bytes overwritten at {at}"


def truncate(rng: random.Random, b: bytearray) -> str:
    at = rng.randrange(1, len(b))
    del b[at:]
    return f"cut at {at}"


def insert(rng: random.Random, b: bytearray) -> str:
    at = rng.randrange(len(b))
    b[at:at] = rng.randbytes(rng.randint(1, 32))
    return f"bytes inserted at {at}"


def duplicate(rng: random.Random, b: bytearray) -> str:
    at = rng.randrange(len(b))
    piece = b[at:at + rng.randint(1, 256)]
    b[at:at] = piece
    return f"slice duplicated at {at}"


def boundary(rng: random.Random, b: bytearray) -> str:
    at = rng.randrange(min(len(b), 200))
    width = rng.choice((2, 4))
    b[at:at + width] = rng.choice((b"\0", b"\xff", b"\x7f")) * width
    return f"header field at {at} set to a boundary"


def garbage_exif(rng: random.Random, b: bytearray) -> str:
    span = _exif_span(bytes(b))
    if span is None:
        return overwrite(rng, b)
    start, end = span
    b[start:end] = rng.choice((b"XX*\0\x08\0\0\0", b"II*\0\xff\xff\xff\x7f", b"MM\0*",
                               rng.randbytes(end - start)))[:end - start].ljust(end - start,
                                                                                 b"\0")
    return "EXIF block replaced"


MUTATIONS: tuple[Mutation, ...] = (flip_bits, overwrite, truncate, insert, duplicate, boundary,
                                   garbage_exif)


def cases(seed: int = SEED, n: int = CASES) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    base = seeds()
    out = []
    for i in range(n):
        name, data = base[i % len(base)]
        b = bytearray(data)
        how = rng.choice(MUTATIONS)(rng, b)
        out.append((f"case {i}: {name}, {how}", bytes(b)))
    return out


def process(data: bytes) -> None:
    """What the worker does with the bytes, up to the commit."""
    rgb = faces.decode(data, MAX_PIXELS)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    faces.find_faces(rgb, "hog", 1024, 1)


@pytest.fixture(scope="module")
def worker_like() -> None:
    # As in the worker: face_recognition imported (it sets Pillow's global switches).
    faces.load_models()


def test_every_seed_is_accepted_and_processed(worker_like: None) -> None:
    for name, data in seeds():
        assert faces.validate(data, MAX_PIXELS), name
        process(data)


def test_whatever_validation_accepts_processing_accepts_or_refuses_as_an_invalid_image(
        worker_like: None) -> None:
    accepted = refused = 0
    failures = []
    for name, data in cases():
        try:
            faces.validate(data, MAX_PIXELS)
        except InvalidImage:
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            failures.append(f"{name}: validation raised {exc!r}")
            continue
        accepted += 1
        try:
            process(data)
        except InvalidImage:
            pass
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            failures.append(f"{name}: accepted, then processing raised {exc!r}")
    assert failures == []
    # Both sides are exercised: the mutations neither all break nor all spare the files.
    assert accepted >= CASES // 5 and refused >= CASES // 5, (accepted, refused)
