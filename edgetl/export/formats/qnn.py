"""Qualcomm Hexagon NPU files: the float ONNX graph quantized in the HTP's types and compiled for one Snapdragon.

From the float .onnx the ONNX export writes (edgetl.export.onnx), two files:

- the portable QDQ .onnx: batch fixed to 1 (the HTP compiles static shapes only: with the free batch axis
  every node fails the provider's validation, "Cannot get shape"), ONNX Runtime's QNN pre-processing, and
  QDQ in the types the HTP backend takes (onnxruntime.quantization.execution_providers.qnn): uint8
  activations with int8 per-channel weights ("int8"), or uint16 activations with int8 weights ("int16x8",
  for a model int8 activations cost too much). ONNX Runtime's QNN package compiles it for whatever Snapdragon
  it runs on, when the session starts;
- the EPContext .onnx: that graph compiled ahead of time by the QNN provider for one SoC (`soc`), the QNN
  context binary embedded in an EPContext node: an app's session starts without compiling.

Calibration is edgetl's one pass over the job's class-balanced images (edgetl.export.onnx_bias.collect_statistics:
ONNX Runtime's MinMax ranges to the bit), in int8 each uint8 activation's range then narrowed to its least-squared-
error one (edgetl.export.ranges; MobileNetV2 1.0 at 224, 430 real photos, emulated HTP: drop 0.9 -> -0.7 points),
handed to the quantizer as its calibration cache; and each int8 kernel's mean rounding shift is taken off its
int32 bias (edgetl.export.onnx_bias.correct_bias), as for the ONNX int8 file.
Per-tensor uint8 weights (the QNN recipe's default) took a real-photo MobileNetV2 1.0 at 224 from 0.94 to 0.63
on the emulated HTP; per-channel int8 weights kept 0.95 (issue #27).
The model's input scaling (x / 127.5 - 1) is quantized on a step slightly wider than its range's, so that no
pixel value sits on a tie between two levels (edgetl.export.onnx_quant.input_scaling_overrides).

Both files carry edgetl's metadata (format "qnn", labels, image size, the SoC), so open_model reads them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.core.errors import ExportError, ModelError, UsageError, first_line
from edgetl.core.fileio import atomic_path
from edgetl.core.native import quiet_native_stderr, quiet_native_stdout
from edgetl.export.formats.base import CALIBRATION, FLOAT_ONNX, ExportContext, Format, WriteRequest
from edgetl.export.metadata import write_onnx_metadata
from edgetl.export.report import ExportRow
from edgetl.runtime.qnn import (
    KIND,
    QnnRunner,
    Soc,
    fallback_summary,
    get_soc,
    htp_support,
    provider,
    require,
    session_options,
)

log = logging.getLogger("edgetl")

FORMAT_NAME = KIND  # the format's name is its runtime kind's
# Mode -> the activations' type; weights are int8 per output channel in both (per tensor for Gemm/MatMul).
ACTIVATIONS = {"int8": "uint8", "int16x8": "uint16"}
MODES = tuple(ACTIVATIONS)
DEFAULT_MODE = "int8"
PORTABLE_SUFFIX = ".qdq.onnx"  # the portable file: the EPContext file's name with this suffix
SOC_OPTION = "soc"  # ExportOptions.format_options key: the chip the EPContext file is compiled for
# The emulator check: the EPContext file against the portable one on this many class-balanced images at most; the
# same graph, compiled ahead of time for the SoC or when the session starts, so their probabilities may differ by
# this much at most (measured: 0.03 with uint8 activations; a near-tie may still flip, so top-1 is only recorded).
CONTEXT_SAMPLES = 20
MAX_CONTEXT_DIFF = 0.15
MIN_EMULATOR_SAMPLES = 20  # the portable file on the emulated HTP and on the CPU kernels: at least this many


@dataclass
class QnnFiles:
    """What export_qnn wrote: the EPContext file, the portable QDQ file, and figures for the report row."""

    context: Path
    portable: Path
    soc: Soc
    figures: dict[str, Any] = field(default_factory=dict)


def portable_path(context: str | os.PathLike[str]) -> Path:
    """The portable QDQ file written beside the EPContext file `context` (x-int8-qnn.onnx: x-int8-qnn.qdq.onnx)."""
    return Path(context).with_suffix(PORTABLE_SUFFIX)


def fixed_batch(model: Any) -> Any:
    """`model` (changed in place) with every free axis of its inputs fixed to 1 and its output shapes inferred again.

    edgetl's files name their batch axis "batch"; another tool's file may name it anything, or leave it unnamed.
    """
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    for vi in model.graph.input:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                make_dim_param_fixed(model.graph, dim.dim_param, 1)
            elif not dim.HasField("dim_value"):
                dim.dim_value = 1
    fix_output_shapes(model)
    return model


def preprocess(float_model: str | os.PathLike[str], dst: Path) -> list[tuple[str, str]]:
    """Batch fixed to 1 and ONNX Runtime's QNN pre-processing, into `dst`; returns the model's metadata_props.

    qnn_preprocess_model raises a TypeError on a model with metadata_props (ONNX Runtime 1.31 updates a dict
    with the protobuf entries): they are taken off, the model pre-processed, and handed back to be put back.
    """
    import onnx
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    model = onnx.load(str(float_model))
    props = [(p.key, p.value) for p in model.metadata_props]
    del model.metadata_props[:]
    fixed_batch(model)
    fixed = dst.with_name("fixed.onnx")
    onnx.save(model, str(fixed))
    with quiet_native_stderr():
        changed = qnn_preprocess_model(str(fixed), str(dst))
    if not changed:  # nothing to fuse: the fixed model is the pre-processed one
        shutil.copyfile(fixed, dst)
    return props


def quantize_htp(src: Path, dst: Path, calibration: np.ndarray, mode: str = DEFAULT_MODE, *,
                 bias_correction: bool = True, input_name: str | None = None,
                 overrides: dict[str, list[dict[str, Any]]] | None = None, ranges: str = "mse") -> int:
    """Quantize the pre-processed float model `src` into QDQ `dst` in the HTP's types; returns the kernels corrected.

    Args:
        src, dst: ONNX paths (src from preprocess).
        calibration: (N, H, W, 3) images, pixels 0..255 (uint8 or float).
        mode: "int8" (uint8 activations) or "int16x8" (uint16 activations); int8 per-channel weights in both.
        bias_correction: take each int8 kernel's mean rounding shift off its int32 bias.
        input_name: the model's input (default: its first).
        overrides: ORT TensorQuantOverrides by tensor (e.g. {"t": [{"quant_type": QuantType.QUInt16}]}: that
            activation in 16 bits, ORT adding the conversions the HTP needs around it).
        ranges: "mse" (uint8 activations narrowed to their least-error ranges, as in the ONNX int8 file:
            edgetl.export.onnx_quant.calibrated_ranges) or "minmax".
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from edgetl.export.onnx_bias import collect_statistics, correct_bias, kernel_inputs
    from edgetl.export.onnx_quant import calibrated_ranges, input_scaling_overrides

    if mode not in ACTIVATIONS:
        raise UsageError(f"--quantize {mode} does not exist for qnn. qnn modes: {', '.join(MODES)}.")
    if calibration is None or len(calibration) == 0:
        raise UsageError("--format qnn needs calibration images and none were given.")
    source = load_model_with_shape_infer(src)
    name = input_name or source.graph.input[0].name
    images = np.asarray(calibration)

    class _Reader(CalibrationDataReader):  # the config wants one; the ranges come from the cache below
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, Any] | None:
            if self.i >= len(images):
                return None
            self.i += 1
            return {name: images[self.i - 1:self.i].astype(np.float32)}

        def rewind(self) -> None:
            self.i = 0

    activations = QuantType.QUInt16 if ACTIVATIONS[mode] == "uint16" else QuantType.QUInt8
    config = get_qnn_qdq_config(source, _Reader(), activation_type=activations, weight_type=QuantType.QInt8,
                                per_channel=True, init_overrides=dict(overrides) if overrides else None)
    stats = collect_statistics(source, images, name, kernel_inputs(source) if bias_correction else (),
                               op_types=config.op_types_to_quantize)
    levels = 65536 if ACTIVATIONS[mode] == "uint16" else 256
    chosen = calibrated_ranges(source, stats.ranges, images, name, ranges, levels)
    cache_ranges = TensorsData(CalibrationMethod.MinMax, {k: (np.array([lo], np.float32),
                                                              np.array([hi], np.float32))
                                                          for k, (lo, hi) in chosen.items()})
    # The HTP runs every node quantized, so the model's input scaling cannot stay float as in the ONNX int8 file:
    # its output gets a step that leaves no pixel value on a tie between two levels (1.0 at 224 on real photos,
    # emulated HTP: 56.25 -> 58.75%, agreement with float 85 -> 90%; issue #27, BENCHMARKS.md).
    extra = dict(config.extra_options or {})
    overrides = dict(extra.get("TensorQuantOverrides") or {})
    for tensor, value in input_scaling_overrides(source, name, stats.ranges, activations).items():
        overrides.setdefault(tensor, value)
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    with tempfile.TemporaryDirectory(prefix="edgetl-qnn-calib-") as work:
        cache = Path(work) / "ranges.json"
        save_tensors_data(cache_ranges, cache)
        with quiet_native_stderr():
            quantize_static(src, dst, config.calibration_data_reader, calibration_cache_path=cache,
                            calibrate_method=config.calibrate_method, quant_format=config.quant_format,
                            activation_type=config.activation_type, weight_type=config.weight_type,
                            op_types_to_quantize=config.op_types_to_quantize,
                            nodes_to_quantize=config.nodes_to_quantize, nodes_to_exclude=config.nodes_to_exclude,
                            per_channel=config.per_channel, reduce_range=config.reduce_range,
                            use_external_data_format=False, calibration_providers=config.calibration_providers,
                            extra_options=extra)
    if not bias_correction:
        return 0
    model, done = correct_bias(onnx.load(str(dst)), source, stats.means)
    onnx.save(model, str(dst))
    log.debug("QNN %s bias correction: %d kernels corrected", mode, len(done))
    return len(done)


def compile_context(qdq: Path, dst: Path, soc: Soc) -> str:
    """Compile the QDQ file `qdq` with the QNN provider for `soc` into the EPContext file `dst` (binary embedded).

    CPU fallback is disabled: a graph the HTP does not wholly take fails with the ops it rejects named.
    Returns the QNN SDK version the provider compiled with.

    Raises:
        ExportError: the provider rejects nodes, or its compiler fails.
    """
    import onnx

    ort, _, _ = provider()
    opts = session_options(soc=soc)
    try:
        with quiet_native_stderr(), quiet_native_stdout():
            ort.ModelCompiler(opts, str(qdq), embed_compiled_data_into_model=True,
                              flags=int(ort.OrtCompileApiFlags.ERROR_IF_NO_NODES_COMPILED)).compile_to_file(str(dst))
    except Exception as exc:
        text = first_line(exc)
        try:
            support = htp_support(qdq)
        except ModelError:
            support = {"rejected": [], "error": None}
        if support["rejected"]:
            raise ExportError(f"the model does not run wholly on the Hexagon NPU: {len(support['rejected'])} nodes "
                              f"would fall back to the CPU: {fallback_summary(support['rejected'])}. Replace those "
                              "layers, or export another format.") from None
        raise ExportError(f"the QNN compiler failed for {soc.name} ({soc.product}): {support['error'] or text}."
                          ) from None
    model = onnx.load(str(dst))
    for node in model.graph.node:
        if node.op_type == "EPContext":
            attrs = {a.name: a for a in node.attribute}
            if "ep_sdk_version" in attrs:
                return attrs["ep_sdk_version"].s.decode("utf-8", "replace")
    return ""


def export_qnn(float_model: str | os.PathLike[str], path: str | os.PathLike[str], mode: str = DEFAULT_MODE, *,
               meta: dict[str, Any] | None, calibration: np.ndarray, soc: str | int | None = None,
               bias_correction: bool = True, portable: str | os.PathLike[str] | None = None) -> QnnFiles:
    """Write the EPContext file `path` for `soc` and the portable QDQ file beside it (atomically, both or neither).

    Args:
        float_model: the float32 .onnx (edgetl.export.onnx.export_onnx's "none" file, or any float ONNX classifier).
        path: the EPContext .onnx to write.
        mode: "int8" (uint8 activations) or "int16x8" (uint16 activations); int8 per-channel weights.
        meta: the edgetl metadata (format "qnn"); each file gets it with its own "qnn" entry. None writes none.
        calibration: (N, H, W, 3) calibration images, pixels 0..255 (the job's class-balanced ones).
        soc: chip name or soc_model id (edgetl.runtime.qnn.SOCS; default DEFAULT_SOC).
        bias_correction: correct each int8 kernel's bias for its rounding's mean shift.
        portable: where the QDQ file goes (default: portable_path(path)).

    Raises:
        UsageError: unknown soc or mode, no calibration images, or onnxruntime-qnn not installed.
        ExportError: quantization or compilation failed (ops the HTP rejects are named).
    """
    import onnx

    require(UsageError)
    chip = get_soc(soc)
    if mode not in ACTIVATIONS:
        raise UsageError(f"--quantize {mode} does not exist for qnn. qnn modes: {', '.join(MODES)}.")
    context = Path(path)
    qdq_out = Path(portable) if portable is not None else portable_path(context)
    work = Path(tempfile.mkdtemp(prefix="edgetl-qnn-"))
    try:
        pre = work / "pre.onnx"
        qdq = work / "qdq.onnx"
        try:
            props = preprocess(float_model, pre)
            corrected = quantize_htp(pre, qdq, calibration, mode, bias_correction=bias_correction)
        except (UsageError, ExportError):
            raise
        except Exception as exc:
            raise ExportError(f"QNN {mode} quantization failed: {first_line(exc)}.") from None
        info = {"activations": ACTIVATIONS[mode], "weights": "int8 per channel", "soc": chip.name,
                "product": chip.product, "soc_model": chip.soc_model, "htp_arch": chip.htp_arch,
                "context": context.name, "portable": qdq_out.name}
        compiled = work / "context.onnx"
        sdk = compile_context(qdq, compiled, chip)
        info["qnn_sdk"] = sdk
        ctx_model = onnx.load(str(compiled))
        _put_back(ctx_model, props, meta, {**info, "file": "context"})
        with atomic_path(qdq_out, suffix=".onnx") as tmp_qdq, atomic_path(context, suffix=".onnx") as tmp_ctx:
            model = onnx.load(str(qdq))
            _put_back(model, props, meta, {**info, "file": "portable"})
            onnx.save(model, str(tmp_qdq))
            onnx.save(ctx_model, str(tmp_ctx))
        figures = {"soc": chip.name, "activations": ACTIVATIONS[mode], "bias_corrected": corrected,
                   "portable": str(qdq_out), "qnn_sdk": sdk}
        return QnnFiles(context, qdq_out, chip, figures)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _put_back(model: Any, props: list[tuple[str, str]], meta: dict[str, Any] | None, qnn: dict[str, Any]) -> None:
    """The float model's metadata_props back on `model` (after the ones it has: the provider's own), then edgetl's."""
    have = {p.key for p in model.metadata_props}
    for key, value in props:
        if key not in have:
            model.metadata_props.add(key=key, value=value)
    if meta is not None:
        write_onnx_metadata(model, {**meta, "format": FORMAT_NAME, "batch": 1, "qnn": qnn})
    model.doc_string = ("edgetl image classifier for the Qualcomm Hexagon NPU (QNN HTP): float32 RGB pixels 0..255 "
                        "NHWC in, class probabilities out")


# ----------------------------------------------------------------------------------------------
# The record, its writer and its emulator check


def _check_options(opts: Any) -> None:
    """Planned --format qnn: the provider installed and the SoC known, before anything is made (UsageError)."""
    require(UsageError)
    get_soc(opts.format_options.get(SOC_OPTION))


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write the EPContext file at req.path and the portable QDQ file beside it (a companion)."""
    assert ctx.calib is not None
    files = export_qnn(ctx.float_onnx(), req.path, req.mode, meta=req.meta, calibration=ctx.calib,
                       soc=ctx.opts.format_options.get(SOC_OPTION), bias_correction=ctx.opts.bias_correction,
                       portable=portable_path(req.path))
    return {"bias_corrected": files.figures["bias_corrected"],
            "qnn": {"soc": files.soc.name, "product": files.soc.product, "activations": ACTIVATIONS[req.mode],
                    "qnn_sdk": files.figures["qnn_sdk"]}}


def check_emulator(ctx: Any, row: ExportRow, path: Path) -> None:
    """The portable QDQ file on the emulated HTP (CPU fallback disabled) against ONNX Runtime's CPU kernels on the
    same file, and the EPContext file (verified already, against Keras) against the portable one.

    On a class-balanced sample of the held-out images sized to half the file's verification budget (the emulator
    is slow: about 160 ms an image at 96 px), never fewer than MIN_EMULATOR_SAMPLES; the sample size is recorded.
    Fails the row when the portable file does not start on the HTP or the two files' outputs differ by more than
    MAX_CONTEXT_DIFF.
    """
    import time

    from edgetl.export.images import balanced_order
    from edgetl.runtime.metadata import read_onnx_metadata
    from edgetl.runtime.onnxrt import OnnxRunner
    from edgetl.runtime.runner import Runner

    portable = portable_path(path)
    figures = row.extra.setdefault("qnn", {})
    figures["portable"] = str(portable_path(row.path))
    meta = read_onnx_metadata(portable)
    # Compiled for the EPContext file's SoC, so that the two files run the same HTP generation's kernels.
    chip = get_soc(((meta or {}).get("qnn") or {}).get("soc"))
    try:
        runner: Runner = QnnRunner(portable, ctx.threads, soc=chip)
    except ModelError as exc:
        row.fail(f"the portable file does not start on the HTP: {exc}", "qnn_emulator")
        return
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, None, None)
    images = getattr(ctx, "images", None)
    if not ctx.opts.verify or images is None:
        runner.close()
        figures["emulator"] = "the portable file starts on the HTP with CPU fallback disabled (not run: --no-verify)"
        return
    x, y, _ = images.held_out()
    order = balanced_order(y, len(x))
    try:
        c0 = time.process_time()
        first = runner.predict(x[order[:2]])
        per_image = (time.process_time() - c0) / max(1, min(2, len(x)))
        budget = ctx.opts.verify_seconds
        n = len(x) if budget is None else min(len(x), max(MIN_EMULATOR_SAMPLES, int(budget / 2 / max(per_image, 1e-6))))
        idx = order[:n]
        htp = np.concatenate([first, runner.predict(x[idx[2:]])]) if n > 2 else first[:n]
    finally:
        runner.close()  # one live session of a graph at a time on the emulated HTP
    cpu_runner = OnnxRunner(portable, ctx.threads)
    cpu_runner.finish_metadata(meta, cpu_runner.spatial_size(), cpu_runner.num_outputs, None, None)
    try:
        cpu = cpu_runner.predict(x[idx])
    finally:
        cpu_runner.close()
    k = min(n, CONTEXT_SAMPLES)
    context_runner = QnnRunner(path, ctx.threads)
    context_runner.finish_metadata(meta, context_runner.spatial_size(), context_runner.num_outputs, None, None)
    try:
        context = context_runner.predict(x[idx[:k]])
    finally:
        context_runner.close()
    agree = float(np.mean(context.argmax(1) == htp[:k].argmax(1)))
    diff = float(np.abs(context - htp[:k]).max())
    cpu_agree = float(np.mean(htp.argmax(1) == cpu.argmax(1)))
    figures.update({"emulator_samples": int(n), "held_out": int(len(x)),
                    "emulator_cpu_ms_per_image": round(per_image * 1000, 1), "cpu_agreement": round(cpu_agree, 4),
                    "context_agreement": round(agree, 4), "context_max_diff": round(diff, 4),
                    "context_samples": int(k)})
    if y is not None:
        figures["portable_accuracy"] = round(float(np.mean(htp.argmax(1) == y[idx])), 4)
    if diff > MAX_CONTEXT_DIFF:
        row.fail(f"the EPContext file's probabilities differ from the portable file's by {diff:.3f} on the emulated "
                 f"HTP (tolerance {MAX_CONTEXT_DIFF}; top-1 agreement {agree:.3f} on {k} images)", "qnn_emulator")


FORMAT = Format(
    name=FORMAT_NAME, help="Qualcomm Hexagon NPU (QNN): QDQ in the HTP's types compiled by ONNX Runtime's QNN "
    "provider for --soc into an EPContext .onnx, plus the portable QDQ file (.qdq.onnx)",
    suffix=".onnx", modes=MODES, kind=KIND, write=write, needs=frozenset({FLOAT_ONNX, CALIBRATION}),
    options=(SOC_OPTION,), batch_one=MODES, check=_check_options, file_name="{stem}-{tag}-qnn{suffix}",
    companions=(PORTABLE_SUFFIX,))

