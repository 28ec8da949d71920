"""Image bytes in, faces out: validation and decoding (Pillow) and detection (dlib).

Validation (the REST front end, before anything is queued) and decoding (the worker) are
one code path, `_decode`, so whatever validation accepts the worker can decode: both
read the structure first (`inspect`: format, size, and the work and memory decoding will
cost, all from headers and segment tables, before any pixel is decoded), then decode
under the same Pillow rules and the same deadline, then orient (EXIF) and convert to RGB.
Validation does the last two on a small crop (and decodes JPEGs at 1/8 scale), so it never
holds a second copy of the pixels; decoding does them on the whole image.

Bounds, each checked before decoding:

- pixels: `max_pixels` (MAX_IMAGE_PIXELS), from the header;
- JPEG: at most MAX_JPEG_SCANS scans and MAX_JPEG_SEGMENTS segments (a progressive JPEG
  made of thousands of tiny scans costs a full pass over the image per scan);
- PNG: at most MAX_PNG_CHUNKS chunks (Pillow handles each chunk in Python);
- TIFF: at most MAX_TIFF_VALUES values in any numeric tag, strips and tiles that together
  claim no more bytes than the file holds, and only codecs whose work is linear in the
  pixels (no JPEG inside TIFF);
- BMP: RLE data (decoded by Pillow in Python, about 1 µs a byte) at most MAX_BMP_RLE_BYTES;
- memory: `inspect` estimates the decoder's peak; rest reserves it from a `MemoryBudget`
  before decoding, so concurrent uploads cannot take a process past its share of the pod;
- time: every read the decoder makes checks a deadline (DECODE_SECONDS), a backstop for
  what the bounds above do not model.

dlib and its models are imported only by `find_faces`'s loader, so importing this module
stays light for the REST process. Importing face_recognition sets Pillow's global
LOAD_TRUNCATED_IMAGES; `_PILLOW_RULES` are put back after that import and re-applied
before every decode, so rest and worker accept exactly the same files.
"""

from __future__ import annotations

import io
import re
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from struct import error as struct_error
from types import ModuleType
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from facerec.errors import InvalidImage

# A face encoding: dlib's 128 numbers, kept and compared as float32 (converted once, here).
ENCODING_DIM = 128
ENCODING_DTYPE = np.dtype("<f4")
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})
_UNDECODABLE = f"not a decodable image ({', '.join(sorted(ACCEPTED_FORMATS))})"
Box = tuple[int, int, int, int]  # top, right, bottom, left (face_recognition's order)

# Work bounds (see the module docstring). Real files stay far below them: libjpeg and
# mozjpeg write at most ~20 scans and ~40 segments; libpng writes 8 KiB IDAT chunks (2,500
# for a 20 MB file).
MAX_JPEG_SCANS = 100
MAX_JPEG_SEGMENTS = 1000
MAX_PNG_CHUNKS = 20_000
MAX_TIFF_VALUES = 100_000
MAX_BMP_RLE_BYTES = 1 << 20
DECODE_SECONDS = 30.0
# Validation orients and converts a crop of this many pixels a side: the same code as the
# whole image, on a few kB.
CHECK_SIDE = 64

# Pillow's process-wide switches, the same in every process that decodes.
_PILLOW_RULES: dict[tuple[ModuleType, str], object] = {
    (ImageFile, "LOAD_TRUNCATED_IMAGES"): False,  # a truncated file is an invalid image
    # Text chunks are never used: 8 MiB of decompressed text at most, not Pillow's 64.
    (PngImagePlugin, "MAX_TEXT_CHUNK"): 1 << 20,
    (PngImagePlugin, "MAX_TEXT_MEMORY"): 8 << 20,
}


def _apply_pillow_rules() -> None:
    for (module, name), value in _PILLOW_RULES.items():
        if getattr(module, name) != value:
            setattr(module, name, value)


_apply_pillow_rules()
# Pillow warns about every malformed EXIF or TIFF tag it skips; what it cannot read is an
# unknown orientation (or an exception, for the pixels), never a warning worth a log line.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")


# -- structure: what decoding will cost, read before decoding ------------------------------

@dataclass(frozen=True)
class Inspection:
    """What `inspect` reads from an image's headers and segment tables."""

    format: str
    width: int
    height: int
    mode: str
    check_bytes: int  # the decoder's peak memory to validate (reduced JPEG, crop)
    decode_bytes: int  # ... to decode in full, orient and convert (the worker)


# Bytes per pixel of Pillow's image memory, by mode (Pillow keeps LA and RGB in 4 bytes).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# The next marker: 0xFF (any run of them, taken whole) then a byte that is not a stuffed
# zero; inside entropy-coded data, restart markers (RST0-7) do not end the segment.
# Possessive and anchored on the run's first byte: linear on any input.
_MARKER = re.compile(rb"(?<!\xff)\xff++([^\x00])")
_ENTROPY_END = re.compile(rb"(?<!\xff)\xff++([^\x00\xd0-\xd7])")
# TIFF numeric field types and their sizes: SHORT, LONG, RATIONAL, SSHORT, SLONG,
# SRATIONAL, FLOAT, DOUBLE, LONG8, SLONG8, IFD8 (BYTE, ASCII, UNDEFINED... are bytes).
_TIFF_NUMERIC = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
# Codecs whose work is linear in the pixels: none, CCITT RLE/G3/G4, LZW, Deflate (both
# codes), PackBits, LZMA, ZSTD. JPEG-in-TIFF (6, 7) is not: its scans are unbounded.
_TIFF_CODECS = frozenset({1, 2, 3, 4, 5, 8, 32773, 32946, 34925, 50000})


@dataclass(frozen=True)
class _Jpeg:
    multi_scan: bool
    coefficient_bytes: int  # libjpeg's whole-image coefficient buffer (multi-scan files)


def _walk_jpeg(data: bytes) -> _Jpeg:
    """Count a JPEG's segments and scans and size its coefficient buffer, refusing one
    over the bounds. Lenient like libjpeg (bytes between segments are skipped); what is
    truncated or malformed is left for the decoder to refuse."""
    pos, segments, scans = 2, 0, 0
    frame: tuple[int, int, list[tuple[int, int]]] | None = None
    progressive = False
    pattern = _MARKER
    while (found := pattern.search(data, pos)) is not None:
        marker, pos = found[1][0], found.end()
        pattern = _MARKER
        if marker == 0xD9:  # EOI
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        length = int.from_bytes(data[pos:pos + 2], "big")
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise InvalidImage(f"JPEG with more than {MAX_JPEG_SEGMENTS} segments")
        if marker in _SOF and frame is None and length >= 8:
            height = int.from_bytes(data[pos + 3:pos + 5], "big")
            width = int.from_bytes(data[pos + 5:pos + 7], "big")
            count = data[pos + 7]
            sampling = [(b >> 4, b & 15) for b in data[pos + 9:pos + 9 + 3 * count:3]]
            frame, progressive = (width, height, sampling), marker in _PROGRESSIVE
        elif marker == 0xDA:  # SOS: the entropy-coded data follows the header
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise InvalidImage(f"JPEG with more than {MAX_JPEG_SCANS} scans (each one "
                                   f"is a pass over the whole image)")
            pattern = _ENTROPY_END
        pos += max(length, 2)
    multi = progressive or scans > 1
    if not multi or frame is None:
        return _Jpeg(multi, 0)
    width, height, sampling = frame
    h_max = max((h for h, _ in sampling), default=1) or 1
    v_max = max((v for _, v in sampling), default=1) or 1
    blocks = 0
    for h, v in sampling:
        # Each component's 8x8 blocks, padded up to its sampling factor (libjpeg's
        # jdcoefct.c), 64 coefficients of 2 bytes each.
        h, v = max(h, 1), max(v, 1)
        across = _ceil(_ceil(_ceil(width * h, h_max), 8), h) * h
        down = _ceil(_ceil(_ceil(height * v, v_max), 8), v) * v
        blocks += across * down
    return _Jpeg(True, blocks * 128)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _walk_png(data: bytes) -> None:
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise InvalidImage(f"PNG with more than {MAX_PNG_CHUNKS} chunks")
        if data[pos + 4:pos + 8] == b"IEND":
            return
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")


def _walk_tiff(data: bytes) -> None:
    """Bound the first IFD's numeric tags (Pillow unpacks them into Python tuples)."""
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    big = int.from_bytes(data[2:4], order) == 43  # BigTIFF: 8-byte counts and offsets
    at = int.from_bytes(data[8:16] if big else data[4:8], order)
    size, entry = (8, 20) if big else (2, 12)
    entries = int.from_bytes(data[at:at + size], order)
    for i in range(min(entries, (len(data) - at) // entry)):
        e = at + size + i * entry
        kind = int.from_bytes(data[e + 2:e + 4], order)
        count = int.from_bytes(data[e + 4:e + (12 if big else 8)], order)
        if kind in _TIFF_NUMERIC and count > MAX_TIFF_VALUES:
            tag = int.from_bytes(data[e:e + 2], order)
            raise InvalidImage(f"TIFF tag {tag} holds {count} values, more than "
                               f"{MAX_TIFF_VALUES}")


def _check_tiff(img: Image.Image, size: int) -> int:
    """Refuse codecs of unbounded work and pieces claiming more than the file; return
    the bytes of the largest decoded piece (libtiff's buffer)."""
    tags = img.tag_v2  # type: ignore[attr-defined]
    codec = tags.get(259, 1)
    if codec not in _TIFF_CODECS:
        raise InvalidImage(f"TIFF compression {codec} is not accepted (accepted: "
                           f"{', '.join(map(str, sorted(_TIFF_CODECS)))})")
    counts = tags.get(325) or tags.get(279) or ()
    counts = counts if isinstance(counts, tuple) else (counts,)
    if sum(int(c) for c in counts) > size:
        raise InvalidImage("TIFF strips or tiles claim more bytes than the file holds")
    samples = int(tags.get(277, 1))
    bits = tags.get(258, 8)
    bits = int(sum(bits) if isinstance(bits, tuple) else bits * samples)
    if 322 in tags:  # tiles
        piece_pixels = int(tags.get(322, 1)) * int(tags.get(323, 1))
    else:
        piece_pixels = img.width * min(int(tags.get(278, img.height)), img.height)
    return piece_pixels * bits // 8 + max(counts, default=0)


class _Deadline(io.BytesIO):
    """The image bytes as a file whose every read checks the decode deadline."""

    def __init__(self, data: bytes, seconds: float) -> None:
        super().__init__(data)
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() >= self.deadline:
            raise InvalidImage(f"image took more than {self.seconds:g} s to decode")
        return super().read(size)


def _sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _open(data: bytes, max_pixels: int,
          seconds: float = DECODE_SECONDS) -> tuple[Image.Image, Inspection, int]:
    """Open lazily (no pixels yet) after the structural checks; refuse unknown formats,
    oversized images and work over the bounds. Returns the image, what it will cost,
    and the JPEG draft scale validation decodes at."""
    kind = _sniff(data)
    jpeg = _walk_jpeg(data) if kind == "JPEG" else None
    if kind == "PNG":
        _walk_png(data)
    elif kind == "TIFF" and len(data) >= 16:
        _walk_tiff(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(_Deadline(data, seconds), formats=sorted(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        # Pillow's message names an in-memory object: say it plainly instead.
        raise InvalidImage(_UNDECODABLE) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError, OSError,
            SyntaxError, ValueError, EOFError, struct_error) as exc:
        raise InvalidImage(f"{_UNDECODABLE}: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise InvalidImage(f"image of {width}x{height} pixels exceeds the limit of "
                           f"{max_pixels} pixels")
    fmt = str(img.format)
    pixels = width * height
    image_bytes = pixels * _MODE_BYTES.get(img.mode, 4)
    # Orient or convert (a Pillow RGB image), the numpy array, and find_faces's copy of it.
    rgb = pixels * (4 + 3 + 4)
    extra, scale = 0, 1
    if jpeg is not None:
        extra = jpeg.coefficient_bytes
        scale = 8
        check = _ceil(width, 8) * _ceil(height, 8) * 4 + extra
    elif fmt == "TIFF":
        extra = _check_tiff(img, len(data))
        check = image_bytes + extra
    elif fmt == "BMP":
        if img.info.get("compression") in (1, 2) and len(data) > MAX_BMP_RLE_BYTES:
            raise InvalidImage(f"RLE-compressed BMP larger than {MAX_BMP_RLE_BYTES} bytes "
                               f"(decoded in Python: about 1 µs a byte)")
        check = image_bytes
    elif fmt == "WEBP":
        # libwebp's canvas and frame, the decoded frame as bytes, then Pillow's image.
        extra = pixels * 12
        check = image_bytes + extra
    else:
        check = image_bytes
    decode = image_bytes + extra + rgb
    return img, Inspection(fmt, width, height, img.mode, check, decode), scale


def inspect(data: bytes, max_pixels: int) -> Inspection:
    """Format, size and the memory decoding will take, from the structure only (no pixel
    is decoded); raises InvalidImage for what no decode would accept."""
    return _open(data, max_pixels)[1]


# -- decoding --------------------------------------------------------------------------------

def _load(img: Image.Image) -> None:
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError, struct_error,
            Image.DecompressionBombError) as exc:
        raise InvalidImage(f"corrupt or truncated {img.format} image: {exc}") from None


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - a broken EXIF block means "orientation unknown"
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# EXIF orientation -> the transposition that makes the image upright (ImageOps's table).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _to_rgb(img: Image.Image, orientation: int) -> np.ndarray:
    """Upright RGB uint8, alpha dropped, 16-bit reduced."""
    if orientation in _UPRIGHT:
        img = img.transpose(_UPRIGHT[orientation])
    try:
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit grayscale: keep the high byte (convert("L") would clip, not scale).
            grey = (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        if img.mode == "F":
            img = Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8))
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img, dtype=np.uint8)
    except (ValueError, TypeError, OSError) as exc:
        raise InvalidImage(f"{img.mode} image not convertible to RGB: {exc}") from None


def _decode(data: bytes, max_pixels: int, check: bool, seconds: float) -> tuple[str, np.ndarray]:
    """The one decode path: structure, Pillow's rules, decode under the deadline, orient,
    convert. `check`: at 1/8 scale for JPEG, orientation and conversion on a crop."""
    _apply_pillow_rules()
    img, info, scale = _open(data, max_pixels, seconds)
    if check and scale > 1:
        img.draft(img.mode, (max(1, img.width // scale), max(1, img.height // scale)))
    _load(img)
    orientation = _orientation(img)
    if check:
        img = img.crop((0, 0, min(img.width, CHECK_SIDE), min(img.height, CHECK_SIDE)))
    return info.format, _to_rgb(img, orientation)


def validate(data: bytes, max_pixels: int, budget: MemoryBudget | None = None,
             seconds: float = DECODE_SECONDS) -> str:
    """Check that `data` decodes as an accepted image, as the worker will decode it;
    return its format. With a budget, the decoder's memory is reserved from it first."""
    if budget is None:
        return _decode(data, max_pixels, True, seconds)[0]
    with budget.hold(inspect(data, max_pixels).check_bytes):
        return _decode(data, max_pixels, True, seconds)[0]


def decode(data: bytes, max_pixels: int, seconds: float = DECODE_SECONDS) -> np.ndarray:
    """Decode to an RGB uint8 array, upright per EXIF, alpha dropped, 16-bit reduced."""
    return _decode(data, max_pixels, False, seconds)[1]


def image_format(data: bytes) -> str | None:
    """The format name (JPEG, PNG, ...) of image bytes, read from the header only."""
    try:
        return Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS)).format
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct_error):
        return None


# -- memory ----------------------------------------------------------------------------------

class Busy(Exception):
    """No memory was free within the budget's wait: try again later (503)."""


class MemoryBudget:
    """Bytes that concurrent decodes (or bodies) in one process may hold together.

    A decode reserves its estimated peak (`Inspection.check_bytes`) before it starts and
    gives it back when done; a decode that alone needs more than the whole budget is an
    invalid image (too large for this process), one that cannot get its share within
    `wait` seconds raises Busy.
    """

    def __init__(self, total: int, wait: float = 30.0) -> None:
        self.total = total
        self.wait = wait
        self._used = 0
        self._free = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.total:
            raise InvalidImage(f"decoding this image needs about {nbytes >> 20} MiB, more "
                               f"than the {self.total >> 20} MiB an upload may use")
        deadline = time.monotonic() + self.wait
        with self._free:
            while self._used + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(f"no memory free within {self.wait:g} s")
                self._free.wait(left)
            self._used += nbytes
        try:
            yield
        finally:
            with self._free:
                self._used -= nbytes
                self._free.notify_all()


# -- detection -------------------------------------------------------------------------------

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
    # It also sets ImageFile.LOAD_TRUNCATED_IMAGES = True for the whole process: undo that,
    # or the worker would accept truncated files that rest refuses.
    _apply_pillow_rules()
    _drop_landmark_model(face_recognition)
    module: ModuleType = face_recognition
    return module


def _drop_landmark_model(fr: ModuleType) -> None:
    """Free the 68-point landmark model (~66 MB of a worker's memory, loaded at import).

    Encodings use the 5-point model (face_encodings' default, model="small"); the 68-point
    one serves only face_landmarks and model="large", which facerec never calls.
    """
    api = fr.api
    if getattr(api, "pose_predictor_68_point", None) is not None:
        api.pose_predictor_68_point = None
        from facerec.matcher import release_free_heap  # its memory back to the OS
        release_free_heap()


def load_models() -> None:
    """Load dlib's models now (worker start-up) rather than on the first image."""
    _face_recognition()


# face_recognition's models are module-wide dlib objects that are not safe to use from two
# threads at once (a worker's image thread and its search thread crashed the process with
# "double free or corruption"): one detection or encoding at a time per process.
_DLIB = threading.Lock()


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
    with _DLIB:
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
