"""Bias correction for int8 kernels: each kernel put on the converter's int8 grid, the mean shift it causes undone.

Post-training int8 rounds every kernel to 255 levels per output channel. That rounding error is fixed,
and the layer's input is not zero-mean (it comes out of a ReLU), so the error shifts the layer's output
by the same amount on every image; every later layer carries the shift. On real photos with real
MobileNetV2 ImageNet weights this shift is most of the int8 error: int8 kernels alone (float
activations) moved the features by 34% of their spread across images and kept 81% top-1 agreement
with float; corrected, 7% and 95% (MobileNetV2 0.35 at 96; the TFLite int8-full file: 78 to 94%, and
82 to 87% with 1.0 at 224: BENCHMARKS.md, issue #13; the correction of Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction", with the input means
measured on calibration images).

`correct_int8_bias` changes a Keras model in place: each Conv2D, DepthwiseConv2D and Dense kernel is
rounded to the grid the TFLite converter uses (symmetric, -127..127, one scale max|w|/127 per output
channel, so the converter's own quantization of it is exact, BatchNormalization folded in or not),
and the expected shift, the rounding error applied to the layer's mean input over the calibration
images, is taken off: from the moving mean of the BatchNormalization that reads the layer, else from
the layer's bias. Layers with neither are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras

INT8_LEVELS = 127  # symmetric int8 kernels: -127..127, as TFLite and ONNX Runtime quantize them


def quantize_kernel(kernel: np.ndarray, reduce_axes: tuple[int, ...]) -> np.ndarray:
    """`kernel` rounded to symmetric int8 with one scale (max|w| / 127) per output channel, back in float."""
    absmax = np.abs(kernel).max(axis=reduce_axes, keepdims=True)
    scale = np.where(absmax > 0, absmax / INT8_LEVELS, 1.0)
    return (np.clip(np.rint(kernel / scale), -INT8_LEVELS, INT8_LEVELS) * scale).astype(kernel.dtype)


def correct_int8_bias(model: keras.Model, calibration: np.ndarray, *, batch: int = 16) -> list[str]:
    """Put `model`'s kernels on the int8 grid and absorb the mean shift; in place. Returns the corrected layers.

    Args:
        model: a Keras model (nested models included); changed in place, so pass a copy you can spare.
        calibration: (N, H, W, C) float32 images as the model takes them (edgetl: pixels 0..255).
        batch: images per forward pass while measuring the layers' mean inputs.
    """
    targets = _targets(model)
    if not targets or len(calibration) == 0:
        return []
    means = _mean_inputs(model, [layer for layer, _ in targets], calibration, batch)
    done = []
    for layer, reader in targets:
        kernel = np.asarray(layer.kernel.numpy())
        quantized = quantize_kernel(kernel, _reduce_axes(layer))
        shift = _mean_output(layer, means[id(layer)], quantized - kernel)
        layer.kernel.assign(quantized)
        if reader is not None:
            reader.moving_mean.assign(np.asarray(reader.moving_mean.numpy()) + shift)
        else:
            layer.bias.assign(np.asarray(layer.bias.numpy()) - shift)
        done.append(layer.name)
    return done


def _layers(model: Any) -> Iterator[Any]:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def _targets(model: keras.Model) -> list[tuple[Any, Any]]:
    """(layer, the BatchNormalization reading it or None) for every layer whose shift can be absorbed."""
    import keras

    layers = list(_layers(model))
    readers: dict[int, Any] = {}
    for bn in layers:
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        try:
            if bn.axis in (-1, len(bn.input.shape) - 1):
                readers[id(bn.input)] = bn
        except ValueError:  # a layer called more than once has no single input
            continue
    out = []
    for layer in layers:
        kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
        if not isinstance(layer, kinds) or isinstance(layer, keras.layers.Conv2DTranspose):
            continue
        if getattr(layer, "data_format", "channels_last") != "channels_last" or getattr(layer, "groups", 1) != 1:
            continue
        try:
            reader = readers.get(id(layer.output))
            rank = len(layer.input.shape)
        except ValueError:  # shared layer
            continue
        if (isinstance(layer, keras.layers.Dense) and rank != 2) or (reader is None and not layer.use_bias):
            continue
        out.append((layer, reader))
    return out


def _reduce_axes(layer: Any) -> tuple[int, ...]:
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (kh, kw, in, multiplier): a channel per (in, m)
        return (0, 1)
    return tuple(range(len(layer.kernel.shape) - 1))  # Conv2D (kh, kw, in, out), Dense (in, out)


def _mean_inputs(model: keras.Model, layers: list[Any], images: np.ndarray, batch: int) -> dict[int, np.ndarray]:
    """Each layer's input averaged over the images (over the batch axis only: a conv needs the spatial map)."""
    sums: dict[int, np.ndarray] = {}

    def hook(layer: Any) -> Any:
        call = layer.call

        def recording(inputs: Any, *args: Any, **kwargs: Any) -> Any:
            value = np.asarray(inputs, dtype=np.float64)
            sums[id(layer)] = sums.get(id(layer), 0.0) + value.sum(axis=0)
            return call(inputs, *args, **kwargs)

        return recording

    for layer in layers:
        layer.call = hook(layer)  # an instance attribute over the class's call, removed below
    try:
        for i in range(0, len(images), batch):
            model(np.asarray(images[i:i + batch], dtype=np.float32), training=False)  # eager: the hooks see values
    finally:
        for layer in layers:
            del layer.call
    return {key: (value / len(images)).astype(np.float32) for key, value in sums.items()}


def _mean_output(layer: Any, mean_input: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The layer's mean output change per channel when its kernel changes by `delta` (linear, so exact)."""
    import keras
    import tensorflow as tf

    if isinstance(layer, keras.layers.Dense):
        return (mean_input.astype(np.float64) @ delta.astype(np.float64)).astype(np.float32)
    x = tf.constant(mean_input[None])
    strides = (1, *layer.strides, 1)
    padding = layer.padding.upper()
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        y = tf.nn.depthwise_conv2d(x, delta, strides, padding, dilations=layer.dilation_rate)
    else:
        y = tf.nn.conv2d(x, delta, strides, padding, dilations=layer.dilation_rate)
    return np.asarray(y, dtype=np.float32).mean(axis=(0, 1, 2))
