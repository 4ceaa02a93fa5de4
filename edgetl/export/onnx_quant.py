"""ONNX Runtime's quantizer for ONNX files (int8 static QDQ, dynamic), with edgetl's bias correction.

Shared by the formats made from an ONNX file (onnx, ort): each format's module calls quantize_onnx.
Nothing here imports ONNX Runtime at module level.
"""

from __future__ import annotations

import logging
from typing import Any

from edgetl.core.errors import UsageError

log = logging.getLogger("edgetl")


def quantize_onnx(src: str, dst: str, mode: str, *, calibration: Any = None, input_name: str = "image",
                  bias_correction: bool = True, folded_at_load: bool = True, ranges: str = "mse") -> None:
    """Quantize the float ONNX model `src` into `dst` with onnxruntime.quantization.

    Args:
        src, dst: ONNX file paths.
        mode: "int8" (static QDQ: int8 weights per channel, uint8 activations, calibrated with MinMax)
            or "dynamic" (int8 Conv kernels per channel, float Conv compute; MatMul/Gemm with uint8
            weights and activations quantized at run time; no calibration).
        calibration: for int8, an (N, H, W, 3) array of calibration images (pixels 0..255, uint8 or float32).
        input_name: the model's input name.
        bias_correction: for int8, take each int8 kernel's mean output shift off its int32 bias
            (edgetl.export.onnx_bias), the means measured in the calibration pass; False: ORT's file as it is.
        folded_at_load: for dynamic, the form of the int8 Conv kernels (see weight_only_conv_int8): True for a
            file ONNX Runtime loads as it is, False for one it optimises ahead of time (.ort).
        ranges: for int8 with bias correction, the activations' ranges: "mse" (each narrowed to its least-error
            range, edgetl.export.ranges; see mse_tensors) or "minmax" (ORT's MinMax as it is).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "dynamic":
        # ORT's dynamic Conv (ConvInteger) takes one weight scale per tensor: BN-folded MobileNetV2 kernels,
        # whose output channels differ in range by 100x and more, lose their small channels, and real photos
        # scored near chance (0.20 against 0.60 float; BENCHMARKS.md, issue #13). Conv kernels get int8 per
        # channel instead (weight_only_conv_int8); the rest keeps ORT's dynamic recipe, uint8 weights being
        # the faster MatMulInteger path on x86.
        import onnx

        quantize_dynamic(src, dst, weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm"])
        model = onnx.load(dst)
        weight_only_conv_int8(model, folded_at_load=folded_at_load)
        onnx.save(model, dst)
        return
    if mode != "int8":
        raise UsageError(f"--quantize {mode} is not an ONNX Runtime quantization mode. Use int8 or dynamic.")
    if calibration is None or len(calibration) == 0:
        raise UsageError("--quantize int8 for onnx needs calibration images and none were given.")

    import numpy as np
    import onnx

    # uint8 activations: ORT's x86 and ARM kernels are U8S8. With int8 activations ORT converts to uint8
    # itself but not at branch points, where Conv and Add fall back to float between Dequantize,
    # Quantize and Transposes: MobileNetV2 224 ran 2.04 ms against 1.01 ms (BENCHMARKS.md).
    recipe: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax,
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}
    # The model's own input scaling (x / 127.5 - 1 for MobileNetV2) stays in float, quantized once after it:
    # (x - 127.5) / 127.5 falls exactly between two uint8 levels for every pixel, and ORT's fused QLinearAdd
    # rounds all those ties one way (QuantizeLinear rounds them half to even), shifting the whole image by half
    # a level. MobileNetV2 1.0 at 224, 80 real photos: 51.25% (float 61.25) and mean |prob. error| 0.049, against
    # 57.5% and 0.030 with it in float (issue #27, BENCHMARKS.md). The float Mul/Add cost little: one pass each.
    excluded = input_scaling_nodes(onnx.load(src), input_name)
    if excluded:
        recipe["nodes_to_exclude"] = excluded
    if bias_correction:
        _quantize_int8_corrected(src, dst, np.asarray(calibration), input_name, recipe, ranges)
        return

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, Any] | None:
            if self.i >= len(calibration):
                return None
            batch = np.asarray(calibration[self.i:self.i + 1], dtype=np.float32)
            self.i += 1
            return {input_name: batch}

        def rewind(self) -> None:
            self.i = 0

    quantize_static(src, dst, _Reader(), **recipe)


SCALING_OPS = ("Mul", "Add", "Sub", "Div")


def input_scaling_nodes(model: Any, input_name: str) -> list[str]:
    """The names of the elementwise nodes that scale `model`'s input by constants before anything else reads it.

    The chain from the input through Mul/Add/Sub/Div nodes whose other operand is an initializer, each the only
    reader of the tensor before it (a model's preprocessing layer, e.g. MobileNetV2's x / 127.5 - 1); empty when
    the input goes elsewhere first.
    """
    graph = model.graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                        for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    out, tensor = [], input_name
    while len(readers.get(tensor, [])) == 1:
        node = readers[tensor][0]
        others = [i for i in node.input if i != tensor]
        if node.op_type not in SCALING_OPS or len(others) != 1 or others[0] not in constants or not node.name:
            break
        out.append(node.name)
        tensor = node.output[0]
    return out


# How much wider than its calibrated range the scaled input is quantized where it cannot stay float (qnn):
# every whole pixel value moves at least 5e-4 of a level off its tie (float32 resolves about 1e-5 there) and at
# most 0.13 of a level (a 0.1% coarser step).
TIE_BREAK = 1e-3


def input_scaling_overrides(model: Any, input_name: str, ranges: dict[str, tuple[float, float]],
                            activation_type: Any) -> dict[str, list[dict[str, Any]]]:
    """ORT TensorQuantOverrides quantizing the output of `model`'s input scaling (input_scaling_nodes) with a
    scale TIE_BREAK wider than its calibrated one, the zero point ORT's own; empty without input scaling.

    Why: MobileNetV2's x / 127.5 - 1 on [-1, 1] puts every whole pixel value exactly between two levels, which
    each kernel rounds its own way (ORT's fused QLinearAdd all down; the emulated HTP lost as much): a half-level
    shift of the whole image. A slightly wider step leaves no tie, so every runtime rounds as the file says.
    """
    import numpy as np
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    scaling = set(input_scaling_nodes(model, input_name))
    last = [n.output[0] for n in model.graph.node if n.name in scaling][-1:]
    if not last or last[0] not in ranges:
        return {}
    qmin, qmax = get_qmin_qmax_for_qType(activation_type.tensor_type)
    lo, hi = ranges[last[0]]
    zero_point, scale = compute_scale_zp(np.array(lo, np.float32), np.array(hi, np.float32), qmin, qmax)
    return {last[0]: [{"scale": np.array(scale * (1 + TIE_BREAK), np.float32), "zero_point": zero_point}]}


RANGE_METHODS = ("mse", "minmax")


def mse_tensors(model: Any, input_name: str, ranges: dict[str, tuple[float, float]]) -> list[str]:
    """The calibrated tensors whose range the MSE choice may narrow: all but the model's inputs and outputs (the
    probabilities) and its input scaling's (whose range input_scaling_overrides keeps exact: whole pixel values)."""
    graph = model.graph
    scaling = set(input_scaling_nodes(model, input_name))
    fixed = ({vi.name for vi in graph.input} | {vi.name for vi in graph.output}
             | {o for n in graph.node if n.name in scaling for o in n.output})
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    # A tensor only a Relu/Clip reads is quantized with that activation's range (ORT drops the activation into
    # the range), so its own would only cost the histogram pass time.
    return [t for t in ranges if t not in fixed and not (readers.get(t) and readers[t] <= {"Relu", "Clip"})]


def calibrated_ranges(model: Any, stats_ranges: dict[str, tuple[float, float]], calibration: Any, input_name: str,
                      method: str, levels: int = 256) -> dict[str, tuple[float, float]]:
    """The ranges to quantize `model` with: collect_statistics' min/max, or ("mse") those narrowed by a histogram
    pass (8-bit activations only: at 16 bits rounding costs nothing next to clipping)."""
    from edgetl.export.onnx_bias import mse_ranges

    if method not in RANGE_METHODS:
        raise UsageError(f"range method {method!r} does not exist. Use one of: {', '.join(RANGE_METHODS)}.")
    if method == "minmax" or levels > 256:
        return dict(stats_ranges)
    return mse_ranges(model, calibration, input_name, stats_ranges, mse_tensors(model, input_name, stats_ranges),
                      levels)


def _quantize_int8_corrected(src: str, dst: str, calibration: Any, input_name: str, recipe: dict[str, Any],
                             method: str = "mse") -> None:
    """quantize_static on ranges from edgetl's own calibration pass, then each kernel's mean shift off its bias.

    The pass (edgetl.export.onnx_bias.collect_statistics) measures ORT's own MinMax ranges, narrowed to their
    least-error ranges with `method` "mse" (calibrated_ranges) and handed to quantize_static as its calibration
    cache (so ORT does not run the images again), and each Conv/Gemm input's mean over the same images.
    """
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from edgetl.export.onnx_bias import collect_statistics, correct_bias, kernel_inputs

    source = load_model_with_shape_infer(Path(src))  # the model quantize_static loads and calibrates
    stats = collect_statistics(source, calibration, input_name, kernel_inputs(source))
    chosen = calibrated_ranges(source, stats.ranges, calibration, input_name, method)
    # One-element float32 arrays: what ORT's MinMax calibrator hands its quantizer.
    ranges = TensorsData(CalibrationMethod.MinMax, {k: (np.array([lo], np.float32), np.array([hi], np.float32))
                                                    for k, (lo, hi) in chosen.items()})
    with tempfile.TemporaryDirectory(prefix="edgetl-calib-") as work:
        cache = Path(work) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(src, dst, None, calibration_cache_path=cache, **recipe)
    model, done = correct_bias(onnx.load(dst), source, stats.means)
    log.debug("ONNX int8 bias correction: %d of %d Conv/Gemm nodes corrected", len(done),
              sum(n.op_type in ("Conv", "Gemm") for n in model.graph.node))
    onnx.save(model, dst)


# TFLite's dynamic range quantizer keeps kernels this small in float; they are the stem of most CNNs, whose
# int8 error every later layer carries (MobileNetV2 on real photos: 94 against 81% agreement with float).
MIN_QUANTIZED_CONV_WEIGHTS = 1024


def weight_only_conv_int8(model: Any, min_weights: int = MIN_QUANTIZED_CONV_WEIGHTS, *,
                          folded_at_load: bool = True) -> int:
    """Store the float kernels of `model`'s Conv nodes as int8, one scale per output channel; return how many.

    Each kernel becomes an int8 initializer (symmetric, -127..127, scale max|w|/127 per output channel),
    so the file is about 4x smaller and the Conv itself still computes in float: standard ONNX, any runtime
    runs it. Kernels with fewer than `min_weights` values, and kernels that are not initializers, are left
    as they are.

    With `folded_at_load` the kernel is read through Cast and Mul (by the per-channel scale): ONNX Runtime
    folds those constants into a float kernel when it loads the file, so the Conv runs as fast as float32's
    (MobileNetV2 1.0 at 224: 14.5 against 28.6 ms per image through DequantizeLinear, which ONNX Runtime
    keeps in the graph, so its Conv kernels cannot be prepacked), with the same outputs up to float rounding
    (the summation order). Without it, through DequantizeLinear (axis 0, zero point 0, opset 13+): for a graph
    optimised ahead of time (.ort), where Cast and Mul would be folded into a float kernel in the file itself.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    taken = set(inits) | {o for n in graph.node for o in n.output}
    done: dict[str, str] = {}  # float kernel -> its dequantized tensor (a kernel shared by several Convs)
    dequantize = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name not in done:
            w = numpy_helper.to_array(inits[name])
            if w.dtype != np.float32 or w.ndim < 3 or w.size < min_weights:
                continue
            absmax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
            scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
            q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
            stem = _unique(f"{name}_int8", taken)
            q_name, s_name, out = stem, _unique(f"{stem}_scale", taken), _unique(f"{stem}_dequantized", taken)
            graph.initializer.append(numpy_helper.from_array(q, q_name))
            if folded_at_load:  # float(q) * scale: what DequantizeLinear computes with a zero point of 0
                cast = _unique(f"{stem}_float", taken)
                graph.initializer.append(numpy_helper.from_array(scale.reshape((-1,) + (1,) * (w.ndim - 1)),
                                                                 s_name))
                dequantize += [helper.make_node("Cast", [q_name], [cast], name=_unique(f"{stem}_Cast", taken),
                                                to=onnx.TensorProto.FLOAT),
                               helper.make_node("Mul", [cast, s_name], [out], name=_unique(f"{stem}_Mul", taken))]
            else:
                z_name = _unique(f"{stem}_zero_point", taken)
                graph.initializer.extend([numpy_helper.from_array(scale, s_name),
                                          numpy_helper.from_array(np.zeros(len(scale), np.int8), z_name)])
                dequantize.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                                   name=_unique(f"{stem}_DequantizeLinear", taken), axis=0))
            done[name] = out
        node.input[1] = done[name]
    if not done:
        return 0
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name not in done or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = dequantize + list(graph.node)  # initializers only in, so first is a topological place
    del graph.node[:]
    graph.node.extend(nodes)
    return len(done)


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out
