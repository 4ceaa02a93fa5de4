"""Quantization modes as named settings: the one table every format's record names its modes from.

Each mode is a `Mode`: its name, what it is for (the help text the CLI shows), whether it needs calibration
images, and the tag of its file names. Which formats take a mode is each format's record (edgetl.export.formats:
`Format.modes`); how a format applies a mode is its own module (formats/tflite.py's converter settings,
edgetl.export.onnx_quant for ONNX Runtime's quantizer). Nothing here imports TensorFlow.

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

from dataclasses import dataclass

from edgetl.core.errors import UsageError, did_you_mean

IO_TYPES = ("uint8", "int8")
DEFAULT_IO_TYPE = "uint8"


@dataclass(frozen=True)
class Mode:
    """One quantization mode (the formats that take it say so in their records)."""

    name: str
    help: str
    calibrated: bool  # needs representative (calibration) images
    float_model: bool  # a float model: must match Keras within the float tolerance
    file_tag: str  # the part of the file name that tells this mode apart
    integer_io: bool = False  # integer input and output (uint8 or int8: --io-type), batch fixed at 1


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("none", "float32, no quantization: the reference; fastest on x86 CPUs.",
         calibrated=False, float_model=True, file_tag="float32"),
    Mode("float16", "float16 weights (half the size); GPU delegates compute in fp16, CPUs in fp32.",
         calibrated=False, float_model=False, file_tag="float16"),
    Mode("dynamic", "8-bit weights, float activations (4x smaller, no calibration); "
         "TFLite's is slower than float32 on x86, ONNX's as fast in ONNX Runtime.", calibrated=False,
         float_model=False, file_tag="dynamic"),
    Mode("int8", "int8 weights and activations, float input/output (calibrated): a third of "
         "the size; float32 speed on x86 without VNNI, faster with int8 dot products (ARM, VNNI).",
         calibrated=True, float_model=False, file_tag="int8"),
    Mode("int8-full", "everything integer, uint8/int8 input and output (--io-type; calibrated), "
         "batch fixed at 1: Edge TPU, NPUs, DSPs, microcontrollers.", calibrated=True, float_model=False,
         file_tag="int8-full", integer_io=True),
    Mode("int16x8", "int16 activations, int8 weights (calibrated): nearer float accuracy than int8; "
         "slow on most CPUs.", calibrated=True, float_model=False, file_tag="int16x8"),
)}


def get_mode(name: str) -> Mode:
    """The Mode named `name`, or a UsageError with a did-you-mean."""
    if name not in MODES:
        raise UsageError(f"unknown quantization mode '{name}'.{did_you_mean(name, MODES)} "
                         f"Allowed: {', '.join(MODES)}.")
    return MODES[name]
