"""Pretrain a small MobileNetV2 backbone on a synthetic shape/texture task, offline.

The machines that build and test edgetl have no network, so `weights="imagenet"` cannot be
downloaded. This script trains `MobileNetV2(alpha=0.35)` from scratch on a SOURCE task of
generated images (stars, crosses, ellipses, hexagons, rings, dots, checkerboards, gradients,
noise textures, line patterns, ...) and saves only the base model's weights. The classes
deliberately exclude plain filled circles, squares, triangles and horizontal/vertical stripes:
those are the demo's TARGET classes, so a transfer experiment measures transfer, not memorisation.

Usage:
    .venv/bin/python tools/pretrain_backbone.py --out models/mobilenet_v2_0.35_synthetic.weights.h5

Rebuild the base with the same constructor (any input size >= 32) and load the weights:
    base = keras.applications.MobileNetV2(input_shape=(S, S, 3), alpha=0.35, include_top=False,
                                          weights=None, pooling="avg")
    base.load_weights(path)
Inputs to the base are MobileNetV2 "tf"-mode preprocessed pixels (x / 127.5 - 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ALPHA = 0.35
SUPERSAMPLE = 2  # shapes are drawn at 2x and box-downsampled, for anti-aliased edges

Rng = np.random.Generator


# --------------------------------------------------------------------------- colours, canvases


def _colour(rng: Rng) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _contrasting(rng: Rng, other: np.ndarray, min_dist: float = 160.0) -> np.ndarray:
    """A random colour at least `min_dist` (L1 over RGB) away from `other`."""
    for _ in range(100):
        c = _colour(rng)
        if float(np.abs(c - other).sum()) >= min_dist:
            return c
    return 255.0 - other


def _background(rng: Rng, size: int) -> np.ndarray:
    """A flat random colour with a faint low-frequency tint (float32, HxWx3)."""
    bg = np.broadcast_to(_colour(rng), (size, size, 3)).astype(np.float32)
    if rng.random() < 0.5:
        low = rng.normal(0.0, 12.0, size=(3, 3, 3)).astype(np.float32)
        tint = np.stack(
            [np.asarray(Image.fromarray(low[..., c]).resize((size, size), Image.BILINEAR)) for c in range(3)], -1
        )
        bg = bg + tint
    return bg


def _coords(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (centred) rotated by `angle` radians: (u, v)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2.0
    ca, sa = math.cos(angle), math.sin(angle)
    return x * ca + y * sa, -x * sa + y * ca


def _oblique_angle(rng: Rng) -> float:
    """An angle at least 20 degrees away from horizontal and vertical."""
    deg = rng.uniform(20.0, 70.0) + 90.0 * rng.integers(0, 2)
    return math.radians(deg)


def _mask_canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    return img, ImageDraw.Draw(img), float(SUPERSAMPLE)


def _mask_array(img: Image.Image, size: int) -> np.ndarray:
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _centre_radius(rng: Rng, size: int, lo: float = 0.2, hi: float = 0.45) -> tuple[float, float, float]:
    r = rng.uniform(lo, hi) * size
    margin = r * 0.7
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    return cx, cy, r


def _regular_polygon(cx: float, cy: float, r: float, n: int, rot: float, k: float) -> list[tuple[float, float]]:
    return [
        (k * (cx + r * math.cos(rot + 2 * math.pi * i / n)), k * (cy + r * math.sin(rot + 2 * math.pi * i / n)))
        for i in range(n)
    ]


def _transform(points: list[tuple[float, float]], cx: float, cy: float, r: float, rot: float, k: float) -> list:
    ca, sa = math.cos(rot), math.sin(rot)
    return [(k * (cx + r * (x * ca - y * sa)), k * (cy + r * (x * sa + y * ca))) for x, y in points]


# --------------------------------------------------------------------------- shape masks (0..1)


def _star(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size)
    n = int(rng.integers(5, 9))
    inner = rng.uniform(0.35, 0.55)
    rot = rng.uniform(0, 2 * math.pi)
    pts = []
    for i in range(2 * n):
        rr = r if i % 2 == 0 else r * inner
        a = rot + math.pi * i / n
        pts.append((k * (cx + rr * math.cos(a)), k * (cy + rr * math.sin(a))))
    d.polygon(pts, fill=255)
    return _mask_array(img, size)


def _cross(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size)
    t = rng.uniform(0.18, 0.33)
    base = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)]
    d.polygon(_transform(base, cx, cy, r, rng.uniform(0, math.pi / 2), k), fill=255)
    return _mask_array(img, size)


def _ellipse(rng: Rng, size: int) -> np.ndarray:
    cx, cy, r = _centre_radius(rng, size, 0.25, 0.45)
    aspect = rng.uniform(0.25, 0.55)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a = rng.uniform(0, math.pi)
    ca, sa = math.cos(a), math.sin(a)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    q = (u / r) ** 2 + (v / (r * aspect)) ** 2
    return np.clip((1.0 - np.sqrt(q)) * r * aspect + 0.5, 0.0, 1.0)  # ~1 px soft edge


def _hexagon(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size)
    d.polygon(_regular_polygon(cx, cy, r, 6, rng.uniform(0, math.pi / 3), k), fill=255)
    return _mask_array(img, size)


def _ring(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size)
    w = max(1.5, r * rng.uniform(0.15, 0.35))
    d.ellipse([k * (cx - r), k * (cy - r), k * (cx + r), k * (cy + r)], outline=255, width=int(k * w))
    return _mask_array(img, size)


def _concentric(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.3, 0.48)
    n = int(rng.integers(3, 6))
    step = r / n
    w = max(1.0, step * rng.uniform(0.35, 0.55))
    for i in range(1, n + 1):
        rr = step * i
        d.ellipse([k * (cx - rr), k * (cy - rr), k * (cx + rr), k * (cy + rr)], outline=255, width=int(k * w))
    return _mask_array(img, size)


def _crescent(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.25, 0.45)
    d.ellipse([k * (cx - r), k * (cy - r), k * (cx + r), k * (cy + r)], fill=255)
    a = rng.uniform(0, 2 * math.pi)
    off = r * rng.uniform(0.35, 0.6)
    ox, oy = cx + off * math.cos(a), cy + off * math.sin(a)
    r2 = r * rng.uniform(0.85, 1.0)
    d.ellipse([k * (ox - r2), k * (oy - r2), k * (ox + r2), k * (oy + r2)], fill=0)
    return _mask_array(img, size)


def _polygon_outline(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size)
    n = int(rng.integers(5, 9))
    pts = _regular_polygon(cx, cy, r, n, rng.uniform(0, 2 * math.pi), k)
    w = max(1.5, r * rng.uniform(0.12, 0.25))
    d.line([*pts, pts[0], pts[1]], fill=255, width=int(k * w), joint="curve")
    return _mask_array(img, size)


def _arrow(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.28, 0.45)
    t = rng.uniform(0.12, 0.22)
    h = rng.uniform(0.35, 0.55)
    base = [(-1, -t), (1 - h, -t), (1 - h, -2.5 * t), (1, 0), (1 - h, 2.5 * t), (1 - h, t), (-1, t)]
    d.polygon(_transform(base, cx, cy, r, rng.uniform(0, 2 * math.pi), k), fill=255)
    return _mask_array(img, size)


def _dots(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    n = int(rng.integers(8, 30))
    rad = rng.uniform(0.025, 0.06) * size
    for _ in range(n):
        x, y = rng.uniform(0, size, size=2)
        rr = rad * rng.uniform(0.8, 1.2)
        d.ellipse([k * (x - rr), k * (y - rr), k * (x + rr), k * (y + rr)], fill=255)
    return _mask_array(img, size)


def _sine_wave(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.35, 0.5)
    amp = rng.uniform(0.15, 0.35)
    cycles = rng.uniform(1.5, 3.0)
    xs = np.linspace(-1, 1, 60)
    pts = [(float(x), float(amp * math.sin(math.pi * cycles * x))) for x in xs]
    w = max(1.5, size * rng.uniform(0.035, 0.07))
    d.line(_transform(pts, cx, cy, r, rng.uniform(0, 2 * math.pi), k), fill=255, width=int(k * w), joint="curve")
    return _mask_array(img, size)


def _zigzag(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.35, 0.5)
    n = int(rng.integers(3, 7))
    amp = rng.uniform(0.2, 0.4)
    pts = [(-1 + 2 * i / n, amp * (1 if i % 2 else -1)) for i in range(n + 1)]
    w = max(1.5, size * rng.uniform(0.035, 0.07))
    d.line(_transform(pts, cx, cy, r, rng.uniform(0, 2 * math.pi), k), fill=255, width=int(k * w), joint="curve")
    return _mask_array(img, size)


def _spiral(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    cx, cy, r = _centre_radius(rng, size, 0.3, 0.48)
    turns = rng.uniform(2.0, 3.5)
    th = np.linspace(0, 2 * math.pi * turns, 160)
    rr = th / th[-1]
    sign = 1 if rng.random() < 0.5 else -1
    pts = [(float(a * math.cos(sign * t)), float(a * math.sin(sign * t))) for a, t in zip(rr, th, strict=True)]
    w = max(1.2, r / (turns * 2.5))
    d.line(_transform(pts, cx, cy, r, rng.uniform(0, 2 * math.pi), k), fill=255, width=int(k * w), joint="curve")
    return _mask_array(img, size)


def _scribble(rng: Rng, size: int) -> np.ndarray:
    img, d, k = _mask_canvas(size)
    n = int(rng.integers(4, 9))
    pts = [(float(k * x), float(k * y)) for x, y in rng.uniform(0.1 * size, 0.9 * size, size=(n, 2))]
    w = max(1.5, size * rng.uniform(0.03, 0.06))
    d.line(pts, fill=255, width=int(k * w), joint="curve")
    return _mask_array(img, size)


# --------------------------------------------------------------------------- texture masks (0..1)


def _checkerboard(rng: Rng, size: int) -> np.ndarray:
    u, v = _coords(size, rng.uniform(0, math.pi / 2))
    p = rng.uniform(0.08, 0.2) * size
    u, v = u + rng.uniform(0, p), v + rng.uniform(0, p)
    return ((np.floor(u / p) + np.floor(v / p)) % 2).astype(np.float32)


def _oblique_lines(rng: Rng, size: int) -> np.ndarray:
    u, _ = _coords(size, _oblique_angle(rng))
    p = rng.uniform(0.1, 0.25) * size
    frac = ((u + rng.uniform(0, p)) / p) % 1.0
    return (frac < rng.uniform(0.25, 0.5)).astype(np.float32)


def _grid(rng: Rng, size: int) -> np.ndarray:
    u, v = _coords(size, _oblique_angle(rng))
    p = rng.uniform(0.12, 0.25) * size
    w = rng.uniform(0.12, 0.25)
    fu = ((u + rng.uniform(0, p)) / p) % 1.0
    fv = ((v + rng.uniform(0, p)) / p) % 1.0
    return ((fu < w) | (fv < w)).astype(np.float32)


def _linear_gradient(rng: Rng, size: int) -> np.ndarray:
    u, _ = _coords(size, rng.uniform(0, 2 * math.pi))
    span = size * rng.uniform(0.7, 1.4)
    return np.clip(u / span + 0.5, 0.0, 1.0)


def _radial_gradient(rng: Rng, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    r = rng.uniform(0.4, 0.9) * size
    return np.clip(1.0 - np.hypot(x - cx, y - cy) / r, 0.0, 1.0)


def _noise_texture(rng: Rng, size: int) -> np.ndarray:
    g = int(rng.integers(4, 10))
    low = rng.random((g, g)).astype(np.float32)
    up = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    up = (up - up.min()) / max(1e-6, float(up.max() - up.min()))
    if rng.random() < 0.5:  # blobs: sharpen into a two-tone pattern
        up = np.clip((up - 0.5) * 6.0 + 0.5, 0.0, 1.0)
    return up


SHAPES: dict[str, Callable[[Rng, int], np.ndarray]] = {
    "star": _star,
    "cross": _cross,
    "ellipse": _ellipse,
    "hexagon": _hexagon,
    "ring": _ring,
    "concentric_rings": _concentric,
    "crescent": _crescent,
    "polygon_outline": _polygon_outline,
    "arrow": _arrow,
    "dots": _dots,
    "sine_wave": _sine_wave,
    "zigzag": _zigzag,
    "spiral": _spiral,
    "scribble": _scribble,
    "checkerboard": _checkerboard,
    "oblique_lines": _oblique_lines,
    "grid": _grid,
    "linear_gradient": _linear_gradient,
    "radial_gradient": _radial_gradient,
    "noise_texture": _noise_texture,
}
CLASSES: list[str] = list(SHAPES)
_TEXTURES = {"checkerboard", "oblique_lines", "grid", "linear_gradient", "radial_gradient", "noise_texture"}


def render(name: str, rng: Rng, size: int) -> np.ndarray:
    """Render one image of class `name` as uint8 HxWx3."""
    mask = SHAPES[name](rng, size)[..., None]
    bg = _background(rng, size)
    fg_colour = _contrasting(rng, bg[0, 0])
    if name in _TEXTURES and rng.random() < 0.3:  # texture confined to a random rectangle
        y0, x0 = rng.integers(0, size // 3, size=2)
        y1, x1 = rng.integers(2 * size // 3, size + 1, size=2)
        box = np.zeros((size, size, 1), np.float32)
        box[y0:y1, x0:x1] = 1.0
        mask = mask * box
    img = bg * (1.0 - mask) + fg_colour * mask
    img += rng.normal(0.0, rng.uniform(2.0, 20.0), size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_dataset(images_per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The SOURCE data set: (uint8 images NxSxSx3, int labels N), shuffled, deterministic by seed."""
    rng = np.random.default_rng(seed)
    n = images_per_class * len(CLASSES)
    x = np.empty((n, size, size, 3), np.uint8)
    y = np.empty((n,), np.int64)
    i = 0
    for _ in range(images_per_class):
        for label, name in enumerate(CLASSES):
            x[i] = render(name, rng, size)
            y[i] = label
            i += 1
    order = rng.permutation(n)
    return x[order], y[order]


# --------------------------------------------------------------------------- model and training


def build_base(size: int) -> Any:
    """The backbone, exactly as users rebuild it (any input size >= 32)."""
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=ALPHA, include_top=False, weights=None, pooling="avg"
    )


def build_classifier(base: Any, size: int, num_classes: int, dropout: float = 0.2) -> Any:
    """Pixels 0..255 -> light augmentation -> Rescaling ("tf" mode) -> base -> Dropout -> Dense softmax."""
    import keras

    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.RandomFlip("horizontal_and_vertical", name="aug_flip")(inputs)
    x = keras.layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", name="aug_shift")(x)
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")(x)
    x = base(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="pretrain_classifier")


class _TimeBudget:
    """Keras callback factory: stop training when the next epoch would overrun `seconds`."""

    @staticmethod
    def make(seconds: float, start: float) -> Any:
        import keras

        class Budget(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.epochs_done = 0
                self.t_epoch = time.monotonic()
                self.longest = 0.0

            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self.t_epoch = time.monotonic()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                self.epochs_done = epoch + 1
                self.longest = max(self.longest, time.monotonic() - self.t_epoch)
                if seconds > 0 and time.monotonic() - start + self.longest > seconds:
                    print(f"time budget: stopping after epoch {epoch + 1} ({seconds:.0f} s budget)", flush=True)
                    self.model.stop_training = True

        return Budget()


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary path in path's folder (same suffixes), then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _command() -> str:
    exe = sys.executable
    rel = os.path.relpath(exe)
    return shlex.join([rel if not rel.startswith("..") else exe, *sys.argv])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output .weights.h5 path (base model only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--images-per-class", type=int, default=400)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--bn-momentum", type=float, default=0.99, help="BatchNormalization momentum while training")
    p.add_argument(
        "--time-budget", type=float, default=600.0, help="stop after the epoch that would overrun this many seconds"
    )
    args = p.parse_args(argv)
    if not args.out.name.endswith(".weights.h5"):
        p.error("--out must end with .weights.h5 (Keras 3 weights format)")
    if args.image_size < 32:
        p.error("--image-size must be >= 32 (MobileNetV2 minimum)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Generate the source data, train, save the base weights and a JSON description."""
    args = parse_args(argv)
    t0 = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    size = args.image_size

    x, y = make_dataset(args.images_per_class, size, args.seed)
    n_val = max(len(CLASSES), int(round(len(x) * args.val_fraction)))
    x_val, y_val, x_tr, y_tr = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    print(
        f"source data: {len(CLASSES)} classes, {len(x_tr)} train + {len(x_val)} val images at {size}x{size} "
        f"({time.monotonic() - t0:.1f} s)",
        flush=True,
    )

    base = build_base(size)
    # Keras' MobileNetV2 uses BatchNormalization(momentum=0.999): too slow for a ~2k-step run from scratch,
    # the moving statistics would lag the weights. The momentum is not saved with the weights.
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = args.bn_momentum
    model = build_classifier(base, size, len(CLASSES))
    steps = math.ceil(len(x_tr) / args.batch_size) * args.epochs
    lr = keras.optimizers.schedules.CosineDecay(args.learning_rate, decay_steps=steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"base params: {base.count_params():,}", flush=True)

    def pipe(xs: np.ndarray, ys: np.ndarray, shuffle: bool) -> Any:
        ds = tf.data.Dataset.from_tensor_slices((xs, ys))
        if shuffle:
            ds = ds.shuffle(len(xs), seed=args.seed, reshuffle_each_iteration=True)
        ds = ds.batch(args.batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b))
        return ds.prefetch(tf.data.AUTOTUNE)

    budget = _TimeBudget.make(args.time_budget, t0)
    history = model.fit(
        pipe(x_tr, y_tr, True),
        validation_data=pipe(x_val, y_val, False),
        epochs=args.epochs,
        verbose=2,
        callbacks=[budget],
    )
    train_acc = float(model.evaluate(pipe(x_tr, y_tr, False), verbose=0)[1])
    val_acc = float(model.evaluate(pipe(x_val, y_val, False), verbose=0)[1])
    print(f"source task: train accuracy {train_acc:.4f} (no augmentation), val accuracy {val_acc:.4f}", flush=True)

    out: Path = args.out
    _atomic_write(out, lambda p: base.save_weights(str(p)))
    meta_path = out.with_name(out.name.removesuffix(".weights.h5") + ".json")
    meta = {
        "weights_file": out.name,
        "weights_sha256": _sha256(out),
        "weights_bytes": out.stat().st_size,
        "architecture": "keras.applications.MobileNetV2",
        "constructor": {
            "input_shape": [size, size, 3],
            "alpha": ALPHA,
            "include_top": False,
            "weights": None,
            "pooling": "avg",
        },
        "trained_input_size": size,
        "preprocessing": "tf",
        "preprocessing_note": "pixels 0..255 -> x / 127.5 - 1 (keras.layers.Rescaling(1/127.5, offset=-1))",
        "base_params": int(base.count_params()),
        "source_task": {
            "classes": CLASSES,
            "num_classes": len(CLASSES),
            "images_per_class": args.images_per_class,
            "train_images": len(x_tr),
            "val_images": len(x_val),
            "excluded_target_like_classes": ["filled circles", "squares", "triangles", "horizontal/vertical stripes"],
        },
        "training": {
            "epochs_requested": args.epochs,
            "epochs_run": len(history.history["loss"]),
            "batch_size": args.batch_size,
            "bn_momentum": args.bn_momentum,
            "optimizer": "Adam",
            "learning_rate": args.learning_rate,
            "schedule": "cosine decay",
            "augmentation": ["RandomFlip(horizontal_and_vertical)", "RandomTranslation(0.08, 0.08)"],
            "seed": args.seed,
        },
        "source_train_accuracy": round(train_acc, 4),
        "source_val_accuracy": round(val_acc, 4),
        "wall_time_s": round(time.monotonic() - t0, 1),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "numpy_version": np.__version__,
        "command": _command(),
    }
    _atomic_write(meta_path, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8"))
    wall = time.monotonic() - t0
    print(
        f"done: source val accuracy {val_acc:.4f}, wall time {wall:.1f} s, "
        f"{out} {out.stat().st_size / 1e6:.2f} MB, {meta_path.name} written",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
