"""Hostile images, built from nothing (or from a real photo) in a few milliseconds: what
tests/test_hostile_round2.py refuses and bench/hostile_bounds.py measures.

Each builder makes a valid-looking file whose decoding cost is out of proportion to its
size (many scans, segments or chunks; strips that all point at the same bytes), or the
largest file of a format that the limits still allow.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from tests.services import FACES

PHOTO = FACES / "obama" / "obama_small.jpg"


def photo(size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.open(PHOTO)
    img.load()
    return img.resize(size) if size else img


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _entropy(bits: str) -> bytes:
    bits += "1" * (-len(bits) % 8)  # pad with ones, as encoders do
    out = bytearray()
    for i in range(0, len(bits), 8):
        out.append(int(bits[i:i + 8], 2))
        if out[-1] == 0xFF:
            out.append(0)  # byte stuffing
    return bytes(out)


def many_scans_jpeg(width: int, height: int, scans: int) -> bytes:
    """A grey progressive JPEG followed by `scans` more AC scans, each a few bytes (one
    end-of-band run covering every block) and each a full pass over the image."""
    data = encode(Image.new("L", (width, height), 128), "JPEG", progressive=True, quality=50)
    # An AC table (class 1, id 3) holding the end-of-band runs EOB0..EOB14, 4-bit codes.
    dht = (b"\xff\xc4" + (2 + 1 + 16 + 15).to_bytes(2, "big") + b"\x13"
           + bytes([0, 0, 0, 15] + [0] * 12) + bytes(r << 4 for r in range(15)))
    bits, left = "", -(-width // 8) * -(-height // 8)
    while left:
        run = min(left, 32767)
        r = run.bit_length() - 1
        bits += format(r, "04b") + (format(run - (1 << r), f"0{r}b") if r else "")
        left -= run
    scan = b"\xff\xda\x00\x08\x01\x01\x03\x01\x3f\x00" + _entropy(bits)  # Ss=1 Se=63
    return data[:-2] + dht + scan * scans + b"\xff\xd9"


def many_segments_jpeg(segments: int) -> bytes:
    """A tiny JPEG with `segments` empty comments before its frame."""
    data = encode(Image.new("L", (8, 8)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * segments + data[2:]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def many_chunks_png(chunks: int, kind: bytes = b"IDAT") -> bytes:
    """A 64x64 grey PNG with `chunks` extra empty IDAT (or tEXt) chunks."""
    data = encode(Image.new("L", (64, 64), 7), "PNG")
    at = data.index(b"IEND" if kind == b"IDAT" else b"IDAT") - 4
    extra = png_chunk(kind, b"" if kind == b"IDAT" else b"k\0v") * chunks
    return data[:at] + extra + data[at:]


def rle_bmp(width: int, height: int, nbytes: int) -> bytes:
    """An 8-bit RLE BMP of `nbytes` of one-pixel runs (Pillow decodes RLE in Python)."""
    body = b"\x01\x07" * (nbytes // 2) + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835,
                      256, 0)
    return (b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + dib + palette
            + body)


def shared_strips_tiff(width: int, height: int, padding: int) -> bytes:
    """A deflate TIFF of one-row strips that all point at the same `padding` bytes: the
    decoder reads the whole file once per row."""
    raw = zlib.compress(b"\0" * width)
    blob = raw + b"\0" * padding
    n = height
    header = 8
    ifd_size = 2 + 12 * 10 + 4
    offsets_at = header + ifd_size
    counts_at = offsets_at + 4 * n
    data_at = counts_at + 4 * n

    def long(v: int) -> bytes:
        return struct.pack("<I", v)

    entries: list[tuple[int, int, int, bytes]] = [
        (256, 4, 1, long(width)), (257, 4, 1, long(height)), (258, 3, 1, struct.pack("<HH", 8, 0)),
        (259, 3, 1, struct.pack("<HH", 8, 0)), (262, 3, 1, struct.pack("<HH", 1, 0)),
        (273, 4, n, long(offsets_at)), (277, 3, 1, struct.pack("<HH", 1, 0)),
        (278, 4, 1, long(1)), (279, 4, n, long(counts_at)), (284, 3, 1, struct.pack("<HH", 1, 0)),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    ifd += long(0)
    assert len(ifd) == ifd_size
    return (b"II*\0" + long(header) + ifd + long(data_at) * n + long(len(blob)) * n + blob)


def lossless_webp(width: int, height: int) -> bytes:
    """A flat lossless WebP: a few hundred bytes for millions of pixels."""
    return encode(Image.new("RGB", (width, height), (90, 120, 150)), "WEBP", lossless=True,
                  quality=100, method=0)


def flat(fmt: str, width: int, height: int, mode: str = "RGB", **options: object) -> bytes:
    """A flat image of the format and size: it compresses to little."""
    return encode(Image.new(mode, (width, height)), fmt, **options)
