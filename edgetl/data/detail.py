"""How much detail the photos carry, against the model's input size.

A photo stored at 128x128 that was itself enlarged from a 32-pixel thumbnail carries 32 pixels of
detail: upscaling it to a 224 input adds pixels but no information, and an ImageNet backbone, whose
filters expect sharp 224-pixel photos, gives weaker features on it. Training then costs more than it
needs to and reaches less than users expect from the published figures of sharp photos. This module
measures the detail of a sample and says so, so that the log and the model card can explain it.

The measure: the smallest side `r` from a ladder to which a photo can be shrunk (Lanczos) and enlarged
back (bicubic) with a peak signal-to-noise ratio of at least DETAIL_PSNR_DB on its luminance, i.e.
with no visible loss. A sharp photo needs its full size; a blurred or upscaled one much less.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from edgetl.data.splits import DataSplits

log = logging.getLogger("edgetl")

DETAIL_PSNR_DB = 38.0  # no visible loss; sharp 1/f-noise pictures (photos' spectrum) stay under 35 dB at 80% size
LADDER = (16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
DEFAULT_SAMPLE = 32
# Only a meaningful shortfall is reported: photos with at least half the model's input in detail are
# within what random crops and ImageNet's own photos show.
REPORT_BELOW = 0.5


@dataclass(frozen=True)
class Detail:
    """The detail of a sample of photos, in pixels of the shorter side (medians over the sample)."""

    stored_px: int  # the stored shorter side
    detail_px: int  # the smallest ladder side that keeps the photo (>= DETAIL_PSNR_DB); stored_px if none
    sampled: int  # photos measured

    def to_dict(self) -> dict[str, int | float]:
        """The JSON form, for the run's metrics and the model card."""
        return {"stored_px": self.stored_px, "detail_px": self.detail_px, "sampled": self.sampled,
                "psnr_db": DETAIL_PSNR_DB}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB (inf when equal)."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def photo_detail(im: Image.Image, limit: int) -> tuple[int, int]:
    """(stored shorter side, detail in pixels of the shorter side) of one image, looked at below `limit`.

    Detail of `limit` pixels or more is reported as the stored size: the model cannot use more.

    Photos larger than 2 x limit are first reduced to that (Pillow's JPEG draft mode makes it cheap):
    detail above the model's input does not matter here.
    """
    stored = min(im.size)
    cap = 2 * limit
    if stored > cap:
        scale = cap / stored
        target = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im.draft("L", target)
    gray = im.convert("L")
    if min(gray.size) > cap:
        scale = cap / min(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                           Image.Resampling.LANCZOS)
    ref = np.asarray(gray)
    short = min(gray.size)
    for r in LADDER:
        if r >= short or r * stored / short >= limit:
            break  # detail at or above the model's input is all the model can use: no need to look further
        scale = r / short
        small = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
                            Image.Resampling.LANCZOS)
        back = np.asarray(small.resize(gray.size, Image.Resampling.BICUBIC))
        if psnr(ref, back) >= DETAIL_PSNR_DB:
            return stored, round(r * stored / short)
    return stored, stored


def measure_detail(paths: Sequence[str | os.PathLike[str]], limit: int) -> Detail | None:
    """The median stored size and detail of `paths` (unreadable files are skipped); None when none could be read."""
    stored: list[int] = []
    detail: list[int] = []
    for p in paths:
        try:
            with Image.open(p) as im:
                s, d = photo_detail(im, limit)
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # the scan reports unreadable files; this is only a measurement
        stored.append(s)
        detail.append(d)
    if not stored:
        return None
    return Detail(int(np.median(stored)), int(np.median(detail)), len(stored))


def detail_advice(detail: Detail, image_size: int) -> str | None:
    """One log line when the photos carry much less detail than the model's input, else None."""
    if detail.detail_px >= REPORT_BELOW * image_size:
        return None
    stored = f"stored at {detail.stored_px} px" if detail.stored_px != detail.detail_px else "as stored"
    return (f"the photos carry about {detail.detail_px} px of detail ({stored}; median of {detail.sampled}), "
            f"far less than the model's {image_size} px input: the base's features are weaker on such blurred "
            f"or upscaled photos and accuracy will be lower than on sharp ones. A smaller --image-size "
            f"trains faster for little loss; fine-tuning (--fine-tune-layers) adapts the base to them.")


def split_detail(splits: DataSplits, image_size: int, n: int = DEFAULT_SAMPLE, seed: int = 0) -> Detail | None:
    """measure_detail on a class-balanced sample of up to `n` training images of `splits`."""
    from edgetl.data.sampling import balanced_sample

    items = balanced_sample(splits.split("train"), n, seed)
    return measure_detail([os.path.join(splits.root, *it.path.split("/")) for it in items], image_size)
