"""OpenVINO export: the frozen float graph -> OpenVINO IR (a folder holding model.xml + model.bin) for Intel CPUs,
GPUs and NPUs.

The IR is converted by `openvino.convert_model` from the float ONNX file the export already wrote (1.0 CPU s on
MobileNetV2 0.35 at 48) or, when there is none, from the frozen forward pass's GraphDef (2.1 CPU s; tf2onnx and
then OpenVINO took 7): both match Keras within 4e-7. Modes:
    none     float32 weights (the IR written without OpenVINO's default fp16 compression).
    float16  float16 weights (half the size); OpenVINO's CPU plugin computes in float32 after loading them.
    int8     edgetl's own int8 TFLite graph (the `tflite int8` file's: ranges measured in LiteRT on the same
             class-balanced calibration images as every integer file, edgetl's bias correction) converted to IR,
             its depthwise weights' dequantization moved to the kernels so that OpenVINO's CPU plugin runs every
             convolution and the classifier on int8 kernels. On real photos it scored above LiteRT int8, edgetl's
             QDQ ONNX graph and NNCF's defaults (BENCHMARKS.md). With --auto it is kept when it meets --max-drop,
             else NNCF's accuracy-controlled quantization reverts the layers that lose most to float.
The two files live in one folder so the export's staging move places them together (one rename) and a reader never
sees a .bin from another export beside an .xml. The edgetl metadata is the IR's rt_info entry METADATA_KEY (JSON),
which OpenVINO keeps through read_model/save_model and ignores at run time.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.core.errors import ExportError, UsageError, first_line
from edgetl.core.fileio import atomic_path
from edgetl.core.native import quiet_native_stderr
from edgetl.export.formats.base import CALIBRATION, FROZEN, ExportContext, Format, WriteRequest
from edgetl.runtime.openvino import INPUT_NAME, METADATA_KEY, MODEL_FILE, OUTPUT_NAME, load_openvino

log = logging.getLogger("edgetl")

MODES = ("none", "float16", "int8")
NNCF_PIP = "pip install 'nncf>=3.4,<3.5'"
LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze")


def convert_openvino(source: Any) -> Any:
    """The float32 openvino.Model of `source`: a float .onnx file or SavedModel folder, or a frozen forward pass
    (edgetl.export.formats.saved_model.frozen_forward), its input named "image" and its output "probabilities".

    Raises:
        ExportError: OpenVINO is missing, or could not convert the graph.
    """
    ov = load_openvino(ExportError)
    try:
        with quiet_native_stderr():  # front ends that do not take the file say so on stderr before one does
            if isinstance(source, (str, os.PathLike)):
                model = ov.convert_model(os.fspath(source))
            else:
                # OpenVINO's TensorFlow front end takes the frozen pass's GraphDef: no SavedModel or ONNX file first.
                model = ov.convert_model(source.graph.as_graph_def())
    except Exception as exc:
        raise ExportError(f"OpenVINO conversion failed: {first_line(exc)[:300]}. Re-run with EDGETL_DEBUG=1 for the "
                          "full error.") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; edgetl "
                          "exports single-input single-output classifiers.")
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    rt = model.get_rt_info()
    # What convert_model records of its call names a temporary file on this machine: not part of the file we ship.
    with contextlib.suppress(Exception):
        del rt["conversion_parameters"]
    return model


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF draws progress bars on stdout and logs through its own handler: library code never prints, so both go
    to edgetl's debug log."""
    import nncf

    out = io.StringIO()
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield
    finally:
        logger.setLevel(level)
        if out.getvalue().strip():
            log.debug("NNCF: %s", out.getvalue().strip()[-2000:])


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise ExportError(f"--format openvino --quantize int8 needs NNCF, which is not installed. Run: {NNCF_PIP}"
                          ) from None
    return nncf


def calibration_dataset(calibration: Any) -> Any:
    """An nncf.Dataset over (N, H, W, 3) pixels 0..255 (uint8 or float), one float32 image at a time: the array is
    the job's uint8 one, converted image by image, not copied whole to float."""
    import numpy as np

    nncf = _nncf()
    return nncf.Dataset(range(len(calibration)), lambda i: np.asarray(calibration[i:i + 1], dtype=np.float32))


def quantize_nncf(model: Any, calibration: Any, *, bias_correction: bool = True) -> Any:
    """NNCF's post-training int8 quantization (its defaults) of an openvino.Model on every calibration image: not
    what `-f openvino -q int8` writes (int8_ir is), kept for tools/bench_openvino.py's comparison.

    Raises:
        UsageError: no calibration images; ExportError: NNCF is missing or failed.
    """
    if calibration is None or len(calibration) == 0:
        raise UsageError("--format openvino --quantize int8 needs calibration images and none were given.")
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    try:
        with _quiet_nncf():
            return nncf.quantize(model, calibration_dataset(calibration), subset_size=len(calibration),
                                 advanced_parameters=AdvancedQuantizationParameters(
                                     disable_bias_correction=not bias_correction))
    except Exception as exc:
        raise ExportError(f"NNCF int8 quantization failed: {first_line(exc)[:300]}.") from None


def tflite_int8(source: Any, calibration: Any, *, bias_correction: bool = True, threads: int | None = None) -> bytes:
    """edgetl's int8 TFLite flatbuffer (float input and output) of the float graph `source` (a frozen forward pass
    or SavedModel folder): the `tflite int8` file's recipe, ranges measured in LiteRT on `calibration`, then bias
    correction. The export makes the same once for every integer file (ExportContext.quantize_shared).

    Raises:
        UsageError: no calibration images, or a source TFLite cannot convert (an .onnx file); ExportError: failed.
    """
    from edgetl.export.formats.tflite import Quantizer

    if calibration is None or len(calibration) == 0:
        raise UsageError("--format openvino --quantize int8 needs calibration images and none were given.")
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx":
        raise UsageError("openvino int8 is made from the model's TFLite int8 graph: pass the frozen forward pass or a "
                         "SavedModel folder, not an .onnx file.")
    return Quantizer(source, calibration, threads, bias_correction).quantize("int8", None)[0]


def int8_ir(tflite: bytes, work: str | os.PathLike[str]) -> Any:
    """The int8 openvino.Model of an int8 TFLite flatbuffer (written into `work`, which must outlive the model's
    saving): OpenVINO keeps its ranges and int8 weights as FakeQuantize and dequantization nodes, and
    int8_weights_at_kernels lets the CPU plugin run every convolution on int8 kernels."""
    path = Path(work) / "int8.tflite"
    path.write_bytes(tflite)
    model = convert_openvino(path)
    moved = int8_weights_at_kernels(model)
    log.debug("openvino int8: %d kernels' weight dequantization moved to the kernel", moved)
    return model


def int8_weights_at_kernels(model: Any) -> int:
    """Move each kernel's int8 weight dequantization (int8 constant -> Convert -> Multiply by a per-channel scale)
    past the layout ops between it and the kernel; the number moved.

    OpenVINO's TFLite front end dequantizes depthwise kernels in TFLite's [1, h, w, C] layout and then reshapes and
    transposes them to [C, 1, 1, h, w]: the CPU plugin's low-precision pass does not see int8 weights through those,
    and ran all 17 depthwise convolutions of MobileNetV2 in float (1.7x slower than LiteRT int8 at 224). Here the
    layout ops are applied to the int8 values and to the scales ahead of time; the values are unchanged.
    """
    import numpy as np
    import openvino.opset13 as ops

    moved = 0
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution"):
            continue
        chain, node = [], op.input_value(1).get_node()
        while node.get_type_name() in LAYOUT_OPS:
            chain.append(node)
            node = node.input_value(0).get_node()
        if not chain or node.get_type_name() != "Multiply":
            continue
        convert, scale = node.input_value(0).get_node(), node.input_value(1).get_node()
        if convert.get_type_name() != "Convert" or scale.get_type_name() != "Constant":
            continue
        const = convert.input_value(0).get_node()
        if const.get_type_name() != "Constant" or const.get_output_element_type(0).get_type_name() != "i8":
            continue
        w = const.get_data()
        sc = np.broadcast_to(scale.get_data(), w.shape)
        for layer in reversed(chain):
            if layer.get_type_name() == "Transpose":
                perm = layer.input_value(1).get_node().get_data()
                w, sc = np.transpose(w, perm), np.transpose(sc, perm)
            else:  # Reshape, Squeeze, Unsqueeze: the static output shape says it all for a constant
                shape = [d.get_length() for d in layer.get_output_partial_shape(0)]
                w, sc = w.reshape(shape), sc.reshape(shape)
        per_channel = sc.reshape(sc.shape[0], -1)
        if not np.all(per_channel == per_channel[:, :1]):
            continue  # not one scale per output channel: left as it is
        scales = per_channel[:, :1].reshape([sc.shape[0]] + [1] * (sc.ndim - 1)).astype(np.float32)
        weights = ops.multiply(ops.convert(ops.constant(np.ascontiguousarray(w)), "f32"), ops.constant(scales))
        op.input(1).replace_source_output(weights.output(0))
        moved += 1
    model.validate_nodes_and_infer_types()
    return moved


def held_out_accuracy(model: Any, images: Any, labels: Any, threads: int | None = None) -> float:
    """Top-1 accuracy of an openvino.Model on `images` (pixels 0..255) against `labels`, in the CPU plugin (f32
    inference precision, as the Runner compiles it)."""
    import numpy as np

    ov = load_openvino(ExportError)
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(model, "CPU", config)
    x = np.asarray(images, dtype=np.float32)
    top = np.concatenate([np.asarray(compiled(x[i:i + 32])[0]).argmax(1) for i in range(0, len(x), 32)])
    return float(np.mean(top == np.asarray(labels)))


def quantize_int8_within(model: Any, calibration: Any, images: Any, labels: Any, max_drop: float, *,
                         bias_correction: bool = True, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """NNCF's accuracy-controlled int8 quantization: post-training int8, then the layers that lose most reverted to
    float one by one until top-1 accuracy on `images` (labels `labels`) is within `max_drop` of the float model's.

    Returns the model and what NNCF measured: {"float_accuracy", "accuracy", "drop", "float_ops": unquantized_ops}.
    When no revert gets within the budget NNCF returns its best model, which the file's verification (and
    --max-drop) then judges like any other.

    Raises:
        UsageError: no calibration or held-out images; ExportError: NNCF is missing or failed.
    """
    import numpy as np

    if calibration is None or len(calibration) == 0:
        raise UsageError("--format openvino --quantize int8 needs calibration images and none were given.")
    if images is None or labels is None or len(images) == 0:
        raise UsageError("--auto for openvino needs held-out images with labels (a test or val split) to measure the "
                         "drop. Train with --test-split or --val-split.")
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters, AdvancedQuantizationParameters

    x, y = np.asarray(images), np.asarray(labels)
    scores: list[float] = []

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        hits = [float(np.argmax(compiled(np.asarray(x[i:i + 1], dtype=np.float32))[0]) == int(y[i])) for i in items]
        score = float(np.mean(hits)) if hits else 0.0
        if len(hits) == len(x):  # NNCF also probes with one image and ranks on subsets: those are not the figures
            scores.append(score)
        return score, hits

    try:
        with _quiet_nncf():
            out = nncf.quantize_with_accuracy_control(
                model, calibration_dataset(calibration),
                nncf.Dataset(range(len(x)), lambda i: np.asarray(x[i:i + 1], dtype=np.float32)), validate,
                max_drop=float(max_drop), subset_size=len(calibration),
                advanced_quantization_parameters=AdvancedQuantizationParameters(
                    disable_bias_correction=not bias_correction),
                advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                    num_ranking_workers=threads or 1))
    except Exception as exc:
        raise ExportError(f"NNCF accuracy-controlled int8 quantization failed: {first_line(exc)[:300]}.") from None
    # NNCF validates the float model first and the model it returns last, on every held-out image.
    result: dict[str, Any] = {"float_accuracy": round(scores[0], 4) if scores else None,
                              "accuracy": round(scores[-1], 4) if scores else None,
                              "drop": round(scores[0] - scores[-1], 4) if scores else None,
                              "float_ops": unquantized_ops(out)}
    return out, result


def unquantized_ops(model: Any) -> list[str]:
    """Convolutions and MatMuls whose input does not come from a FakeQuantize: the ones that compute in float (NNCF
    leaves two so in MobileNetV2, the first convolution and the classifier; accuracy control adds what it reverts)."""
    names = []
    for op in model.get_ops():
        if op.get_type_name() not in ("Convolution", "GroupConvolution", "MatMul"):
            continue
        node = op.input_value(0).get_node()
        # A QDQ ONNX graph quantizes the NHWC input before its transpose to NCHW: the layout op moves int8 values.
        while node.get_type_name() in LAYOUT_OPS:
            node = node.input_value(0).get_node()
        if node.get_type_name() != "FakeQuantize":
            names.append(op.get_friendly_name())
    return names


def write_ir(model: Any, path: str | os.PathLike[str], *, meta: dict[str, Any] | None,
             compress_to_fp16: bool = False) -> Path:
    """Write `model` (with `meta` in its rt_info) as the folder `path` holding MODEL_FILE and its .bin, atomically."""
    ov = load_openvino(ExportError)
    if meta is not None:
        model.set_rt_info(json.dumps(meta, sort_keys=True, ensure_ascii=False), [METADATA_KEY])
    with atomic_path(path) as tmp:
        tmp.mkdir()
        try:
            ov.save_model(model, str(tmp / MODEL_FILE), compress_to_fp16=compress_to_fp16)
        except Exception as exc:
            raise ExportError(f"OpenVINO could not write the IR: {first_line(exc)[:300]}.") from None
    return Path(path)


def export_openvino(source: Any, path: str | os.PathLike[str], mode: str = "none", *,
                    meta: dict[str, Any] | None = None, calibration: Any = None,
                    bias_correction: bool = True, int8_tflite: bytes | None = None) -> Path:
    """Write the OpenVINO IR folder `path` (model.xml + model.bin) in `mode`, atomically.

    Args:
        source: the float graph: a .onnx file or SavedModel folder, or a frozen forward pass (convert_openvino); for
            "int8", the frozen pass or SavedModel (tflite_int8) unless `int8_tflite` is given.
        path: the folder to write.
        mode: "none" (float32), "float16" (float16 weights) or "int8" (edgetl's int8 TFLite graph, int8_ir).
        meta: the edgetl metadata; None writes none.
        calibration: for "int8", (N, H, W, 3) pixels 0..255, uint8 or float32.
        bias_correction: for "int8", edgetl's bias correction (False: the quantizer's graph as it is).
        int8_tflite: for "int8", the int8 TFLite flatbuffer already made (the export's shared one).

    Returns:
        The written folder.

    Raises:
        UsageError: an unknown mode, or int8 without calibration images; ExportError: conversion failed.
    """
    if mode not in MODES:
        raise UsageError(f"--quantize {mode} does not exist for openvino. openvino modes: {', '.join(MODES)}.")
    if mode != "int8":
        return write_ir(convert_openvino(source), path, meta=meta, compress_to_fp16=mode == "float16")
    if int8_tflite is None:
        int8_tflite = tflite_int8(source, calibration, bias_correction=bias_correction)
    with tempfile.TemporaryDirectory(prefix="edgetl-openvino-") as work:
        return write_ir(int8_ir(int8_tflite, work), path, meta=meta)


def within_budget(ctx: ExportContext, int8: Any, path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """--auto: the int8 IR `int8` when its held-out drop is within --max-drop, else NNCF's accuracy-controlled
    quantization (layers reverted to float until it is); the figures of the one written."""
    x, y, _ = ctx.images.held_out()
    if y is None or len(x) == 0:
        raise UsageError("--auto for openvino needs held-out images with labels (a test or val split) to measure the "
                         "drop. Train with --test-split or --val-split.")
    float_model = convert_openvino(ctx.exported_float_onnx() or ctx.frozen(None))
    base = held_out_accuracy(float_model, x, y, ctx.threads)
    acc = held_out_accuracy(int8, x, y, ctx.threads)
    figures: dict[str, Any] = {"quantizer": "edgetl", "float_accuracy": round(base, 4), "accuracy": round(acc, 4),
                               "drop": round(base - acc, 4), "float_ops": unquantized_ops(int8)}
    model = int8
    if base - acc > float(ctx.opts.max_drop):
        log.info("openvino int8: edgetl's int8 IR drops %.4f (> %s); NNCF's accuracy control next", base - acc,
                 ctx.opts.max_drop)
        model, nncf_figures = quantize_int8_within(float_model, ctx.calib, x, y, float(ctx.opts.max_drop),
                                                   bias_correction=ctx.opts.bias_correction, threads=ctx.threads)
        figures = {"quantizer": "nncf", **nncf_figures, "edgetl_drop": figures["drop"]}
    write_ir(model, path, meta=meta)
    return {"accuracy_control": figures}


def prepare(ctx: ExportContext, mode: str, meta: dict[str, Any]) -> Any:
    """What the IR is made from, made (and timed) before the conversion: for int8 the export's shared calibrated
    TFLite model (every integer file's ranges); else the export's float ONNX file when it writes one, else the
    frozen pass."""
    if mode == "int8":
        return ctx.calibrated_model(None)
    return ctx.exported_float_onnx() or ctx.frozen(None)


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write one IR folder from what `prepare` made; int8 reports how many kernels' biases were corrected."""
    source = req.source if req.source is not None else prepare(ctx, req.mode, req.meta)
    if req.mode != "int8":
        export_openvino(source, req.path, req.mode, meta=req.meta)
        return {}
    data, corrected = ctx.quantize_shared("int8", None, source)
    if ctx.opts.accuracy_control:
        # --auto: measured on the same held-out images the file is then verified on, as the TFLite search does.
        work = ctx.scratch("openvino-int8")
        work.mkdir(parents=True, exist_ok=True)
        return {"bias_corrected": len(corrected), **within_budget(ctx, int8_ir(data, work), req.path, req.meta)}
    export_openvino(None, req.path, "int8", meta=req.meta, int8_tflite=data)
    return {"bias_corrected": len(corrected)}


FORMAT = Format(
    name="openvino", help="OpenVINO IR (a folder holding model.xml + model.bin; int8 from edgetl's int8 TFLite graph): "
    "OpenVINO Runtime on Intel CPUs, GPUs and NPUs", suffix="", modes=MODES, kind="openvino", write=write,
    needs=frozenset({FROZEN, CALIBRATION}), prepare=prepare, options=("accuracy_control",),
    file_name="{stem}-{tag}-openvino")
