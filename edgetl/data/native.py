"""Which image files TensorFlow's own decoders can take, and decoding them inside the tf.data graph.

Plain files (baseline or progressive 8-bit RGB/grayscale JPEG without an EXIF rotation; 8-bit RGB or
grayscale PNG without transparency) are decoded by tf.io.decode_jpeg/decode_png and resized by
tf.image.resize in the graph, without a Python call per image (STACK.md: 1,550 against 550-680 img/s for
Pillow through the pipeline, 1,500 real JPEGs on 2 cores).
Everything else (CMYK, 16-bit, EXIF-rotated, palette, alpha, a GIF named .jpg, anything unrecognised)
keeps Pillow's decode (edgetl.data.decode), which handles each of them. The header is read, never
the extension. Both paths give the same pixels within NATIVE_TOLERANCE on plain files: the same
libjpeg scaling (Pillow's draft, decode_jpeg's ratio), the accurate integer DCT, and bilinear
resampling with antialiasing, rounded to uint8.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf

# The largest |native - Pillow| difference allowed per pixel channel on plain files, in 0..255 levels, and
# the largest mean over an image: measured on real photos and larger JPEGs/PNGs made from them, at 96 and
# 224 px (ratios 1 and 2): max 1, mean 0.14-0.25 (resampling rounds differently).
NATIVE_TOLERANCE = {"max": 2, "mean": 0.5}

PILLOW, PNG = 0, 1
JPEG_RATIOS = (1, 2, 4, 8)  # branches 2..5: decode_jpeg at 1/ratio scale
_HEAD = 1 << 16
_SOF_PLAIN = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman


def native_branch(path: str | os.PathLike[str], image_size: tuple[int, int]) -> int:
    """PILLOW, PNG, or 2 + i for a JPEG that decode_jpeg takes at ratio JPEG_RATIOS[i] for this size."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
    except OSError:
        return PILLOW  # Pillow's decode names the problem
    if head.startswith(b"\xff\xd8"):
        dims = _plain_jpeg_size(head)
        if dims is None:
            return PILLOW
        w, h = dims
        side = max(image_size)
        # Pillow's draft(): the largest power-of-two reduction that keeps both sides >= the target's larger side.
        scale = min(w // side, h // side)
        ratio = next(r for r in (8, 4, 2, 1) if scale >= r or r == 1)
        return 2 + JPEG_RATIOS.index(ratio)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and _plain_png(head):
        return PNG
    return PILLOW


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plain JPEG from its markers, or None (not plain, or not found in the header)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        seg = data[i + 4:i + 2 + length]
        if marker == 0xE1 and seg.startswith(b"Exif\x00\x00") and _exif_rotated(seg[6:]):
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF_PLAIN or len(seg) < 6:
                return None
            precision, h, w, components = seg[0], *struct.unpack(">HH", seg[1:5]), seg[5]
            if precision != 8 or components not in (1, 3) or w == 0 or h == 0:
                return None
            return w, h
        if marker == 0xDA:  # start of scan before any frame header: malformed
            return None
        i += 2 + length
    return None


def _exif_rotated(tiff: bytes) -> bool:
    """True unless the EXIF orientation is absent or 1 (an unreadable block counts as rotated: Pillow decides)."""
    try:
        endian = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[offset:offset + 2])
        for k in range(count):
            entry = tiff[offset + 2 + 12 * k:offset + 14 + 12 * k]
            tag, kind = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112:
                value = struct.unpack(endian + "H", entry[8:10])[0] if kind == 3 else -1
                return value != 1
        return False
    except (KeyError, struct.error, IndexError):
        return True


def _plain_png(data: bytes) -> bool:
    """8-bit RGB or grayscale, no transparency chunk before the image data."""
    i = 8
    first = True
    while i + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[i:i + 8])
        body = data[i + 8:i + 8 + length]
        if first:
            if ctype != b"IHDR" or len(body) < 13:
                return False
            depth, colour = body[8], body[9]
            if depth != 8 or colour not in (0, 2):
                return False
            first = False
        elif ctype == b"tRNS":
            return False
        elif ctype == b"IDAT":
            return True
        i += 12 + length
    return False


def decode_native(path: tf.Tensor, branch: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """(h, w, 3) uint8 of a file whose branch is not PILLOW, inside the graph."""
    import tensorflow as tf

    data = tf.io.read_file(path)

    def jpeg(ratio: int):  # noqa: ANN202 - a tf.switch_case branch
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    branches = [lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8),
                lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8),
                *(jpeg(r) for r in JPEG_RATIOS)]
    img = tf.switch_case(branch, branches)
    img.set_shape((None, None, 3))

    def resized() -> tf.Tensor:
        # Antialiasing widens the kernel only along a side that shrinks; enlarging, both give the same bilinear
        # filter (within rounding: 1 level at most, mean 0.001), and the plain kernel is about 3x faster (1,000
        # photos of 128 px to 224: 0.3 against 1.0 ms of CPU an image, most of the decode).
        shrinks = tf.logical_or(tf.shape(img)[0] > size[0], tf.shape(img)[1] > size[1])
        out = tf.cond(shrinks, lambda: tf.image.resize(img, size, method="bilinear", antialias=True),
                      lambda: tf.image.resize(img, size, method="bilinear"))
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

    same = tf.logical_and(tf.equal(tf.shape(img)[0], size[0]), tf.equal(tf.shape(img)[1], size[1]))
    return tf.cond(same, lambda: img, resized)
