"""Magnitude pruning of the tf_keras twin (element-wise or in blocks), and what it achieved.

A pruned run's weights are sparse: its files compress well (gzip_size), and kernel_sparsity says
how much of the prunable weights are zero.
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ModelError, first_line
from edgetl.optimize.twin import weighted_layers

if TYPE_CHECKING:
    import numpy as np

# Layers whose kernels pruning acts on (and whose sparsity is reported). Depthwise kernels are left
# dense: they hold about 2% of a MobileNet's weights, and pruning them costs accuracy for no size.
PRUNABLE = ("Conv2D", "Dense", "SeparableConv2D")
# The weights pruning zeroes (tfmot's registry: a SeparableConv2D loses pointwise weights only).
PRUNED_WEIGHTS = ("kernel", "pointwise_kernel")


def prune_for_training(twin: Any, tfk: Any, tfmot: Any, *, sparsity: float, schedule: str, end_step: int,
                       block: int = 1) -> Any:
    """`twin` with prune_low_magnitude on every trainable Conv2D, Dense and SeparableConv2D layer.

    polynomial: sparsity rises from 0 to `sparsity` over `end_step` steps (tfmot's PolynomialDecay);
    constant: `sparsity` from the first step. block > 1: Dense layers and 1x1 convolutions lose weights
    in runs of `block` consecutive input channels, ranked by their mean magnitude; other kernels lose
    them one by one. tfmot prunes in blocks only rank-2 kernels, so 1x1 convolutions train here as the
    Dense layers they equal; copy_weights puts their kernels back in the Conv2D shape.
    """
    s = tfmot.sparsity.keras
    freq = max(1, min(100, end_step // 10))
    # Pruning happens every `freq` steps up to end_step: end on a multiple, or the last step is skipped
    # and the target sparsity never reached.
    end_step = max(freq, end_step // freq * freq)
    if schedule == "polynomial":
        sched = s.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0,
                                  end_step=max(1, end_step), frequency=freq)
    else:
        sched = s.ConstantSparsity(float(sparsity), begin_step=0, frequency=freq)

    def wrap(layer: Any) -> Any:
        if layer.__class__.__name__ not in PRUNABLE or not layer.trainable:
            return layer
        if block > 1 and _is_pointwise(layer) and _blockable(layer.kernel.shape[2:], block):
            layer = _as_dense(layer, tfk)
        blocks = block > 1 and layer.__class__.__name__ == "Dense" and _blockable(layer.kernel.shape, block)
        return s.prune_low_magnitude(layer, pruning_schedule=sched, block_size=(block, 1) if blocks else (1, 1))

    try:
        return tfk.models.clone_model(twin, clone_function=wrap)
    except Exception as exc:
        raise ModelError(f"tfmot cannot prune this model: {first_line(exc)}.") from None


def _blockable(shape: Sequence[int], block: int) -> bool:
    """True for a kernel [in, out] that tfmot can prune in blocks of `block` inputs.

    More than one block along `in` and more than one output: tfmot squeezes the pooled block
    magnitudes and fails on a single row or column (EfficientNet's squeeze-excite convolutions
    have 4 inputs). Exported, such a kernel is stored [out, in] (TFLite, ONNX), so a block along
    `in` is a run of consecutive zeros in the file, which gzip compresses best.
    """
    dims = [int(d) for d in shape]
    return len(dims) == 2 and dims[0] > block and dims[1] > 1


def _is_pointwise(layer: Any) -> bool:
    """A channels-last 1x1 Conv2D with stride 1: the same function as a Dense layer on the last axis."""
    if layer.__class__.__name__ != "Conv2D":
        return False
    cfg = layer.get_config()
    return (tuple(cfg["kernel_size"]) == (1, 1) and tuple(cfg["strides"]) == (1, 1)
            and tuple(cfg["dilation_rate"]) == (1, 1) and int(cfg.get("groups", 1)) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def _as_dense(conv: Any, tfk: Any) -> Any:
    """A built tf_keras Dense with `conv`'s name, activation and weights (kernel [1,1,in,out] to [in,out])."""
    kernel, *rest = conv.get_weights()
    dense = tfk.layers.Dense(kernel.shape[-1], activation=conv.activation, use_bias=conv.use_bias, name=conv.name)
    dense.build((None, None, None, kernel.shape[2]))
    dense.set_weights([kernel.reshape(kernel.shape[2:]), *rest])
    return dense


def mixed_block_runs(kernel: np.ndarray, block: int) -> tuple[int, int]:
    """(partly zero, all) runs of `block` consecutive inputs, per output, in a kernel [in, out].

    Pruning in blocks leaves every run all zero or all kept: 0 partly zero runs. The last run may be
    shorter, as tfmot pads it.
    """
    import numpy as np

    zero = np.asarray(kernel) == 0
    mixed = total = 0
    for i in range(0, zero.shape[0], block):
        run = zero[i:i + block]
        mixed += int((run.any(axis=0) & ~run.all(axis=0)).sum())
        total += run.shape[1]
    return mixed, total


def kernel_sparsity(model: Any) -> float:
    """Fraction of exact zeros over the kernels pruning acts on: Conv2D, Dense, SeparableConv2D's pointwise."""
    import numpy as np

    zeros = total = 0
    for layer in weighted_layers(model):
        if layer.__class__.__name__ not in PRUNABLE or not layer.trainable and layer.name == "preprocess_caffe":
            continue
        for w in layer.weights:
            if w.name.split("/")[-1].split(":")[0] in PRUNED_WEIGHTS:
                arr = np.asarray(w)
                zeros += int((arr == 0).sum())
                total += arr.size
    return zeros / total if total else 0.0


def gzip_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the file (or folder, files concatenated) after gzip -9: what a sparse model costs to ship."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for f in files:
            gz.write(f.read_bytes())
    return len(buf.getvalue())


# polynomial: the target sparsity is reached after this share of the training steps, and kept after.
POLYNOMIAL_SHARE = 0.7


def pruning_end_step(steps_per_epoch: int, epochs: int, schedule: str) -> int:
    """The step at which pruning reaches its target: 70% of training for polynomial, the first for constant."""
    return max(1, int(steps_per_epoch * epochs * POLYNOMIAL_SHARE)) if schedule == "polynomial" else 1
