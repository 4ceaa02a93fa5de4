"""Generated image data: a small demo data set, and the messy files real folders contain.

The demo set is a few classes of drawn shapes on varied backgrounds, saved in the file kinds that
real photo folders mix (JPEG, PNG with alpha, grayscale, 16-bit PNG, CMYK JPEG, GIF, BMP, WebP,
TIFF, EXIF-rotated JPEG) so that a whole train/export/evaluate run exercises the decoder. It is
learnable (a small CNN gets well above chance) but not trivial: colours, sizes, positions, rotation,
outline or fill, background, noise and small distractors all vary.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, features

from edgetl.core.errors import RunExistsError, UsageError
from edgetl.core.fileio import atomic_path, write_bytes

DEFAULT_CLASSES = ("circles", "squares", "triangles", "stripes")
_SHAPES = ("circles", "squares", "triangles", "stripes")

# Kinds of the messy files that no decoder can use: scan_folder must skip them.
MESSY_UNREADABLE = frozenset({"zero-bytes", "truncated-jpeg", "text-as-png"})

# EXIF orientation tag and the transpose that stores an image so that a viewer shows it upright.
_ORIENTATION = 0x0112
_STORE_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def _kinds() -> list[str]:
    kinds = ["jpeg", "png", "png-rgba", "png-gray", "bmp", "jpeg-cmyk", "png-16bit", "gif",
             "jpeg-exif-rotated", "tiff"]
    if features.check("webp"):
        kinds.append("webp")
    return kinds


# ----------------------------------------------------------------------------------------------
# Drawing


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, size=3))  # type: ignore[return-value]


def _contrasting(rng: np.random.Generator, against: np.ndarray) -> tuple[int, int, int]:
    # The shape must stay visible, also in the file kinds that keep only the luminance (grayscale, 16-bit).
    lum = float(against @ [0.299, 0.587, 0.114])
    for _ in range(32):
        c = _colour(rng)
        if abs(float(np.array(c) @ [0.299, 0.587, 0.114]) - lum) >= 60:
            return c
    return (0, 0, 0) if lum > 127 else (255, 255, 255)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, np.ndarray]:
    kind = rng.integers(0, 3)
    c1 = np.array(_colour(rng), dtype=np.float32)
    if kind == 0:
        arr = np.broadcast_to(c1, (h, w, 3)).copy()
    elif kind == 1:
        c2 = np.array(_colour(rng), dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        arr = c1 + (c2 - c1) * t[..., None]
    else:
        # Blotchy texture: coarse noise blown up, so the background has structure, not just grain.
        coarse = rng.uniform(-45, 45, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
        tex = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR), dtype=np.float32) - 128
        arr = c1 + tex
    arr = np.clip(arr, 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "RGB"), arr.reshape(-1, 3).mean(axis=0)


def _rotated(points: Sequence[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, rng: np.random.Generator, w: int, h: int,
                colour: tuple[int, int, int]) -> None:
    m = min(w, h)
    r = rng.uniform(0.22, 0.40) * m
    cx = rng.uniform(r * 0.8, w - r * 0.8)
    cy = rng.uniform(r * 0.8, h - r * 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    filled = rng.random() < 0.75
    width = int(rng.integers(2, max(3, int(m / 20) + 2)))
    fill, outline = (colour, None) if filled else (None, colour)
    if shape == "circles":
        # A slightly elliptic circle: aspect alone must not separate circles from squares.
        rx, ry = r, r * rng.uniform(0.8, 1.2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill, outline=outline, width=width)
    elif shape == "squares":
        s = r * 0.85
        pts = _rotated([(-s, -s), (s, -s), (s, s), (-s, s)], cx, cy, angle)
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    elif shape == "triangles":
        pts = _rotated([(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)],
                       cx, cy, angle)
        draw.polygon(pts, fill=fill, outline=outline, width=width)
    elif shape == "stripes":
        n = int(rng.integers(3, 6))
        gap = 2 * r / n
        thick = max(2, int(gap * rng.uniform(0.3, 0.6)))
        for k in range(n):
            off = -r + gap * (k + 0.5)
            a, b = _rotated([(off, -r), (off, r)], cx, cy, angle)
            draw.line([a, b], fill=colour, width=thick)
    else:
        raise ValueError(shape)


def _distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    # Small dots and short lines in any class: the model has to look at the big shape.
    for _ in range(int(rng.integers(0, 3))):
        c = _colour(rng)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        s = rng.uniform(1.5, max(2.0, min(w, h) / 14))
        if rng.random() < 0.5:
            draw.ellipse([x - s, y - s, x + s, y + s], fill=c)
        else:
            a = rng.uniform(0, 2 * math.pi)
            draw.line([(x, y), (x + 2 * s * math.cos(a), y + 2 * s * math.sin(a))], fill=c, width=1)


def _render(shape: str, rng: np.random.Generator, size_range: tuple[int, int]) -> Image.Image:
    lo, hi = size_range
    w = int(rng.integers(lo, hi + 1))
    # Moderate aspect ratios: images are stretched to a square for the model, and a circle squashed
    # 3:1 no longer looks like a circle.
    h = int(np.clip(round(w * rng.uniform(0.75, 1.33)), lo, hi))
    bg, mean = _background(rng, w, h)
    draw = ImageDraw.Draw(bg)
    _distractors(draw, rng, w, h)
    _draw_shape(draw, shape, rng, w, h, _contrasting(rng, mean))
    arr = np.asarray(bg, dtype=np.float32)
    sigma = rng.uniform(0, 12)
    arr = arr + rng.normal(0, sigma, size=arr.shape)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------------
# Encoding


def _encode(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """Encode an RGB image as `kind`; return (bytes, file extension)."""
    buf = io.BytesIO()
    if kind == "jpeg":
        img.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
        return buf.getvalue(), ".jpg"
    if kind == "png":
        img.save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == "png-rgba":
        w, h = img.size
        alpha = np.linspace(rng.uniform(90, 200), 255, h, dtype=np.float32)[:, None].repeat(w, axis=1)
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha.astype(np.uint8), "L"))
        rgba.save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == "png-gray":
        img.convert("L").save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == "bmp":
        img.save(buf, "BMP")
        return buf.getvalue(), ".bmp"
    if kind == "jpeg-cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    if kind == "png-16bit":
        gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        # Low-byte noise: the file really uses 16 bits, so a decoder that clips instead of scaling shows.
        gray = gray + rng.integers(0, 257, size=gray.shape).astype(np.uint16) // 2
        Image.fromarray(gray.astype(np.uint16)).save(buf, "PNG")
        return buf.getvalue(), ".png"
    if kind == "gif":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "GIF")
        return buf.getvalue(), ".gif"
    if kind == "jpeg-exif-rotated":
        orientation = int(rng.choice(sorted(_STORE_FOR_ORIENTATION)))
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        img.transpose(_STORE_FOR_ORIENTATION[orientation]).save(buf, "JPEG", quality=90, exif=exif)
        return buf.getvalue(), ".jpg"
    if kind == "tiff":
        img.save(buf, "TIFF")
        return buf.getvalue(), ".tif"
    if kind == "webp":
        img.save(buf, "WEBP", quality=85, method=4)
        return buf.getvalue(), ".webp"
    raise ValueError(f"unknown kind {kind}")


def _check_args(classes: Sequence[str], per_class: int, size_range: tuple[int, int]) -> tuple[list[str], int, int]:
    names = [str(c) for c in classes]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UsageError(f"demo data needs at least 2 different class names, got {names}.")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", n):
            raise UsageError(f"demo class name '{n}' is not allowed. Use letters, digits, '_', '-' and '.'.")
    if len(names) > len(_SHAPES):
        raise UsageError(f"demo data can draw at most {len(_SHAPES)} classes ({', '.join(_SHAPES)}), got {len(names)}.")
    if int(per_class) < 1:
        raise UsageError(f"images per class must be at least 1, got {per_class}.")
    try:
        lo, hi = (int(v) for v in size_range)
    except (TypeError, ValueError):
        raise UsageError(f"size range must be (smallest, largest) in pixels, got {size_range!r}.") from None
    if not 16 <= lo <= hi:
        raise UsageError(f"size range must satisfy 16 <= smallest <= largest, got ({lo}, {hi}).")
    return names, lo, hi


def write_demo_data(
    dest: str | os.PathLike[str],
    *,
    classes: Sequence[str] = DEFAULT_CLASSES,
    per_class: int = 40,
    seed: int = 0,
    size_range: tuple[int, int] = (48, 160),
    force: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a generated image data set: one folder per class, mixed file kinds and sizes.

    A class named after a shape (circles, squares, triangles, stripes) draws that shape; other
    names are given the shapes in order. The same seed gives byte-identical files. The folder is
    built beside `dest` and renamed into place, so an interrupted run leaves no half data set.

    Args:
        dest: the folder to create.
        classes: class (folder) names, 2 to 4.
        per_class: images per class.
        seed: seeds everything drawn.
        size_range: smallest and largest side in pixels; width and height vary independently.
        force: replace an existing non-empty folder.
        on_progress: called as on_progress(done, total) after each image.

    Returns:
        {"path", "classes", "counts" (images per class), "kinds" (files per kind), "total", "seed"}.

    Raises:
        UsageError: invalid arguments, or `dest` is a file.
        RunExistsError: `dest` is a non-empty folder and force is False.
    """
    names, lo, hi = _check_args(classes, per_class, size_range)
    per_class = int(per_class)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"'{dest}' exists and is not a folder. Choose a folder path for the demo data.")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise RunExistsError(f"folder '{dest}' already exists and is not empty. "
                             "Pass --force to replace it, or choose another folder.")
    unused = [s for s in _SHAPES if s not in names]
    shape_of = {n: (n if n in _SHAPES else unused.pop(0)) for n in names}
    kinds = _kinds()
    kind_counts: Counter[str] = Counter()
    total = len(names) * per_class
    done = 0
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for ci, name in enumerate(names):
            (tmp / name).mkdir()
            for i in range(per_class):
                # One generator per image: the files do not depend on per_class or on the other classes.
                rng = np.random.default_rng([int(seed), ci, i])
                kind = kinds[(i + ci) % len(kinds)]
                img = _render(shape_of[name], rng, (lo, hi))
                data, ext = _encode(img, kind, rng)
                (tmp / name / f"{name}_{i:04d}{ext}").write_bytes(data)
                kind_counts[kind] += 1
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
    return {
        "path": str(dest.resolve()),
        "classes": names,
        "counts": {n: per_class for n in names},
        "kinds": dict(sorted(kind_counts.items())),
        "total": total,
        "seed": int(seed),
    }


# ----------------------------------------------------------------------------------------------
# Messy files for tests


def _jpeg(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def write_messy_files(folder: str | os.PathLike[str], seed: int = 0) -> dict[str, str]:
    """Write one file of each awkward kind into `folder` (created if missing); return {file name: kind}.

    Kinds in MESSY_UNREADABLE cannot be decoded; the others can, with known content:
      - gif-named-jpg 'animated.jpg': 2-frame 40x40 GIF, frame 1 green (0,255,0), frame 2 red.
      - cmyk-jpeg 'cmyk.jpg': 40x40 pure red in CMYK.
      - png-16bit 'gray16.png': 256x8, pixel column x has value x * 257 (so 8-bit value x).
      - png-1x1 'tiny.png': one pixel (10, 200, 30).
      - exif-rotated-jpeg 'rotated.jpg': shown upright it is 48 wide, 32 high, left half red and
        right half blue; stored rotated with EXIF orientation 6.
      - rgba-png 'alpha.png': 40x40, left half opaque blue, right half fully transparent red.
      - palette-png-transparent 'palette.png': 40x40 palette image, transparent background,
        red square at (10..29, 10..29).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "RGB")
    files: dict[str, tuple[str, bytes]] = {}

    files["empty.jpg"] = ("zero-bytes", b"")
    full = _jpeg(noise, quality=95)
    files["truncated.jpg"] = ("truncated-jpeg", full[: len(full) // 2])
    files["notes.png"] = ("text-as-png", b"These are my notes, not a picture.\n" * 4)

    frames = [Image.new("RGB", (40, 40), (0, 255, 0)), Image.new("RGB", (40, 40), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.jpg"] = ("gif-named-jpg", buf.getvalue())

    files["cmyk.jpg"] = ("cmyk-jpeg", _jpeg(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), quality=95))

    ramp = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(8, axis=0)
    files["gray16.png"] = ("png-16bit", _png(Image.fromarray(ramp)))

    files["tiny.png"] = ("png-1x1", _png(Image.new("RGB", (1, 1), (10, 200, 30))))

    upright = Image.new("RGB", (48, 32), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 24, 32))
    exif = Image.Exif()
    exif[_ORIENTATION] = 6
    files["rotated.jpg"] = ("exif-rotated-jpeg",
                            _jpeg(upright.transpose(_STORE_FOR_ORIENTATION[6]), quality=95, exif=exif))

    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 40))
    files["alpha.png"] = ("rgba-png", _png(rgba))

    pal = Image.new("P", (40, 40), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    pal.paste(1, (10, 10, 30, 30))
    files["palette.png"] = ("palette-png-transparent", _png(pal, transparency=0))

    for name, (_, data) in files.items():
        write_bytes(folder / name, data)
    return {name: kind for name, (kind, _) in files.items()}
