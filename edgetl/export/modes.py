"""Quantization modes as named settings, applied to a converter in one place.

Each mode is a `Mode`: its name, the formats it exists for, what it is for (the help text the CLI
shows), whether it needs calibration images, and for TFLite how it sets a `TFLiteConverter`.
Nothing here imports TensorFlow at module level.

TFLite modes (TFLiteConverter, post-training):
    none       float32 weights and activations: the reference, and the fastest on x86 CPUs.
    float16    float16 weights, float32 compute on CPU; half the size; GPU delegates run it in fp16.
    dynamic    int8 weights, float activations quantized on the fly; 4x smaller; no calibration.
    int8       int8 weights and activations, float32 input and output; calibrated.
    int8-full  everything integer including input and output (uint8 or int8, --io-type): Edge TPU,
               NPUs, DSPs, microcontrollers; calibrated; static shapes (batch 1), as those compilers need.
    int16x8    int16 activations, int8 weights; closer to float than int8; calibrated; slow
               reference kernels on most CPUs.
ONNX modes (onnxruntime.quantization), also for "ort" (ONNX Runtime Mobile's format, converted from that ONNX file):
    none       float32.
    int8       static QDQ: int8 per-channel weights, uint8 activations (ONNX Runtime's fast U8S8
               kernels take every layer), calibrated on the same images as TFLite.
    dynamic    8-bit weights, no calibration: Conv kernels int8 per output channel, dequantized in the graph
               (float compute, and as fast as float32 in ONNX Runtime, which folds them at load; kernels under
               1024 weights stay float, as in TFLite's dynamic range mode);
               MatMul/Gemm through ONNX Runtime's dynamic MatMulInteger (uint8 weights, activations
               quantized at run time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgetl.core.errors import UsageError, did_you_mean

log = logging.getLogger("edgetl")

IO_TYPES = ("uint8", "int8")
DEFAULT_IO_TYPE = "uint8"


@dataclass(frozen=True)
class Mode:
    """One quantization mode of one or more formats."""

    name: str
    formats: tuple[str, ...]
    help: str
    calibrated: bool  # needs representative (calibration) images
    float_model: bool  # a float model: must match Keras within the float tolerance
    file_tag: str  # the part of the file name that tells this mode apart


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("none", ("tflite", "onnx", "ort", "saved_model"),
         "float32, no quantization: the reference; fastest on x86 CPUs.",
         calibrated=False, float_model=True, file_tag="float32"),
    Mode("float16", ("tflite",), "float16 weights (half the size); GPU delegates compute in fp16, CPUs in fp32.",
         calibrated=False, float_model=False, file_tag="float16"),
    Mode("dynamic", ("tflite", "onnx", "ort"), "8-bit weights, float activations (4x smaller, no calibration); "
         "TFLite's is slower than float32 on x86, ONNX's as fast in ONNX Runtime.", calibrated=False,
         float_model=False, file_tag="dynamic"),
    Mode("int8", ("tflite", "onnx", "ort"), "int8 weights and activations, float input/output (calibrated): a third of "
         "the size; float32 speed on x86 without VNNI, faster with int8 dot products (ARM, VNNI).",
         calibrated=True, float_model=False, file_tag="int8"),
    Mode("int8-full", ("tflite",), "everything integer, uint8/int8 input and output (--io-type; calibrated), "
         "batch fixed at 1: Edge TPU, NPUs, DSPs, microcontrollers.", calibrated=True, float_model=False,
         file_tag="int8-full"),
    Mode("int16x8", ("tflite",), "int16 activations, int8 weights (calibrated): nearer float accuracy than int8; "
         "slow on most CPUs.", calibrated=True, float_model=False, file_tag="int16x8"),
)}

FORMATS = ("tflite", "onnx", "ort", "saved_model")

# --target: what each deployment target gets. Measured on x86 (BENCHMARKS.md, AVX2 without VNNI):
# dynamic-range files are 2-3x slower than float32 in LiteRT (and were in ONNX Runtime before their kernels
# were stored to be folded at load), so no target picks them; int8
# with float I/O runs at about float32 speed there (1.0-1.2x) with a third of the size and half the
# memory, and is the mode that gets faster on CPUs with int8 dot products (ARM, x86 VNNI).
TARGETS: dict[str, dict[str, Any]] = {
    "cpu": {"formats": ("tflite",), "quantize": ("int8",), "io_type": None,
            "help": "TFLite int8 with float input/output: a third of the size and half the memory of float32; "
                    "about float32 speed on x86 without VNNI (measured), faster where CPUs have int8 dot products"},
    "gpu": {"formats": ("tflite",), "quantize": ("float16",), "io_type": None,
            "help": "TFLite float16 weights: what GPU delegates (Android, iOS) run natively"},
    "edgetpu": {"formats": ("tflite",), "quantize": ("int8-full",), "io_type": "uint8",
                "help": "TFLite full-integer with uint8 input/output; then run edgetpu_compiler on the file"},
    "npu": {"formats": ("tflite",), "quantize": ("int8-full",), "io_type": "uint8",
            "help": "TFLite full-integer with uint8 input/output, for NNAPI and vendor NPU delegates"},
    "mcu": {"formats": ("tflite",), "quantize": ("int8-full",), "io_type": "int8",
            "help": "TFLite full-integer with int8 input/output, as TensorFlow Lite Micro expects"},
}


def get_mode(name: str) -> Mode:
    """The Mode named `name`, or a UsageError with a did-you-mean."""
    if name not in MODES:
        raise UsageError(f"unknown quantization mode '{name}'.{did_you_mean(name, MODES)} "
                         f"Allowed: {', '.join(MODES)}.")
    return MODES[name]


def modes_for(fmt: str) -> list[str]:
    """The names of the modes that exist for format `fmt`."""
    return [m.name for m in MODES.values() if fmt in m.formats]


def help_text() -> str:
    """One line per mode, for the CLI's --quantize help."""
    return " ".join(f"{m.name}: {m.help} [{', '.join(m.formats)}]" for m in MODES.values())


def plan_pairs(formats: Iterable[str], modes: Iterable[str]) -> list[tuple[str, str]]:
    """Pair each format with each mode that exists for it, refusing combinations that do not exist.

    Every requested format must get at least one mode, and every mode must exist for at least one
    requested format: float16 for ONNX alone is an error, not a silent float32 file.

    Raises:
        UsageError: an unknown format or mode, or a combination that does not exist.
    """
    fmts = list(dict.fromkeys(formats))
    mds = list(dict.fromkeys(modes))
    if not fmts:
        raise UsageError("no export format given. Use --format tflite, onnx, ort or saved_model.")
    if not mds:
        raise UsageError("no quantization mode given. Use --quantize none (float32) or another mode.")
    for f in fmts:
        if f not in FORMATS:
            raise UsageError(f"unknown export format '{f}'.{did_you_mean(f, FORMATS)} Allowed: {', '.join(FORMATS)}.")
    for m in mds:
        get_mode(m)
    for m in mds:
        if not any(f in MODES[m].formats for f in fmts):
            where = ", ".join(MODES[m].formats)
            names = " or ".join(fmts)
            raise UsageError(f"--quantize {m} does not exist for {names} ({m} exists for: {where}). "
                             f"{_modes_line(fmts)}")
    for f in fmts:
        if not any(f in MODES[m].formats for m in mds):
            raise UsageError(f"none of --quantize {', '.join(mds)} exists for --format {f}. {_modes_line([f])} "
                             f"Add one of them, or drop --format {f}.")
    return [(f, m) for f in fmts for m in mds if f in MODES[m].formats]


def _modes_line(fmts: list[str]) -> str:
    return " ".join(f"{f} modes: {', '.join(modes_for(f))}." for f in fmts)


def check_io_type(io_type: str | None, modes: Iterable[str], formats: Iterable[str]) -> str | None:
    """Validate --io-type: it applies only to TFLite int8-full. Returns the effective io type of int8-full.

    Raises:
        UsageError: an unknown value, or --io-type without int8-full for TFLite.
    """
    mds = list(modes)
    if io_type is None:
        return DEFAULT_IO_TYPE if "int8-full" in mds else None
    if io_type not in IO_TYPES:
        raise UsageError(f"unknown --io-type '{io_type}'. Allowed: {', '.join(IO_TYPES)} (with --quantize int8-full).")
    if "int8-full" not in mds or "tflite" not in list(formats):
        raise UsageError(f"--io-type {io_type} applies only to --format tflite --quantize int8-full (integer input "
                         "and output). Add --quantize int8-full or drop --io-type.")
    return io_type


# ----------------------------------------------------------------------------------------------
# TFLite converter settings


def apply_tflite(converter: Any, mode: str, *, representative: Callable[[], Iterable[list[Any]]] | None = None,
                 io_type: str | None = None, allow_select_ops: bool = False) -> Any:
    """Configure a tf.lite.TFLiteConverter for `mode`; return it.

    Args:
        converter: a TFLiteConverter (from_saved_model or from_keras_model).
        mode: a TFLite mode name.
        representative: a generator function yielding [float32 batch of 1] for calibrated modes.
        io_type: "uint8" or "int8" for int8-full.
        allow_select_ops: let TensorFlow ops (Flex) into the model when no builtin op exists.

    Raises:
        UsageError: the mode does not exist for TFLite or needs calibration images that are missing.
    """
    import tensorflow as tf

    m = get_mode(mode)
    if "tflite" not in m.formats:
        raise UsageError(f"--quantize {mode} does not exist for tflite. "
                         f"tflite modes: {', '.join(modes_for('tflite'))}.")
    if m.calibrated and representative is None:
        raise UsageError(f"--quantize {mode} needs calibration images and none were given.")
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    ops = {builtins}
    if mode == "none":
        pass
    elif mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int8-full"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        ops = {tf.lite.OpsSet.TFLITE_BUILTINS_INT8}
        if mode == "int8-full":
            dtype = {"uint8": tf.uint8, "int8": tf.int8}[io_type or DEFAULT_IO_TYPE]
            converter.inference_input_type = dtype
            converter.inference_output_type = dtype
    elif mode == "int16x8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        ops = {tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8}
    if allow_select_ops:
        ops = ops | {builtins, tf.lite.OpsSet.SELECT_TF_OPS}
    converter.target_spec.supported_ops = ops
    return converter


# ----------------------------------------------------------------------------------------------
# ONNX Runtime quantization


def quantize_onnx(src: str, dst: str, mode: str, *, calibration: Any = None, input_name: str = "image",
                  bias_correction: bool = True, folded_at_load: bool = True) -> None:
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
        raise UsageError(f"--quantize {mode} does not exist for onnx. onnx modes: {', '.join(modes_for('onnx'))}.")
    if calibration is None or len(calibration) == 0:
        raise UsageError("--quantize int8 for onnx needs calibration images and none were given.")

    import numpy as np

    # uint8 activations: ORT's x86 and ARM kernels are U8S8. With int8 activations ORT converts to uint8
    # itself but not at branch points, where Conv and Add fall back to float between Dequantize,
    # Quantize and Transposes: MobileNetV2 224 ran 2.04 ms against 1.01 ms (BENCHMARKS.md).
    recipe: dict[str, Any] = {
        "quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax,
        "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}
    if bias_correction:
        _quantize_int8_corrected(src, dst, np.asarray(calibration), input_name, recipe)
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


def _quantize_int8_corrected(src: str, dst: str, calibration: Any, input_name: str, recipe: dict[str, Any]) -> None:
    """quantize_static on ranges from edgetl's own calibration pass, then each kernel's mean shift off its bias.

    The pass (edgetl.export.onnx_bias.collect_statistics) measures ORT's own MinMax ranges, handed to
    quantize_static as its calibration cache (so ORT does not run the images a second time), and each
    Conv/Gemm input's mean over the same images.
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
    # One-element float32 arrays: what ORT's MinMax calibrator hands its quantizer.
    ranges = TensorsData(CalibrationMethod.MinMax, {k: (np.array([lo], np.float32), np.array([hi], np.float32))
                                                    for k, (lo, hi) in stats.ranges.items()})
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
