"""Activation ranges for 8-bit quantization that minimise the total error (rounding plus clipping), from histograms.

A min/max range is set by the most extreme value of any calibration image: in MobileNetV2 1.0 at 224 on real
photos the linear bottlenecks' outputs and residual sums span -40..40 while nearly all their values lie well
inside, so the uint8 step is several times coarser than the values need. ORT's per-tensor comparison of the QNN
int8 file against float (onnxruntime.quantization.qdq_loss_debug) put those tensors' rounding SQNR at 28-37 dB
against 44 dB for the well-ranged ones (issue #27, BENCHMARKS.md). The range here is the one whose expected
squared error over the calibration images' values is smallest: each end shrunk towards 0 on a grid, the error
of every histogram bin's value rounded to the level grid of that range, or clipped to its end. This is the "MSE"
range of TensorRT, NNCF and ONNX Runtime's own literature; ORT's HistogramCalibrater would keep every
intermediate tensor of every image in memory (gigabytes at 224 px), so the histograms are built here, a
bounded sample of each tensor's values per image, in one pass after the min/max pass that fixes their bins.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

BINS = 2048  # 8 bins a uint8 level at the full range: the rounding error inside a bin is negligible
VALUES_PER_IMAGE = 1 << 16  # a tensor's values sampled per image (an even stride), bounding the pass's cost
HISTOGRAM_IMAGES = 128  # the first this many calibration images (class-balanced prefix) make the histograms
# Each end of the range is tried at these fractions of its min/max value: 0.2..1.0 in steps of 0.025.
SHRINK = np.linspace(0.2, 1.0, 33)


class Histograms:
    """Each tensor's values over the images, binned on its min/max range (from the calibration's first pass)."""

    def __init__(self, ranges: Mapping[Hashable, tuple[float, float]]) -> None:
        self.ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items() if hi > lo}
        self.counts = {k: np.zeros(BINS, np.int64) for k in self.ranges}

    def add(self, key: Hashable, values: np.ndarray) -> None:
        """Count one image's (or batch's) values of tensor `key` (a strided sample of at most VALUES_PER_IMAGE)."""
        if key not in self.ranges:
            return
        flat = np.asarray(values).reshape(-1)
        if flat.size > VALUES_PER_IMAGE:
            flat = flat[::-(-flat.size // VALUES_PER_IMAGE)]
        lo, hi = self.ranges[key]
        idx = np.clip(((flat - lo) * (BINS / (hi - lo))).astype(np.int64), 0, BINS - 1)
        self.counts[key] += np.bincount(idx, minlength=BINS)

    def mse_ranges(self, levels: int = 256) -> dict[Hashable, tuple[float, float]]:
        """Each counted tensor's range minimising the expected squared error on `levels` levels."""
        out = {}
        for key, counts in self.counts.items():
            if counts.sum():
                lo, hi = self.ranges[key]
                out[key] = mse_range(counts, lo, hi, levels)
        return out


def mse_range(counts: np.ndarray, lo: float, hi: float, levels: int = 256) -> tuple[float, float]:
    """The (low, high) within [lo, hi] whose `levels`-level quantization of the histogrammed values errs least.

    Args:
        counts: value counts in len(counts) equal bins over [lo, hi].
        lo, hi: the min/max range; each end is shrunk towards 0 by the fractions SHRINK (0 stays inside, as every
            quantizer keeps it exactly representable).
        levels: 256 for 8 bits.

    Returns:
        The best range; (lo, hi) itself when nothing beats it.
    """
    counts = np.asarray(counts, np.float64)
    edges = np.linspace(lo, hi, len(counts) + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    weights = counts / max(counts.sum(), 1.0)
    keep = weights > 0
    centres, weights = centres[keep], weights[keep]
    lows = np.minimum(lo * SHRINK, 0.0) if lo < 0 else np.full(len(SHRINK), lo)
    highs = np.maximum(hi * SHRINK, 0.0) if hi > 0 else np.full(len(SHRINK), hi)
    def error(low: float, high: float) -> float:
        step = (high - low) / (levels - 1)
        q = np.clip(np.rint((centres - low) / step), 0, levels - 1) * step + low
        return float(weights @ (centres - q) ** 2)

    best, choice = error(lo, hi), (lo, hi)  # min/max unless a narrower range errs strictly less
    for low in np.unique(lows):
        for high in np.unique(highs):
            if high > low:
                err = error(low, high)
                if err < best:
                    best, choice = err, (float(low), float(high))
    return choice
