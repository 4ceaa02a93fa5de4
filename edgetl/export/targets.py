"""Deployment targets (--target): one record each, naming the formats, modes and io type a target gets.

A target's accelerator checks are the checks table's (edgetl.export.checks: a Check names the targets it runs
for), so a new target (`--target snapdragon`) is one record here, and its checks records there.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetl.core.errors import unknown_choice


@dataclass(frozen=True)
class Target:
    """What one deployment target gets from `edgetl export --target NAME`."""

    name: str
    help: str  # one line for the CLI
    formats: tuple[str, ...]  # export formats (edgetl.export.formats)
    quantize: tuple[str, ...]  # quantization modes (edgetl.export.modes)
    io_type: str | None = None  # integer input/output type of integer-I/O modes, None: the format's default


# Measured on x86 (BENCHMARKS.md, AVX2 without VNNI): dynamic-range files are 2-3x slower than float32 in LiteRT
# (and were in ONNX Runtime before their kernels were stored to be folded at load), so no target picks them; int8
# with float I/O runs at about float32 speed there (1.0-1.2x) with a third of the size and half the
# memory, and is the mode that gets faster on CPUs with int8 dot products (ARM, x86 VNNI).
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("cpu", "TFLite int8 with float input/output: a third of the size and half the memory of float32; "
           "about float32 speed on x86 without VNNI (measured), faster where CPUs have int8 dot products",
           ("tflite",), ("int8",)),
    Target("gpu", "TFLite float16 weights: what GPU delegates (Android, iOS) run natively", ("tflite",), ("float16",)),
    Target("edgetpu", "TFLite full-integer with uint8 input/output; then run edgetpu_compiler on the file",
           ("tflite",), ("int8-full",), "uint8"),
    Target("npu", "TFLite full-integer with uint8 input/output, for NNAPI and vendor NPU delegates",
           ("tflite",), ("int8-full",), "uint8"),
    Target("mcu", "TFLite full-integer with int8 input/output, as TensorFlow Lite Micro expects",
           ("tflite",), ("int8-full",), "int8"),
    Target("snapdragon", "Qualcomm Hexagon NPU: QNN int8 (uint8 activations, int8 per-channel weights) compiled for "
           "--soc into an EPContext .onnx, plus the portable QDQ file", ("qnn",), ("int8",)),
)}


def get_target(name: str) -> Target:
    """The Target named `name`.

    Raises:
        UsageError: no target has that name (the message names the known ones).
    """
    if name not in TARGETS:
        raise unknown_choice("--target", name, TARGETS)
    return TARGETS[name]
