"""Decoding one image file robustly with Pillow, and many in threads.

Files are decoded by content, never by extension: any mode (CMYK, 16-bit, grayscale, palette,
alpha) becomes 8-bit RGB, transparency is composited on white, the EXIF orientation is applied,
animated files give their first frame. Images are resized to exactly (height, width) with bilinear
(antialiased) resampling: the aspect ratio is NOT preserved, images are stretched.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgetl.core.errors import DataError, UsageError, first_line

if TYPE_CHECKING:
    from edgetl.data.splits import Item

log = logging.getLogger("edgetl")

_PROBE_SIZE = (32, 32)


class _Unreadable(Exception):
    """A file that is not a usable image; the message is the reason, in a few words."""


def _max_pixels() -> int | None:
    # Follow Pillow's own limit so a user who raised Image.MAX_IMAGE_PIXELS gets the same here.
    return Image.MAX_IMAGE_PIXELS


def _stat_regular(path: str) -> os.stat_result:
    """Stat `path`, translating link and permission problems into reasons."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("broken symlink" if os.path.islink(path) else "file not found") from None
    except PermissionError:
        raise _Unreadable("permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("symlink loop") from None
        raise _Unreadable(f"cannot stat ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO or a device would block or read forever.
        raise _Unreadable("not a regular file")
    if st.st_size == 0:
        raise _Unreadable("empty file (0 bytes)")
    return st


def _describe(exc: BaseException) -> str:
    """Turn a Pillow/OS exception raised while decoding into a short reason."""
    if isinstance(exc, _Unreadable):
        return str(exc)
    # The warning arrives as an exception when warnings are turned into errors (python -W error).
    if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning | MemoryError):
        return f"too large ({exc})" if str(exc) else "too large"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (format not recognised)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop"
    msg = first_line(exc)
    if "truncated" in msg.lower() or isinstance(exc, EOFError):
        return f"truncated or corrupt ({msg})"
    return f"corrupt image ({type(exc).__name__}: {msg})"


def _check_size(im: Image.Image) -> None:
    limit = _max_pixels()
    w, h = im.size
    if w <= 0 or h <= 0:
        raise _Unreadable(f"invalid size {w}x{h}")
    if limit is not None and w * h > limit:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; decoding it could exhaust memory.
        raise _Unreadable(f"too large ({w}x{h} = {w * h} pixels, the limit is {limit})")


def _scale16(arr: np.ndarray) -> np.ndarray:
    """Map 16-bit values 0..65535 onto 0..255, rounding (v * 255 / 65535 == v / 257)."""
    a = np.clip(arr.astype(np.int64), 0, 65535)
    return ((a + 128) // 257).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent pixels become white."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        # convert("L") would clip 16-bit values at 255 instead of scaling them.
        return Image.fromarray(_scale16(np.asarray(im)), "L").convert("RGB")
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.nan_to_num(a)
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0  # float images are usually 0..1
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _Unreadable(f"unsupported colour mode {mode} ({exc})") from None


def _decode(path: str, image_size: tuple[int, int] | None, *, probe: bool = False) -> np.ndarray | None:
    """Decode `path` to an RGB uint8 array of `image_size` (height, width), or just check it (probe).

    Raises _Unreadable with the reason when the file cannot be used.
    """
    _stat_regular(path)
    try:
        with Image.open(path) as im:
            _check_size(im)
            if probe and im.format == "PNG":
                # verify() walks every chunk and checks its CRC: catches truncation without inflating pixels.
                im.verify()
                return None
            if im.format == "JPEG" and image_size is not None:
                # Let libjpeg decode at 1/2..1/8 scale; both sides stay >= the target whatever the EXIF rotation.
                side = max(image_size)
                im.draft(None, (side, side))
            try:
                out = ImageOps.exif_transpose(im)
            except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not cost the image
                log.debug("ignoring unreadable EXIF orientation of '%s': %s", path, exc)
                im.load()
                out = im
            out = _to_rgb(out)
            if image_size is not None:
                h, w = image_size
                if out.size != (w, h):
                    out = out.resize((w, h), Image.Resampling.BILINEAR)
            if probe:
                return None
            arr = np.array(out, dtype=np.uint8)
    except _Unreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data; all mean "unreadable"
        raise _Unreadable(_describe(exc)) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise _Unreadable(f"decoded to unexpected shape {arr.shape}")
    return arr


def parse_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """(height, width) as two positive ints.

    Raises:
        UsageError: not two numbers, or not positive.
    """
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UsageError(f"image size must be (height, width), got {image_size!r}.") from None
    if h <= 0 or w <= 0:
        raise UsageError(f"image size must be positive, got {h}x{w}. Use for example --image-size 224.")
    return h, w


def load_image(path: str | os.PathLike[str], image_size: tuple[int, int]) -> np.ndarray:
    """Decode one image file to RGB and resize it.

    Args:
        path: the image file; its format is read from its content, not its extension.
        image_size: (height, width) of the result. The image is stretched to it (no aspect
            preservation, no cropping), bilinear with antialiasing.

    Returns:
        A (height, width, 3) uint8 RGB array.

    Raises:
        DataError: the file is not a readable image (the message names it and says why).
    """
    size = parse_image_size(image_size)
    path = os.fspath(path)
    try:
        arr = _decode(path, size)
    except _Unreadable as exc:
        raise DataError(f"cannot read image '{path}': {exc}. Remove or replace the file.") from None
    if arr is None:  # only a probe returns None; keeps the type checker and the contract honest
        raise RuntimeError("internal error: image decoder returned nothing")
    return arr


def probe_image(path: str | os.PathLike[str]) -> str | None:
    """Check cheaply that `path` is a decodable image; return None if it is, else the reason."""
    try:
        _decode(os.fspath(path), _PROBE_SIZE, probe=True)
    except _Unreadable as exc:
        return str(exc)
    return None


def default_workers() -> int:
    """Decoding threads by default: one per CPU, at most 16."""
    return max(1, min(16, (os.cpu_count() or 1)))


def load_images(
    root: str | os.PathLike[str],
    items: Sequence[Item],
    image_size: tuple[int, int],
    *,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Decode many images in threads (Pillow releases the GIL while decoding).

    Args:
        root: the data folder the item paths are relative to.
        items: the images to load, in the order of the result.
        image_size: (height, width) of each image.
        workers: threads to use; default: the number of CPUs (at most 16).
        on_progress: called as on_progress(done, total) from the calling thread after each image.

    Returns:
        An (N, height, width, 3) uint8 array.

    Raises:
        DataError: an image cannot be read (named in the message).
    """
    h, w = parse_image_size(image_size)
    root = os.fspath(root)
    n = len(items)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    if n == 0:
        return out
    nthreads = workers if workers is not None else default_workers()
    if nthreads < 1:
        raise UsageError(f"workers must be at least 1, got {workers}.")
    done = 0
    with ThreadPoolExecutor(max_workers=min(nthreads, n)) as pool:
        futures = {pool.submit(load_image, os.path.join(root, it.path), (h, w)): i for i, it in enumerate(items)}
        try:
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                done += 1
                if on_progress is not None:
                    on_progress(done, n)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out
