"""Generated test pictures shared by test modules (not a test module itself)."""

from __future__ import annotations

import numpy as np


def smooth_pictures(n: int = 48, seed: int = 1, size: int = 32) -> np.ndarray:
    """Smooth random pictures (pixels 0..255, float32): blobs of colour, as photos have, not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.zeros((n, size, size, 3), np.float32)
    for i in range(n):
        for _ in range(4):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.5)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            out[i] += blob[..., None] * rng.uniform(0, 255, 3)
    return np.clip(out / out.max(axis=(1, 2, 3), keepdims=True) * 255, 0, 255).astype(np.float32)
