"""Bias correction of a quantized TFLite file: the mean shift its int8 kernels cause, taken off each bias.

Post-training int8 rounds every kernel to 255 levels per output channel. The rounding error is the same
on every image and the layer's input is not zero-mean (it comes out of a ReLU), so the layer's output
moves by the same amount on every image and every later layer carries it; on real photos with real
MobileNetV2 weights this is most of int8's error (BENCHMARKS.md, issue #13). The correction of Nagel et
al. 2019 ("Data-Free Quantization Through Weight Equalization and Bias Correction"), with each layer's
mean input measured on the calibration images: the expected shift, the kernel's rounding error applied to
that mean input, comes off the layer's quantized bias.

It works on the files themselves, after the quantizer: the float graph the quantizer read gives each
kernel as it was, the quantized file the kernel as the quantizer rounded it (per channel or per tensor,
whatever it chose) and the bias's scale, and the calibration pass gives the mean inputs
(edgetl.export.calibration.collect_statistics). Ops are matched across the two graphs by their output
tensor's name, which the quantizer keeps. Nothing but the int32/int64 bias values changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.export.flatbuffer import read_model, write_model

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import ModelT

log = logging.getLogger("edgetl")


@dataclass(frozen=True)
class _Kernel:
    """One CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op of a graph, found by its output's name."""

    kind: str  # "conv", "depthwise" or "dense"
    input: int  # the activation input's tensor index
    weights: int
    bias: int  # -1: none
    options: Any


def _kernels(model: ModelT) -> dict[str, _Kernel]:
    """The graph's kernel ops by output tensor name (one subgraph; names seen twice are left out)."""
    from ai_edge_litert.schema_py_generated import BuiltinOperator

    kinds = {BuiltinOperator.CONV_2D: "conv", BuiltinOperator.DEPTHWISE_CONV_2D: "depthwise",
             BuiltinOperator.FULLY_CONNECTED: "dense"}
    codes = [max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) for c in model.operatorCodes or []]
    subgraph = model.subgraphs[0]
    found: dict[str, _Kernel] = {}
    seen: set[str] = set()
    for op in subgraph.operators or []:
        kind = kinds.get(codes[op.opcodeIndex])
        inputs = [int(i) for i in op.inputs]
        if kind is None or len(inputs) < 2 or len(op.outputs) != 1 or inputs[1] < 0:
            continue
        name = _name(subgraph.tensors[int(op.outputs[0])])
        if name in seen:
            found.pop(name, None)
            continue
        seen.add(name)
        found[name] = _Kernel(kind, inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else -1,
                              op.builtinOptions)
    return found


def _name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else str(name)


def kernel_inputs(graph: bytes) -> dict[int, str]:
    """The float graph's tensors whose mean the correction needs: each kernel op's activation input, by index.

    Only ops with a constant float32 kernel and a bias count: the others cannot be corrected.
    """
    from ai_edge_litert.schema_py_generated import TensorType

    model = read_model(graph)
    if len(model.subgraphs or []) != 1:
        return {}
    tensors = model.subgraphs[0].tensors
    out = {}
    for kernel in _kernels(model).values():
        weights = tensors[kernel.weights]
        if kernel.bias < 0 or weights.type != TensorType.FLOAT32 or _data(model, weights) is None:
            continue
        out[kernel.input] = _name(tensors[kernel.input])
    return out


def correct_bias(quantized: bytes, float_graph: bytes, means: dict[str, np.ndarray]) -> tuple[bytes, list[str]]:
    """`quantized` with each int8 kernel's mean shift taken off its bias; and the corrected ops' output names.

    Args:
        quantized: the quantizer's output (int8, int8-full or int16x8) of `float_graph`.
        float_graph: the float32 graph it was quantized from (the calibrated model).
        means: each kernel op's input averaged over the calibration images (batch axis only), by tensor name.

    Ops that cannot be matched, whose kernel is not int8 or whose bias is not an integer tensor with one
    scale per output channel (or one for all) are left as they are.
    """
    from ai_edge_litert.schema_py_generated import TensorType

    source, target = read_model(float_graph), read_model(quantized)
    if len(source.subgraphs or []) != 1 or len(target.subgraphs or []) != 1:
        return quantized, []
    src_tensors, tensors = source.subgraphs[0].tensors, target.subgraphs[0].tensors
    floats = _kernels(source)
    users = _buffer_users(target)
    done = []
    for name, kernel in _kernels(target).items():
        ref = floats.get(name)
        mean = means.get(_name(src_tensors[ref.input])) if ref is not None else None
        if ref is None or mean is None or kernel.bias < 0 or ref.kind != kernel.kind:
            continue
        w_t, b_t = tensors[kernel.weights], tensors[kernel.bias]
        if w_t.type != TensorType.INT8 or b_t.type not in (TensorType.INT32, TensorType.INT64):
            continue
        original = _data(source, src_tensors[ref.weights])
        rounded = _dequantize(target, w_t)
        bias = _data(target, b_t)
        bias_scale = _scales(b_t)
        if original is None or rounded is None or bias is None or bias_scale is None \
                or original.shape != rounded.shape:
            continue
        shift = mean_shift(kernel.kind, rounded.astype(np.float64) - original, mean, kernel.options)
        if shift is None or len(shift) != len(bias) or len(bias_scale) not in (1, len(bias)):
            continue
        steps = np.rint(shift / bias_scale.astype(np.float64))
        info = np.iinfo(bias.dtype)
        new = np.clip(bias.astype(np.float64) - steps, info.min, info.max).astype(bias.dtype)
        _set_data(target, b_t, new, users)
        done.append(name)
    log.debug("TFLite bias correction: %d of %d kernel ops corrected", len(done), len(floats))
    if not done:
        return quantized, []
    return write_model(target), done


def mean_shift(kind: str, delta: np.ndarray, mean: np.ndarray, options: Any) -> np.ndarray | None:
    """Each output channel's mean change when the kernel changes by `delta` and the input is `mean` (linear: exact)."""
    if kind == "dense":  # weights (out, in); the input's last axis is `in`
        vector = mean.reshape(-1, mean.shape[-1]).mean(axis=0)
        return delta @ vector if delta.ndim == 2 and delta.shape[1] == vector.shape[0] else None
    if mean.ndim != 3 or delta.ndim != 4:
        return None
    taps = _tap_means(mean, delta.shape[1], delta.shape[2], options)
    if kind == "conv":  # weights (out, kh, kw, in)
        if delta.shape[3] != mean.shape[2]:
            return None  # a grouped convolution
        return np.tensordot(delta, taps, axes=3)
    multiplier = delta.shape[3] // mean.shape[2]  # depthwise weights (1, kh, kw, in * multiplier)
    if multiplier < 1 or delta.shape[3] != multiplier * mean.shape[2]:
        return None
    return (delta[0] * np.repeat(taps, multiplier, axis=2)).sum(axis=(0, 1))


def _tap_means(mean: np.ndarray, kh: int, kw: int, options: Any) -> np.ndarray:
    """(kh, kw, channels): the input each kernel tap reads, averaged over the output positions (padding reads 0)."""
    from ai_edge_litert.schema_py_generated import Padding

    same = options.padding == Padding.SAME
    steps = []
    for size, k, stride, dilation in ((mean.shape[0], kh, options.strideH, options.dilationHFactor),
                                      (mean.shape[1], kw, options.strideW, options.dilationWFactor)):
        stride, dilation = max(int(stride), 1), max(int(dilation), 1)
        span = (k - 1) * dilation + 1
        out = -(-size // stride) if same else max((size - span) // stride + 1, 1)
        before = max((out - 1) * stride + span - size, 0) // 2 if same else 0
        steps.append((out, stride, dilation, before))
    (oh, sh, dh, top), (ow, sw, dw, left) = steps
    padded = np.pad(mean.astype(np.float64), ((top, kh * dh + oh * sh), (left, kw * dw + ow * sw), (0, 0)))
    taps = np.empty((kh, kw, mean.shape[2]))
    for i in range(kh):
        for j in range(kw):
            window = padded[i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            taps[i, j] = window.mean(axis=(0, 1))
    return taps




_DTYPES = {"FLOAT32": np.float32, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64}


def _data(model: ModelT, tensor: Any) -> np.ndarray | None:
    """A constant tensor's values in its shape (None: not constant, or a type not read here)."""
    from ai_edge_litert.schema_py_generated import TensorType

    names = {getattr(TensorType, k): v for k, v in _DTYPES.items()}
    buffer = model.buffers[tensor.buffer] if 0 < tensor.buffer < len(model.buffers) else None
    if buffer is None or buffer.data is None or tensor.type not in names or len(buffer.data) == 0:
        return None
    values = np.asarray(buffer.data, dtype=np.uint8).view(names[tensor.type])
    shape = [int(d) for d in tensor.shape] if tensor.shape is not None else [len(values)]
    return values.reshape(shape) if int(np.prod(shape)) == len(values) else None


def _scales(tensor: Any) -> np.ndarray | None:
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    return np.asarray(q.scale, dtype=np.float64)


def _dequantize(model: ModelT, tensor: Any) -> np.ndarray | None:
    """An int8 kernel in float, as the runtime sees it (scale and zero point, per channel or per tensor)."""
    values, scale = _data(model, tensor), _scales(tensor)
    if values is None or scale is None:
        return None
    q = tensor.quantization
    zero = np.asarray(q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else [0], dtype=np.float64)
    if len(scale) == 1:
        return (values.astype(np.float64) - zero[0]) * scale[0]
    axis = int(q.quantizedDimension)
    if values.shape[axis] != len(scale):
        return None
    shape = [1] * values.ndim
    shape[axis] = len(scale)
    zero = zero if len(zero) == len(scale) else np.full(len(scale), zero[0])
    return (values.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)


def _buffer_users(model: ModelT) -> dict[int, int]:
    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            users[tensor.buffer] = users.get(tensor.buffer, 0) + 1
    return users


def _set_data(model: ModelT, tensor: Any, values: np.ndarray, users: dict[int, int]) -> None:
    """Write a constant tensor's values; a buffer other tensors share (the quantizer dedupes them) is copied first."""
    from ai_edge_litert.schema_py_generated import BufferT

    raw = np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8)
    if users.get(tensor.buffer, 0) > 1:
        users[tensor.buffer] -= 1
        buffer = BufferT()
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
        users[tensor.buffer] = 1
    model.buffers[tensor.buffer].data = raw
