"""The images an export needs: calibration (training split) and held-out (test, else val), decoded as in training."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgetl.core.errors import DataError
from edgetl.core.progress import Reporter
from edgetl.data.sampling import balanced_sample

if TYPE_CHECKING:
    from edgetl.data import Item
    from edgetl.rundir import Run

log = logging.getLogger("edgetl")

VERIFY_WITHOUT_SPLIT = 64  # training images compared with Keras when a run has no held-out split
# Bias correction averages each kernel's input over the first this many calibration images (any prefix of them is
# class-balanced, balanced_sample): a mean settles long before the ranges do, which need every image's extremes,
# and summing the largest activations of every image cost the ONNX calibration pass 1.5 s at 224 px.
MEAN_IMAGES = 128


class ExportImages:
    """Loads each set once; warnings (changed or unreadable files) go to the log and to `warnings`."""

    def __init__(self, run: Run, calibration_samples: int, verify: bool, warnings: list[str] | None = None) -> None:
        self.run = run
        self.want_calibration = calibration_samples
        self.verify = verify
        self.warnings = warnings if warnings is not None else []
        self.calibration_used = 0
        self.splits = run.splits()
        self.size = (run.image_size, run.image_size)
        self._held: tuple[np.ndarray, np.ndarray | None, str] | None = None

    def check(self) -> None:
        """Fail now, before the slow part, when the images the export needs are gone.

        Raises:
            DataError: the data folder is gone, or the training split is empty and calibration needs it.
        """
        root = Path(self.splits.root)
        needs = []
        if self.want_calibration:
            needs.append("calibration")
        if self.verify:
            needs.append("verification")
        if not needs:
            return
        if not root.is_dir():
            hint = " or pass --no-verify" if self.verify and not self.want_calibration else ""
            raise DataError(f"the run's data folder '{root}' is gone: {' and '.join(needs)} need its images. Put it "
                            f"back at that path{hint}.")
        if self.want_calibration and not self.splits.train:
            raise DataError("no calibration images: the run's training split is empty. Train the run again.")
        if self.splits.fingerprint() != (self.run.manifest.get("data") or {}).get("fingerprint"):
            self._warn(f"the images in '{root}' changed since training (added, removed or rewritten files); "
                       "calibration and verification use the files as they are now")

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def _load(self, items: list[Item], what: str, reporter: Reporter) -> tuple[np.ndarray, list[Item]]:
        """Decode `items`, skipping (with a warning) files that no longer decode."""
        from edgetl.data import load_image, load_images

        reporter.start(f"reading {what} images", len(items))
        try:
            arr = load_images(self.splits.root, items, self.size,
                              on_progress=lambda done, total: reporter.advance(1))
            return arr, list(items)
        except DataError:
            pass
        finally:
            reporter.finish()
        good, arrays, bad = [], [], 0
        for it in items:
            try:
                arrays.append(load_image(os.path.join(self.splits.root, it.path), self.size))
                good.append(it)
            except DataError:
                bad += 1
        self._warn(f"{bad} of {len(items)} {what} images cannot be read any more; using the other {len(good)}")
        if not arrays:
            return np.zeros((0, *self.size, 3), dtype=np.uint8), []
        return np.stack(arrays), good

    def calibration(self, reporter: Reporter, dtype: type[np.generic] = np.float32) -> np.ndarray:
        """(N, H, W, 3) pixels 0..255 as `dtype`: a class-balanced, seeded sample of the training split.

        The export keeps them as uint8 (300 images at 224 px: 45 MB, not 180 MB) and converts one image at
        a time (representative, the ONNX calibration reader); float32 is what a model takes whole.
        """
        items = balanced_sample(self.splits.train, self.want_calibration, seed=0)
        if len(items) < self.want_calibration:
            self._warn(f"only {len(items)} training images for calibration (asked for {self.want_calibration}); "
                       "using all of them")
        arr, good = self._load(items, "calibration", reporter)
        if not good:
            raise DataError(f"no calibration images: none of the run's training images in '{self.splits.root}' "
                            "can be read. Put the data back or export without int8/int16 modes.")
        x = arr.astype(dtype, copy=False)
        # One pixel black and one white in the first image: the input range calibrates to exactly 0..255,
        # so uint8 input quantization is the identity (scale 1, zero point 0) and camera frames go in as
        # they are. Two pixels of one image do not move any other tensor's range measurably.
        x[0, 0, 0, :] = 0.0
        x[0, 0, 1, :] = 255.0
        self.calibration_used = len(good)
        return x

    def held_out(self, reporter: Reporter | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
        """(images uint8, labels or None, split name) for verification, decoded once."""
        if self._held is not None:
            return self._held
        reporter = reporter or Reporter()
        split = "test" if self.splits.test else "val" if self.splits.val else None
        if split is None:
            self._warn("the run has no test or val images: verification compares with Keras on training images and "
                       "reports no accuracy")
            items = balanced_sample(self.splits.train, VERIFY_WITHOUT_SPLIT, seed=1)
            arr, good = self._load(items, "verification", reporter)
            self._held = (arr, None, "train (no held-out split)")
        else:
            items = list(getattr(self.splits, split))
            arr, good = self._load(items, f"{split} split", reporter)
            self._held = (arr, np.array([it.label for it in good], dtype=np.int64), split)
        if len(self._held[0]) == 0:
            raise DataError(f"no images to verify with: none of the run's {split or 'training'} images in "
                            f"'{self.splits.root}' can be read. Put the data back or pass --no-verify.")
        return self._held


def balanced_order(labels: np.ndarray | None, n: int, seed: int = 0) -> np.ndarray:
    """Indices 0..n-1 in an order whose every prefix is class-balanced (round-robin over seeded shuffles).

    A file verified on a capped sample is verified on a prefix of this order, so the sample keeps
    the classes in balance and is the same for every file of the export.
    """
    rng = np.random.default_rng(seed)
    if labels is None:
        return rng.permutation(n)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out: list[int] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(int(q.pop()))
    return np.asarray(out, dtype=np.int64)


def representative(calib: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A TFLite representative dataset: the calibration images one at a time, as float32."""
    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(calib)):
            yield [calib[i:i + 1].astype(np.float32, copy=False)]

    return gen
