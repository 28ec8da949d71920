"""Image bytes in, faces out: validation and decoding (Pillow) and detection (dlib).

`validate` is cheap and used by the REST front end before anything is queued; the worker
calls `decode` then `find_faces`. dlib and its models are imported only by `find_faces`'s
module-level loader, so importing this module stays light for the REST process.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facerec.errors import InvalidImage

# A face encoding: dlib's 128 numbers, kept and compared as float32 (converted once, here).
ENCODING_DIM = 128
ENCODING_DTYPE = np.dtype("<f4")
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})
_UNDECODABLE = f"not a decodable image ({', '.join(sorted(ACCEPTED_FORMATS))})"
Box = tuple[int, int, int, int]  # top, right, bottom, left (face_recognition's order)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (no pixels yet) and refuse unknown formats and oversized images."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        # Pillow's message names an in-memory object: say it plainly instead.
        raise InvalidImage(_UNDECODABLE) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError, OSError,
            SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{_UNDECODABLE}: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidImage(f"image of {width}x{height} pixels exceeds the limit of "
                           f"{max_pixels} pixels")
    return img


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"corrupt or truncated {img.format} image: {exc}") from None


def validate(data: bytes, max_pixels: int) -> str:
    """Check that `data` decodes as an accepted image; return its format.

    JPEGs are decoded at 1/8 scale (the whole stream is still read, so truncation shows)
    to keep this fast enough for the request path.
    """
    img = _open(data, max_pixels)
    if img.format == "JPEG":
        img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
    _load(img)
    return str(img.format)


def image_format(data: bytes) -> str | None:
    """The format name (JPEG, PNG, ...) of image bytes, read from the header only."""
    try:
        return Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS)).format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode to an RGB uint8 array, upright per EXIF, alpha dropped, 16-bit reduced."""
    img = _open(data, max_pixels)
    _load(img)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: keep the high byte (convert("L") would clip, not scale).
        grey = (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        img = Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class Faces:
    boxes: list[Box]
    encodings: np.ndarray  # (n, ENCODING_DIM) of ENCODING_DTYPE


@lru_cache(maxsize=1)
def _face_recognition() -> ModuleType:
    # Importing face_recognition loads dlib's models (~100 MB): once, on first use.
    with warnings.catch_warnings():
        # face_recognition_models imports the deprecated pkg_resources.
        warnings.simplefilter("ignore", UserWarning)
        import face_recognition

    module: ModuleType = face_recognition
    return module


def load_models() -> None:
    """Load dlib's models now (worker start-up) rather than on the first image."""
    _face_recognition()


def find_faces(rgb: np.ndarray, model: str, max_side: int, upsample: int) -> Faces:
    """Detect on a copy scaled to at most `max_side` pixels, encode at full resolution."""
    fr = _face_recognition()
    height, width = rgb.shape[:2]
    scale = 1.0
    small = rgb
    if max_side and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR,
                                                       reducing_gap=2.0))
    found = fr.face_locations(small, number_of_times_to_upsample=upsample, model=model)
    boxes: list[Box] = []
    for top, right, bottom, left in found:
        boxes.append((max(0, round(top / scale)), min(width, round(right / scale)),
                      min(height, round(bottom / scale)), max(0, round(left / scale))))
    if not boxes:
        return Faces([], np.empty((0, ENCODING_DIM), dtype=ENCODING_DTYPE))
    encodings = np.asarray(fr.face_encodings(rgb, known_face_locations=boxes),
                           dtype=ENCODING_DTYPE)
    return Faces(boxes, encodings)
