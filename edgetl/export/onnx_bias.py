"""Bias correction of a static int8 (QDQ) ONNX file: the mean shift its int8 kernels cause, taken off each bias.

The ONNX counterpart of edgetl.export.tflite_bias (read there why: each kernel's int8 rounding error,
applied to a layer input that is not zero-mean, moves the layer's mean output on every image, and every
later layer carries it). It works on the files themselves, after ONNX Runtime's quantizer: the float
model the quantizer read gives each kernel as it was, the QDQ model the kernel as the quantizer rounded
it (DequantizeLinear of an int8 initializer, per channel or per tensor) and the int32 bias with its
scale, and the calibration pass gives each kernel node's mean input.

The calibration pass is edgetl's own (collect_statistics): the float model in ONNX Runtime with every
tensor ORT's MinMax calibrator would calibrate made an output, one image per call and no graph
optimisation, as ORT's calibrator runs it, so the ranges are ORT's own to the bit; the kernel inputs'
means come out of the same pass. The ranges go to quantize_static as its calibration cache.

Nodes are matched across the two models by node name (the quantizer keeps it; it does not keep a Conv's
output name when it drops the Relu/Clip after it), else by output name. Nothing but int32 bias
initializers changes (a shared one is copied first), so the file stays standard ONNX.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger("edgetl")

KERNEL_OPS = ("Conv", "Gemm", "MatMul")
INT32 = np.iinfo(np.int32)


@dataclass
class Statistics:
    """What one pass over the calibration images measured."""

    ranges: dict[str, tuple[float, float]]  # each calibrated tensor's (min, max), by name
    means: dict[str, np.ndarray] = field(default_factory=dict)  # asked-for tensors averaged over the images


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def kernel_inputs(model: Any) -> list[str]:
    """The activation inputs of `model`'s nodes a correction can apply to: whose mean the correction needs.

    Conv and Gemm nodes with a constant weight and a constant bias. MatMul has no bias input: ORT's QDQ
    quantizer quantizes MatMul's output and writes the Add after it with a uint8 bias of one scale, with
    no int32 bias to correct (edgetl's files have none: ORT's offline optimisation makes MatMul+Add a Gemm).
    """
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[1] in inits \
                and node.input[2] in inits and node.input[0] not in out:
            out.append(node.input[0])
    return out


def calibrated_tensors(model: Any, op_types: Iterable[str] | None = None) -> list[str]:
    """The tensors ORT's calibrator calibrates in `model` (shape-inferred): float inputs/outputs of quantizable ops.

    The same selection as onnxruntime.quantization.calibrate.CalibraterBase.select_tensors_to_calibrate.
    """
    from onnx import TensorProto

    if op_types is None:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        op_types = set(QLinearOpsRegistry) | set(QDQRegistry)  # quantize_static's default op types
    op_types = set(op_types)
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    inits = {i.name for i in model.graph.initializer}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    found: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            vi = infos.get(name)
            if vi is not None and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in floats \
                    and name not in inits:
                found[name] = None
    return list(found)


def collect_statistics(model: Any, images: np.ndarray, input_name: str,
                       means_of: Sequence[str] = (), op_types: Iterable[str] | None = None) -> Statistics:
    """Each calibrated tensor's (min, max) over `images`, and the tensors `means_of` names averaged over them.

    Args:
        model: the float ModelProto quantize_static will read, shape-inferred
            (onnxruntime.quantization.quant_utils.load_model_with_shape_infer).
        images: (N, H, W, 3) calibration images, fed as float32 one at a time (as ORT's calibrator feeds them).
        input_name: the model's input.
        means_of: tensors to average over the images (batch axis only: a conv input keeps its (C, H, W) map;
            the first edgetl.export.images.MEAN_IMAGES images).
        op_types: the op types the quantizer will quantize (None: quantize_static's default ones).

    Returns:
        The ranges (ORT's MinMax calibration of the same images, to the bit) and the means (float32).
    """
    import onnxruntime as ort

    from edgetl.export.images import MEAN_IMAGES

    wanted = calibrated_tensors(model, op_types)
    inputs = {vi.name for vi in model.graph.input}
    averaged = [n for n in dict.fromkeys(means_of) if n not in inputs]
    augmented, reduced = _augmented(model, [n for n in wanted if n not in inputs], averaged)
    options = ort.SessionOptions()
    # ORT's calibrator runs the model unoptimised; so does this pass, so that the ranges are the same numbers.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ranged = [o for pair in reduced.values() for o in pair]
    fetch = [*averaged, *ranged]
    low = {n: np.inf for n in wanted}
    high = {n: -np.inf for n in wanted}
    # Per-image float32 sums in place, folded into float64 every SUM_CHUNK images: exact enough for hundreds of
    # images, and a float64 conversion of every tensor per image cost more than the model's own run.
    partial: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    for i in range(len(images)):
        x = np.asarray(images[i:i + 1], dtype=np.float32)
        now = fetch if i < MEAN_IMAGES else ranged  # the means: the first MEAN_IMAGES images only
        values = dict(zip(now, session.run(now, {input_name: x}), strict=True))
        values.update({n: x for n in inputs})
        for name, (lo, hi) in reduced.items():
            low[name] = min(low[name], float(values[lo]))
            high[name] = max(high[name], float(values[hi]))
        for name in inputs & set(wanted):
            low[name], high[name] = min(low[name], float(x.min())), max(high[name], float(x.max()))
        for name in dict.fromkeys(means_of):
            v = values.get(name)
            if v is None:
                continue
            if name in partial:
                np.add(partial[name], v.sum(axis=0), out=partial[name])
            else:
                partial[name] = v.sum(axis=0).astype(np.float32)
            if (i + 1) % SUM_CHUNK == 0 or i + 1 == min(len(images), MEAN_IMAGES):
                sums[name] = sums[name] + partial[name] if name in sums else partial[name].astype(np.float64)
                del partial[name]
    n = max(min(len(images), MEAN_IMAGES), 1)
    return Statistics({k: (low[k], high[k]) for k in wanted if np.isfinite(low[k])},
                      {k: (v / n).astype(np.float32) for k, v in sums.items()})


SUM_CHUNK = 32


def mse_ranges(model: Any, images: np.ndarray, input_name: str, ranges: dict[str, tuple[float, float]],
               tensors: Sequence[str], levels: int = 256) -> dict[str, tuple[float, float]]:
    """`ranges` with each of `tensors` narrowed to its least-squared-error range on `levels` levels.

    A second pass of the float model (as collect_statistics runs it) over the first
    edgetl.export.ranges.HISTOGRAM_IMAGES images, histogramming each tensor on its min/max range
    (edgetl.export.ranges: why, and how the range is chosen). The other tensors keep their min/max.
    """
    import onnxruntime as ort

    from edgetl.export.ranges import HISTOGRAM_IMAGES, Histograms

    inputs = {vi.name for vi in model.graph.input}
    wanted = [t for t in dict.fromkeys(tensors) if t in ranges and t not in inputs]
    if not wanted:
        return dict(ranges)
    augmented, _ = _augmented(model, [], wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    hist = Histograms({t: ranges[t] for t in wanted})
    for i in range(min(len(images), HISTOGRAM_IMAGES)):
        x = np.asarray(images[i:i + 1], dtype=np.float32)
        for name, value in zip(wanted, session.run(wanted, {input_name: x}), strict=True):
            hist.add(name, value)
    out = dict(ranges)
    out.update({str(k): v for k, v in hist.mse_ranges(levels).items()})
    return out


def _augmented(model: Any, calibrated: Sequence[str],
               averaged: Sequence[str]) -> tuple[Any, dict[str, tuple[str, str]]]:
    """`model` with outputs: each calibrated tensor's min and max (ReduceMin/ReduceMax, as ORT's calibrator
    adds them) and each averaged tensor itself; and the min/max outputs' names by tensor."""
    import onnx
    from onnx import helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    graph = augmented.graph
    present = {o.name for o in graph.output}
    infos = {vi.name: vi for vi in graph.value_info}
    taken = {o for node in graph.node for o in node.output} | {i.name for i in graph.initializer}
    for name in averaged:
        if name not in present:
            graph.output.append(infos[name] if name in infos else helper.make_empty_tensor_value_info(name))
            present.add(name)
    reduced = {}
    for name in calibrated:
        pair = []
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{name}_edgetl_{op}"
            while out in taken:
                out += "_"
            taken.add(out)
            # No axes: over every axis; keepdims=0: a scalar. Exact, as ORT's own calibration reduces.
            graph.node.append(helper.make_node(op, [name], [out], keepdims=0))
            elem = infos[name].type.tensor_type.elem_type if name in infos else onnx.TensorProto.FLOAT
            graph.output.append(helper.make_tensor_value_info(out, elem, []))
            pair.append(out)
        reduced[name] = (pair[0], pair[1])
    return augmented, reduced


def mean_shift(op_type: str, attrs: dict[str, Any], delta: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """Each output channel's mean change when the weight changes by `delta` and the input is `mean` (linear: exact).

    Args:
        op_type: "Conv", "Gemm" or "MatMul".
        attrs: the node's attributes (Conv: pads, strides, dilations, auto_pad, group; Gemm: alpha, transA, transB).
        delta: the weight's change, in the node's weight layout (Conv: (O, C/group, *kernel); Gemm: B;
            MatMul: (K, N)).
        mean: the node's input averaged over the batch axis only (Conv: (C, *spatial); Gemm/MatMul: (..., K)).

    Returns:
        (O,) float64, or None when the shapes do not fit (the node is then left as it is).
    """
    delta = delta.astype(np.float64)
    if op_type in ("Gemm", "MatMul"):
        if op_type == "Gemm":
            if int(attrs.get("transA", 0)) or delta.ndim != 2:
                return None
            delta = delta.T if int(attrs.get("transB", 0)) else delta
        if delta.ndim != 2 or mean.ndim < 1 or mean.shape[-1] != delta.shape[0]:
            return None
        vector = mean.reshape(-1, mean.shape[-1]).astype(np.float64).mean(axis=0)
        return float(attrs.get("alpha", 1.0)) * (vector @ delta)
    if op_type != "Conv" or mean.ndim != delta.ndim - 1 or mean.ndim < 2:
        return None
    group = int(attrs.get("group", 1))
    out_ch, per_group = delta.shape[0], delta.shape[1]
    if group < 1 or out_ch % group or mean.shape[0] != per_group * group:
        return None
    taps = _tap_means(mean, delta.shape[2:], attrs)
    if taps is None:
        return None
    taps = taps.reshape(group, per_group, -1)  # (group, C/group, taps)
    d = delta.reshape(group, out_ch // group, per_group, -1)  # (group, O/group, C/group, taps)
    return np.einsum("gock,gck->go", d, taps).reshape(out_ch)


def _tap_means(mean: np.ndarray, kernel: Sequence[int], attrs: dict[str, Any]) -> np.ndarray | None:
    """(C, *kernel): the input each kernel tap reads, averaged over the output positions (padding reads 0)."""
    spatial = mean.shape[1:]
    rank = len(spatial)
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
        return None
    axes = []  # per spatial axis: (outputs, stride, dilation, padding before)
    for a, (size, k) in enumerate(zip(spatial, kernel, strict=True)):
        stride, dilation = max(int(strides[a]), 1), max(int(dilations[a]), 1)
        span = (k - 1) * dilation + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // stride)
            total = max((out - 1) * stride + span - size, 0)
            before = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            out, before = (size - span) // stride + 1, 0
        else:
            before = int(pads[a])
            out = (size + before + int(pads[a + rank]) - span) // stride + 1
        if out < 1 or before < 0:
            return None
        axes.append((out, stride, dilation, before))
    # Zero padding wide enough on both sides for every tap's reads, then one strided window per tap.
    widths = [(0, 0)] + [(b, (o - 1) * s + (k - 1) * d + 1) for (o, s, d, b), k in zip(axes, kernel, strict=True)]
    padded = np.pad(mean.astype(np.float64), widths)
    taps = np.empty((mean.shape[0], *kernel))
    for tap in itertools.product(*(range(k) for k in kernel)):
        index: list[slice] = [slice(None)]
        for (o, s, d, _), t in zip(axes, tap, strict=True):
            start = t * d  # output o reads o * s + t * d - b, at o * s + t * d in the padded map
            index.append(slice(start, start + (o - 1) * s + 1, s))
        taps[(slice(None), *tap)] = padded[tuple(index)].reshape(mean.shape[0], -1).mean(axis=1)
    return taps


def _dequantized(node: Any, inits: dict[str, Any]) -> np.ndarray | None:
    """A DequantizeLinear node's output, computed from its constant inputs (None: not constant, or blocked)."""
    from onnx import numpy_helper

    if len(node.input) < 2 or any(n and n not in inits for n in node.input) or int(_attrs(node).get("block_size", 0)):
        return None
    x = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    if scale.ndim == 0 or scale.size == 1:
        return (x - zero.reshape(-1)[0]) * scale.reshape(-1)[0]
    axis = int(_attrs(node).get("axis", 1)) % max(x.ndim, 1)
    if scale.ndim != 1 or x.shape[axis] != scale.size:
        return None
    shape = [1] * x.ndim
    shape[axis] = scale.size
    return (x - zero.reshape(shape)) * scale.reshape(shape)


def _match(quantized: Any, source: Any) -> dict[int, Any]:
    """Each kernel node of `quantized` (by index) and its node in `source`: same op, by name, else by output name."""
    def index(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        names: dict[str, list[Any]] = {}
        outputs: dict[str, Any] = {}
        for node in model.graph.node:
            if node.op_type in KERNEL_OPS:
                names.setdefault(node.name, []).append(node)
                outputs[node.output[0]] = node
        return {k: v[0] for k, v in names.items() if k and len(v) == 1}, outputs

    q_names, _ = index(quantized)
    f_names, f_outputs = index(source)
    found = {}
    for i, node in enumerate(quantized.graph.node):
        if node.op_type not in KERNEL_OPS:
            continue
        ref = f_names.get(node.name) if node.name in q_names else None
        ref = ref if ref is not None else f_outputs.get(node.output[0])
        if ref is not None and ref.op_type == node.op_type:
            found[i] = ref
    return found


def correct_bias(quantized: Any, source: Any, means: dict[str, np.ndarray]) -> tuple[Any, list[str]]:
    """`quantized` with each int8 kernel's mean shift taken off its int32 bias; and the corrected nodes' names.

    Args:
        quantized: ORT's static QDQ model (a ModelProto; changed in place) of `source`.
        source: the float ModelProto it was quantized from.
        means: each kernel node's input averaged over the calibration images (batch axis only), by tensor name
            in `source` (collect_statistics with kernel_inputs(source)).

    Returns:
        The corrected model and the corrected nodes' names (or output names where a node has no name).
        Nodes that cannot be matched, whose weight is not DequantizeLinear(int8 initializer) or whose bias is
        not DequantizeLinear(int32 initializer) are left as they are.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = quantized.graph
    inits = {i.name: i for i in graph.initializer}
    f_inits = {i.name: i for i in source.graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    nodes: dict[str, Any] = {n.name: None for n in graph.node}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    done: list[str] = []
    inserts: list[tuple[int, Any]] = []  # DequantizeLinear copies for shared biases, before their node
    for i, ref in _match(quantized, source).items():
        node = graph.node[i]
        mean = means.get(ref.input[0])
        if mean is None or len(node.input) < 3 or len(ref.input) < 2 or ref.input[1] not in f_inits:
            continue
        w_dq, b_dq = producers.get(node.input[1]), producers.get(node.input[2])
        if w_dq is None or b_dq is None or w_dq.op_type != "DequantizeLinear" \
                or b_dq.op_type != "DequantizeLinear" or w_dq.input[0] not in inits or b_dq.input[0] not in inits:
            continue
        if inits[w_dq.input[0]].data_type != TensorProto.INT8 or inits[b_dq.input[0]].data_type != TensorProto.INT32:
            continue
        rounded = _dequantized(w_dq, inits)
        original = numpy_helper.to_array(f_inits[ref.input[1]]).astype(np.float64)
        if rounded is None or rounded.shape != original.shape:
            continue
        attrs = _attrs(node)
        shift = mean_shift(node.op_type, attrs, rounded - original, mean)
        bias = numpy_helper.to_array(inits[b_dq.input[0]])
        scale = numpy_helper.to_array(inits[b_dq.input[1]]).astype(np.float64).reshape(-1) \
            if len(b_dq.input) > 1 and b_dq.input[1] in inits else None
        beta = float(attrs.get("beta", 1.0)) if node.op_type == "Gemm" else 1.0
        if shift is None or scale is None or bias.ndim != 1 or len(shift) != len(bias) \
                or len(scale) not in (1, len(bias)) or beta == 0 or not np.all(scale > 0):
            continue
        steps = np.rint(shift / (beta * scale))
        new = np.clip(bias.astype(np.float64) - steps, INT32.min, INT32.max).astype(np.int32)
        name = b_dq.input[0]
        if users.get(b_dq.output[0], 0) > 1:  # the DequantizeLinear feeds other nodes too: this node gets its own
            users[b_dq.output[0]] -= 1
            copy = helper.make_node("DequantizeLinear", [_fresh(name, inits), *b_dq.input[1:]],
                                    [_fresh(b_dq.output[0], producers)], name=_fresh(b_dq.name or "bias_dq", nodes),
                                    **_attrs(b_dq))
            producers[copy.output[0]] = copy
            node.input[2] = copy.output[0]
            inserts.append((i, copy))
            name = copy.input[0]
        elif users.get(name, 0) > 1:  # the initializer is read elsewhere too: this node's copy changes
            users[name] -= 1
            name = _fresh(name, inits)
            b_dq.input[0] = name
        if isinstance(inits.get(name), TensorProto):  # the node's own initializer: rewritten in place
            inits[name].CopyFrom(numpy_helper.from_array(new, name))
        else:
            inits[name] = numpy_helper.from_array(new, name)
            graph.initializer.append(inits[name])
            users[name] = 1
        done.append(node.name or node.output[0])
    for i, copy in sorted(inserts, key=lambda p: -p[0]):
        graph.node.insert(i, copy)
    return quantized, done


def _fresh(name: str, taken: dict[str, Any]) -> str:
    """`name` with a suffix no tensor in `taken` has yet (the caller records it)."""
    for k in itertools.count(1):
        candidate = f"{name}_corrected{'' if k == 1 else k}"
        if candidate not in taken:
            taken[candidate] = None
            return candidate
    raise AssertionError("unreachable")
