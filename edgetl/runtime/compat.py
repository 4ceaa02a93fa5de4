"""Accelerator checks, offline: will the phone's GPU delegate, NNAPI or CoreML take the whole model?

- TFLite, GPU delegate: TensorFlow's model analyzer (`tf.lite.experimental.Analyzer`,
  gpu_compatibility=True) lists the ops; its per-op GPU verdicts were removed from TensorFlow's builds
  (tensorflow/tensorflow#77042: since 2.19 it prints "looks compatible" for any model), so each op is
  also checked against the GPU delegate's op list (GPU_DELEGATE_OPS below). Any warning a build of the
  analyzer does print is kept too.
- ONNX, NNAPI and CoreML: ONNX Runtime's mobile usability checker (onnxruntime.tools.mobile_helpers),
  called as functions: per provider, the nodes it takes, the partitions it makes, the ops it does not
  take, and its verdict as is and with the batch fixed.

Both return plain JSON-ready dicts. TensorFlow and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, first_line

log = logging.getLogger("edgetl")

# The builtin ops the TFLite GPU delegate has kernels for (tensorflow/lite/tools/versioning/
# gpu_compatibility.cc, CheckGpuDelegateCompatibility; the delegate may still refuse one for its
# parameters, for instance a 5-D tensor). Any other builtin op, and any Flex op, runs on the CPU.
GPU_DELEGATE_OPS = frozenset({
    "ABS", "ADD", "ADD_N", "ATAN2", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CEIL", "CONCATENATION", "CONV_2D",
    "COS", "CUMSUM", "DENSIFY", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE", "DIV", "DYNAMIC_UPDATE_SLICE",
    "ELU", "EMBEDDING_LOOKUP", "EQUAL", "EXP", "FLOOR", "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER",
    "GELU", "GREATER", "GREATER_EQUAL", "HARD_SWISH", "LEAKY_RELU", "LESS", "LESS_EQUAL", "LOG", "LOGICAL_AND",
    "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL",
    "ONE_HOT", "PACK", "PAD", "PADV2", "POW", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2",
    "SIGN", "SIN", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE",
    "STABLEHLO_CLAMP", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV",
})
# Custom ops the GPU delegate implements itself.
GPU_DELEGATE_CUSTOM_OPS = frozenset({"Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D",
                                     "Resampler"})

_OP_LINE = re.compile(r"^\s*Op#(\d+)\s+([A-Za-z0-9_]+)\(")
_SUBGRAPH_LINE = re.compile(r"^Subgraph#(\d+)\s")
_WARNING = "GPU COMPATIBILITY WARNING:"


def analyzer_report(path: str | os.PathLike[str]) -> str:
    """The text TensorFlow's model analyzer prints for a .tflite, with its GPU compatibility check on."""
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import tensorflow as tf

    out = io.StringIO()
    # The analyzer prints its report from Python (print of the C++ string): redirect_stdout catches it.
    with contextlib.redirect_stdout(out):
        tf.lite.experimental.Analyzer.analyze(model_path=str(path), gpu_compatibility=True)
    return out.getvalue()


def parse_analyzer_report(text: str) -> dict[str, Any]:
    """Ops and GPU warnings from an analyzer report.

    Returns:
        {"ops": [{"subgraph", "index", "op"}...], "warnings": [{"subgraph", "index", "op", "message"}...],
         "says_compatible": bool}: a warning line belongs to the op printed just before it.
    """
    ops: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    subgraph = 0
    last: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _SUBGRAPH_LINE.match(line)
        if m:
            subgraph = int(m.group(1))
            last = None
            continue
        m = _OP_LINE.match(line)
        if m:
            last = {"subgraph": subgraph, "index": int(m.group(1)), "op": m.group(2)}
            ops.append(last)
            continue
        if line.strip().startswith(_WARNING):
            message = line.strip()[len(_WARNING):].strip()
            if last is not None and not message.startswith("Subgraph#"):
                warnings.append({**last, "message": message})
    return {"ops": ops, "warnings": warnings, "says_compatible": "looks compatible with GPU delegate" in text}


def gpu_compatibility(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Which ops of a .tflite the GPU delegate would not take (they fall back to the CPU).

    Returns:
        {"delegate": "gpu", "compatible": bool, "unsupported_ops": sorted op names (empty when the whole
         graph runs on the delegate), "unsupported_nodes": [{"subgraph", "index", "op", "reason"}...],
         "ops": {op: count}, "checked_with": how the verdict was reached}.

    Raises:
        ModelError: the file is not a TFLite model the analyzer can read.
    """
    p = Path(path)
    try:
        report = parse_analyzer_report(analyzer_report(p))
    except Exception as exc:
        raise ModelError(f"TensorFlow's model analyzer cannot read '{p}' ({first_line(exc)}).") from None
    if not report["ops"]:
        raise ModelError(f"TensorFlow's model analyzer found no ops in '{p}'; is it a TFLite model?")
    nodes: dict[tuple[int, int], dict[str, Any]] = {}
    for w in report["warnings"]:
        nodes[(w["subgraph"], w["index"])] = {"subgraph": w["subgraph"], "index": w["index"], "op": w["op"],
                                              "reason": w["message"]}
    counts: dict[str, int] = {}
    for op in report["ops"]:
        name = op["op"]
        counts[name] = counts.get(name, 0) + 1
        key = (op["subgraph"], op["index"])
        if key in nodes:
            continue
        if name.startswith("Flex"):
            reason = "TensorFlow (Flex) op: runs on the CPU with the Flex delegate"
        elif name in GPU_DELEGATE_OPS or name in GPU_DELEGATE_CUSTOM_OPS:
            continue
        else:
            reason = "not an op of the GPU delegate"
        nodes[key] = {**op, "reason": reason}
    unsupported = sorted({n["op"] for n in nodes.values()})
    return {
        "delegate": "gpu",
        "compatible": not unsupported,
        "unsupported_ops": unsupported,
        "unsupported_nodes": sorted(nodes.values(), key=lambda n: (n["subgraph"], n["index"])),
        "ops": dict(sorted(counts.items())),
        "checked_with": "tf.lite.experimental.Analyzer (gpu_compatibility=True) and the GPU delegate's op list",
    }


def npu_compatibility(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Which ops of a .tflite an integer-only accelerator (NNAPI NPUs, vendor NPU delegates, Edge TPU) cannot take.

    Those delegates run int8/uint8 ops; an op that reads or writes a float tensor, and any custom or Flex
    op, stays on the CPU and splits the graph. Read from the flatbuffer (no TensorFlow).

    Returns:
        {"delegate": "npu", "compatible": bool, "unsupported_ops": sorted op names, "unsupported_nodes":
         [{"subgraph", "index", "op", "reason"}...], "ops": {op: count}, "checked_with": ...}.

    Raises:
        ModelError: the file is not a TFLite model.
    """
    from edgetl.runtime.metadata import flatbuffer_text, load_tflite, tflite_schema

    root = load_tflite(path)
    schema = tflite_schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    floats = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    counts: dict[str, int] = {}
    nodes: list[dict[str, Any]] = []
    for g in range(root.SubgraphsLength()):
        sg = root.Subgraphs(g)
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            code = root.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = names.get(builtin, str(builtin))
            if name == "CUSTOM":
                name = flatbuffer_text(code.CustomCode())
            counts[name] = counts.get(name, 0) + 1
            tensors = [op.Inputs(j) for j in range(op.InputsLength())]
            tensors += [op.Outputs(j) for j in range(op.OutputsLength())]
            if builtin == schema.BuiltinOperator.CUSTOM:
                nodes.append({"subgraph": g, "index": i, "op": name, "reason": "custom op"})
            elif any(t >= 0 and sg.Tensors(t).Type() in floats for t in tensors):
                nodes.append({"subgraph": g, "index": i, "op": name, "reason": "float tensors (not integer)"})
    unsupported = sorted({n["op"] for n in nodes})
    return {"delegate": "npu", "compatible": not unsupported, "unsupported_ops": unsupported,
            "unsupported_nodes": nodes, "ops": dict(sorted(counts.items())),
            "checked_with": "the flatbuffer's tensor types (integer-only accelerators)"}


# ----------------------------------------------------------------------------------------------
# ONNX Runtime Mobile

_PROVIDERS = (("NNAPI", None), ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
              ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md"))


def _partition_summary(info: Any) -> dict[str, Any]:
    total = int(info.num_nodes)
    supported = int(info.num_supported_nodes)
    return {
        "nodes": total,
        "supported_nodes": supported,
        "supported_fraction": round(supported / total, 4) if total else 0.0,
        "partitions": int(info.num_partitions),
        "unsupported_ops": sorted(str(o) for o in info.unsupported_ops),
        "nodes_unsupported_for_dynamic_shapes": int(info.nodes_unsupported_due_to_dynamic_input),
        "verdict": info.suitability().name.lower(),
    }


def onnx_mobile_usability(path: str | os.PathLike[str]) -> dict[str, Any]:
    """ONNX Runtime's mobile usability check of an .onnx file: NNAPI and CoreML partitions.

    The model is first optimised at the basic level, as the checker's command does (and as the ORT
    converter will). Each provider gets the summary as is and with dynamic shapes (the batch) fixed.

    Returns:
        {"providers": {name: {"as_is": summary, "fixed_shapes": summary}}, "dynamic_inputs": [names]}, where a
        summary has nodes, supported_nodes, supported_fraction, partitions, unsupported_ops,
        nodes_unsupported_for_dynamic_shapes and verdict ("yes", "maybe" or "no": ONNX Runtime's own).

    Raises:
        ModelError: the file is not an ONNX model the checker can read.
    """
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    p = Path(path)
    checker_log = logging.getLogger("check_usability")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / p.name
            optimize_model(p, optimized, use_external_initializers=True)
            model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
            dynamic, _ = uc.check_shapes(model.graph, logger=checker_log)
            providers: dict[str, Any] = {}
            for name, config in _PROVIDERS:
                def check(fixed: bool, config: str | None = config) -> Any:
                    if config is None:
                        return uc.check_nnapi_partitions(model, require_fixed_input_sizes=fixed)
                    return uc.check_coreml_partitions(model, fixed, config)

                providers[name] = {"as_is": _partition_summary(check(True)),
                                   "fixed_shapes": _partition_summary(check(False))}
    except Exception as exc:
        raise ModelError(f"ONNX Runtime's mobile usability check cannot read '{p}' ({first_line(exc)}).") from None
    return {"providers": providers, "dynamic_inputs": sorted(d.name for d in dynamic or [])}


def mcu_compatibility(path: str | os.PathLike[str]) -> dict[str, Any]:
    """TensorFlow Lite Micro's verdict on a .tflite (edgetl.runtime.tflm_ops.mcu_compatibility); {"error": why}
    when it cannot be made (tflite-micro missing), so the other checks still show."""
    from edgetl.runtime.tflm_ops import mcu_compatibility as check

    try:
        return check(path)
    except ModelError as exc:
        return {"error": str(exc)}
