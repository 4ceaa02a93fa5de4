"""ONNX export: frozen forward pass or SavedModel -> .onnx (tf2onnx), checked, optimised offline, quantized.

The graph takes the same input as every edgetl artifact: float32 RGB pixels 0..255, NHWC, with a
dynamic batch axis named "batch"; it is named "image" and its output "probabilities". ONNX Runtime's
basic graph optimisations (constant folding, Conv+BatchNorm/Add/Mul fusion, redundant node removal)
are applied offline: they keep standard ONNX ops only, so the file still runs in any ONNX runtime.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgetl.core.errors import ExportError, UsageError
from edgetl.core.fileio import atomic_path
from edgetl.core.native import quiet_native_stderr
from edgetl.export.formats.base import CALIBRATION, FROZEN, ExportContext, Format, WriteRequest
from edgetl.export.metadata import write_onnx_metadata

log = logging.getLogger("edgetl")

DEFAULT_OPSET = 17
MIN_OPSET = 13  # per-channel QDQ (the int8 mode) needs 13; tf2onnx 1.17 writes up to 18
MAX_OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
MODES = ("none", "dynamic", "int8")


def check_opset(opset: int) -> int:
    """Reject opsets tf2onnx 1.17 cannot write or edgetl's int8 mode cannot use."""
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"--opset {opset} is out of range. Use {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET}).")
    return opset


def convert_onnx(source: Any, *, opset: int = DEFAULT_OPSET) -> Any:
    """Convert a SavedModel's serving signature, or a frozen ConcreteFunction, to an ONNX ModelProto (float32).

    `source`: a SavedModel folder, or edgetl.export.saved_model.frozen_forward's function. The function
    is what the TFLite files convert from too; it spares writing a SavedModel and loading it back
    (MobileNetV2 at 224: 2.0 s against 10 s, the same ONNX graph and outputs).

    Raises:
        ExportError: tf2onnx failed (the op it could not convert is named when it says so).
    """
    check_opset(opset)
    # tf2onnx logs each conversion step at INFO and deprecation notices at WARNING.
    for name in ("tf2onnx", "tensorflow"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from tf2onnx import convert, tf_loader
    except Exception as exc:  # an incompatible protobuf/onnx makes the import itself fail
        raise ExportError(f"tf2onnx cannot be imported ({type(exc).__name__}: {exc}). Reinstall edgetl's "
                          "pinned versions (tf2onnx 1.17, onnx 1.23).") from None
    try:
        with quiet_native_stderr():
            if isinstance(source, (str, os.PathLike)):
                graph_def, inputs, outputs = tf_loader.from_saved_model(
                    os.fspath(source), None, None, tag="serve", signatures=["serving_default"])
            else:
                inputs = [t.name for t in source.inputs]  # frozen: no variable (resource) inputs left
                outputs = [t.name for t in source.outputs]
                graph_def = tf_loader.from_function(source, inputs, outputs)
            if len(inputs) != 1 or len(outputs) != 1:
                raise ExportError(f"the model has {len(inputs)} inputs and {len(outputs)} outputs; edgetl "
                                  "exports single-input single-output classifiers.")
            model, _ = convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs, opset=opset)
    except ExportError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"ONNX conversion failed: {text[0][:300] if text else type(exc).__name__}. Re-run with "
                          "EDGETL_DEBUG=1 for tf2onnx's log, or try another --opset.") from None
    _rename_io(model)
    model.producer_name = "edgetl (tf2onnx)"
    return model


def _rename_io(model: Any) -> None:
    """Name the input "image" and the output "probabilities", and the batch axis "batch"."""
    graph = model.graph
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    for vi in list(graph.input) + list(graph.output):
        vi.name = renames.get(vi.name, vi.name)
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_DIM


def optimize_offline(src: str, dst: str, level: str = "basic") -> None:
    """Run ONNX Runtime's graph optimisations once and save the result.

    "basic" keeps standard ONNX ops (the file stays portable); "extended" adds ORT-only fused ops
    (com.microsoft domain) and so makes the file ONNX Runtime-only. Layout optimisations ("all")
    depend on the CPU and are left to the session that runs the file.
    """
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def check_model(model_or_path: Any) -> None:
    """onnx.checker with full shape inference; ExportError on failure."""
    import onnx

    try:
        onnx.checker.check_model(model_or_path, full_check=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"the ONNX file fails onnx.checker: {text[0][:300] if text else type(exc).__name__}. "
                          "Try another --opset.") from None


def export_onnx(source: Any, path: str | os.PathLike[str], mode: str = "none", *,
                meta: dict[str, Any] | None = None, opset: int = DEFAULT_OPSET, calibration: Any = None,
                optimize: bool = True, float_model: str | os.PathLike[str] | None = None,
                bias_correction: bool = True, folded_at_load: bool = True) -> Path:
    """Write `path` (atomically): float32 ("none") or quantized ("int8" static QDQ, "dynamic").

    Args:
        source: a SavedModel folder with a serving_default signature, or a frozen forward pass (convert_onnx).
        path: the .onnx file to write.
        mode: "none", "int8" or "dynamic".
        meta: the edgetl metadata; None writes none.
        opset: ONNX opset (13..18).
        calibration: (N, H, W, 3) float32 images 0..255 for "int8".
        optimize: apply ORT's basic graph optimisations offline.
        float_model: an already exported float .onnx to quantize from (saves a conversion).
        bias_correction: for "int8", take each int8 kernel's mean output shift off its int32 bias
            (edgetl.export.onnx_bias); False: ONNX Runtime's quantized file as it is.
        folded_at_load: for "dynamic", int8 kernels ONNX Runtime folds when it loads the file (fast); False
            for a file it will optimise ahead of time into .ort (see edgetl.export.onnx_quant.weight_only_conv_int8).

    Returns:
        The written path.
    """
    import onnx

    from edgetl.export.onnx_quant import quantize_onnx

    work = Path(tempfile.mkdtemp(prefix="edgetl-onnx-"))
    try:
        base = work / "float.onnx"
        if float_model is not None:
            shutil.copyfile(float_model, base)
        else:
            model = convert_onnx(source, opset=opset)
            onnx.save(model, str(base))
            if optimize:
                opt = work / "opt.onnx"
                optimize_offline(str(base), str(opt))
                base = opt
        final = base
        if mode != "none":
            pre = work / "pre.onnx"
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                # Shape inference + ORT's own pre-quantisation clean-up, as onnxruntime recommends.
                with quiet_native_stderr():
                    quant_pre_process(str(base), str(pre), skip_symbolic_shape=True)
            except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; go on without it
                log.debug("quant_pre_process failed (%s); quantizing the model as it is", exc)
                shutil.copyfile(base, pre)
            final = work / f"{mode}.onnx"
            try:
                with quiet_native_stderr():
                    quantize_onnx(str(pre), str(final), mode, calibration=calibration, input_name=INPUT_NAME,
                                  bias_correction=bias_correction, folded_at_load=folded_at_load)
            except (UsageError, ExportError):
                raise
            except Exception as exc:
                text = str(exc).strip().splitlines()
                raise ExportError(f"ONNX {mode} quantization failed: {text[0][:300] if text else type(exc).__name__}."
                                  ) from None
        model = onnx.load(str(final))
        if meta is not None:
            write_onnx_metadata(model, meta)
        model.doc_string = "edgetl image classifier: float32 RGB pixels 0..255 NHWC in, class probabilities out"
        check_model(model)
        with atomic_path(path, suffix=".onnx") as tmp:
            onnx.save(model, str(tmp))
        return Path(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The format's record: what the export asks of it


def write_from_frozen(ctx: ExportContext, req: WriteRequest, path: Path, *, folded_at_load: bool = True) -> Path:
    """The request's ONNX file at `path`, converted from the export's frozen pass (int8 and dynamic quantize the
    export's float ONNX file when it is written already: one tf2onnx conversion for all)."""
    return export_onnx(ctx.frozen(None), path, req.mode, meta=req.meta, opset=ctx.opts.opset,
                       calibration=ctx.calib if req.mode == "int8" else None,
                       float_model=ctx.exported_float_onnx() if req.mode != "none" else None,
                       bias_correction=ctx.opts.bias_correction, folded_at_load=folded_at_load)


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write one .onnx file."""
    write_from_frozen(ctx, req, req.path)
    return {}


FORMAT = Format(
    name="onnx", help="ONNX (tf2onnx; quantized by ONNX Runtime): ONNX Runtime on any platform, and other runtimes",
    suffix=".onnx", modes=MODES, kind="onnx", write=write, needs=frozenset({FROZEN, CALIBRATION}), options=("opset",),
    meta_options=("opset",), check=lambda opts: check_opset(opts.opset), convert_first=True, gives_float_onnx=True)
