"""The tflite format (LiteRT): SavedModel, frozen pass or Keras model -> .tflite through TFLiteConverter.

Builtin ops only unless the caller allows TensorFlow (Flex) ops; an op that needs Flex fails with
the op names and the flag to pass. The edgetl metadata goes into the flatbuffer's metadata list, and the
standard TFLite metadata (labels, normalisation) after it, for MediaPipe Tasks and the TFLite Task Library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from edgetl.core.errors import ExportError, UsageError, first_line
from edgetl.core.fileio import write_bytes
from edgetl.core.native import quiet_native_stderr
from edgetl.export.formats.base import CALIBRATION, FROZEN, ExportContext, Format, WriteRequest
from edgetl.export.images import representative
from edgetl.export.modes import DEFAULT_IO_TYPE, get_mode
from edgetl.export.standard_metadata import embed_tflite_metadata

log = logging.getLogger("edgetl")

_SELECT_RE = re.compile(r"(?:TF Select ops|Flex ops):\s*([A-Za-z0-9_, .]+)")
_CUSTOM_RE = re.compile(r"Custom ops:\s*([A-Za-z0-9_, .]+)")
MODES = ("none", "float16", "dynamic", "int8", "int8-full", "int16x8")


def convert_tflite(model_or_savedmodel: Any, mode: str = "none", *,
                   representative: Callable[[], Iterable[list[Any]]] | None = None, io_type: str | None = None,
                   allow_select_ops: bool = False) -> bytes:
    """Convert to TFLite flatbuffer bytes (no metadata).

    Args:
        model_or_savedmodel: a SavedModel folder (str or Path) with a serving_default signature, or a
            Keras model.
        mode: a TFLite quantization mode (see edgetl.export.modes).
        representative: calibration generator function for calibrated modes.
        io_type: "uint8" or "int8" for int8-full.
        allow_select_ops: allow TensorFlow (Flex) ops where no builtin exists.

    Raises:
        ExportError: the converter failed; ops that need Flex are named with the flag that allows them.
    """

    converter = _converter(model_or_savedmodel)
    apply_tflite(converter, mode, representative=representative, io_type=io_type, allow_select_ops=allow_select_ops)
    with _converting(mode, allow_select_ops):
        return bytes(converter.convert())


def _converter(source: Any) -> Any:
    """A TFLiteConverter for a SavedModel folder, a (frozen) concrete function, or a Keras model."""
    import tensorflow as tf

    if isinstance(source, (str, os.PathLike)):
        return tf.lite.TFLiteConverter.from_saved_model(os.fspath(source))
    if hasattr(source, "structured_input_signature"):  # a ConcreteFunction
        return tf.lite.TFLiteConverter.from_concrete_functions([source])
    return tf.lite.TFLiteConverter.from_keras_model(source)


def calibrate_tflite(source: Any, representative: Callable[[], Iterable[list[Any]]]) -> bytes:
    """The float model with the calibration ranges of every tensor: one calibration pass for every integer mode.

    TFLiteConverter.convert() runs the float model over the representative set for each calibrated
    file (int16x8 twice); calibrating once and quantizing this with `quantize_calibrated` gives the same
    tensors, weights and quantization parameters (tests/test_export.py compares them) for int8, int8-full
    (from a batch-1 source) and int16x8. This is how tf.lite.experimental.QuantizationDebugger works too.

    Raises:
        ExportError: the converter failed.
    """
    converter = _converter(source)
    apply_tflite(converter, "int8", representative=representative)
    converter._experimental_calibrate_only = True  # noqa: SLF001 - no public API; see the docstring
    with _converting("int8"):
        return bytes(converter.convert())


def with_ranges_of(calibrated: bytes, ranges_from: bytes) -> bytes | None:
    """`calibrated` with each tensor's calibration range (min, max) taken from `ranges_from`, matched by name.

    The batch-1 graph of int8-full computes the same tensors as the free-batch graph, image by image,
    so its ranges over the calibration set are the same: copying them spares a second calibration
    pass (the batch-1 model is calibrated on one image only to get its tensors). None when the two
    models do not have the same calibrated tensors (one subgraph each, unique names): calibrate it then.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    def ranged(model: Any) -> dict[str, Any] | None:
        if len(model.subgraphs) != 1:
            return None
        tensors = model.subgraphs[0].tensors
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            return None
        return {t.name: t.quantization for t in tensors
                if t.quantization is not None and t.quantization.min is not None}

    src = flatbuffer_utils.convert_bytearray_to_object(bytearray(ranges_from))
    dst = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    have, want = ranged(src), ranged(dst)
    if have is None or want is None or set(have) != set(want):
        return None
    for name, q in want.items():
        q.min, q.max = list(have[name].min), list(have[name].max)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(dst))


def quantize_calibrated(calibrated: bytes, mode: str, io_type: str | None = None) -> bytes:
    """Quantize a `calibrate_tflite` model as TFLiteConverter does for `mode` (int8, int8-full, int16x8).

    int8 and int8-full go through the converter's MLIR quantizer (float, or uint8/int8 input and output);
    int16x8 through its older quantizer with int16 activations and int64 biases, as the converter does.

    Raises:
        ExportError: the quantizer failed.
    """
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert
    from tensorflow.lite.python import lite
    from tensorflow.lite.python.optimize import calibrator

    with _converting(mode):
        if mode in ("int8", "int8-full"):
            io = {"uint8": tf.uint8, "int8": tf.int8}[io_type or DEFAULT_IO_TYPE] if mode == "int8-full" \
                else tf.float32
            data = tflite_convert.mlir_quantize(calibrated, input_data_type=io, output_data_type=io)
        elif mode == "int16x8":
            f32, i16, i64 = (np.dtype(t).num for t in (np.float32, np.int16, np.int64))
            wrapper = calibrator.Calibrator(calibrated)._calibrator  # noqa: SLF001 - see calibrate_tflite
            data = wrapper.QuantizeModel(f32, f32, False, i16, i64, False, False)
        else:
            raise UsageError(f"--quantize {mode} is not a calibrated TFLite mode.")
        return bytes(lite._deduplicate_readonly_buffers(data))  # noqa: SLF001 - as convert() ends


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
    if mode not in MODES:
        raise UsageError(f"--quantize {mode} does not exist for tflite. tflite modes: {', '.join(MODES)}.")
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




@contextlib.contextmanager
def _converting(mode: str, allow_select_ops: bool = False) -> Iterator[None]:
    """Run the converter with its native logging quiet; its failures become one ExportError that says what to do."""
    try:
        with quiet_native_stderr():
            yield
    except (UsageError, ExportError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise explain_error(exc, mode, allow_select_ops) from None


def explain_error(exc: Exception, mode: str, allow_select_ops: bool) -> ExportError:
    """The one-line ExportError for a failed TFLite conversion: what failed and the option that avoids it."""
    text = str(exc)
    select = _SELECT_RE.search(text)
    if select and not allow_select_ops:
        ops = ", ".join(sorted({o.strip() for o in select.group(1).split(",") if o.strip()}))
        return ExportError(f"the model needs TensorFlow ops that TFLite has no builtin kernel for: {ops}. Pass "
                           "--allow-select-ops to include them as Flex ops (the app then needs the Flex delegate, "
                           "several MB), or export --format onnx.")
    custom = _CUSTOM_RE.search(text)
    if custom:
        return ExportError(f"the model uses ops TFLite cannot convert: {custom.group(1).strip()}. "
                           "Export --format onnx or saved_model instead.")
    if mode in ("int8", "int8-full", "int16x8") and ("quantiz" in text.lower() or "int8" in text.lower()):
        return ExportError(f"the model cannot be quantized to {mode}: {first_line(text)}. Try --quantize dynamic "
                           "or float16.")
    return ExportError(f"TFLite conversion ({mode}) failed: {first_line(text)}. Re-run with EDGETL_DEBUG=1 "
                       "for the converter log.")


def export_tflite(model_or_savedmodel: Any, path: str | os.PathLike[str], mode: str = "none", *,
                  meta: dict[str, Any] | None = None,
                  representative: Callable[[], Iterable[list[Any]]] | None = None, io_type: str | None = None,
                  allow_select_ops: bool = False, calibrated: bytes | None = None,
                  converted: bytes | None = None) -> Path:
    """Convert, embed the metadata, and write `path` atomically.

    Args:
        model_or_savedmodel: SavedModel folder, frozen concrete function or Keras model.
        path: the .tflite file to write.
        mode: TFLite quantization mode.
        meta: the edgetl metadata (edgetl.export.metadata.build_metadata), written as edgetl's entry and as
            the standard TFLite metadata app runtimes read; None writes neither.
        representative, io_type, allow_select_ops: see convert_tflite.
        calibrated: for int8, int8-full and int16x8, the calibrate_tflite model to quantize instead of
            converting and calibrating again (the source is then not read).
        converted: the file's flatbuffer already converted (convert_tflite, same mode), to embed the metadata in.

    Returns:
        The written path.
    """
    if converted is not None:
        data = converted
    elif calibrated is not None:
        data = quantize_calibrated(calibrated, mode, io_type)
    else:
        data = convert_tflite(model_or_savedmodel, mode, representative=representative, io_type=io_type,
                              allow_select_ops=allow_select_ops)
    if meta is not None:
        data = embed_tflite_metadata(data, meta)
    write_bytes(path, data)
    return Path(path)


def tflite_io(path_or_bytes: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """Input and output dtypes, shapes and quantization of a .tflite file (opened in ai_edge_litert)."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(path_or_bytes, bytes):
        it = Interpreter(model_content=path_or_bytes)
    else:
        it = Interpreter(model_path=os.fspath(path_or_bytes))

    def _d(det: dict[str, Any]) -> dict[str, Any]:
        scale, zp = det.get("quantization", (0.0, 0))
        return {"name": det["name"], "dtype": det["dtype"].__name__, "shape": [int(v) for v in det["shape"]],
                "shape_signature": [int(v) for v in det.get("shape_signature", det["shape"])],
                "scale": float(scale), "zero_point": int(zp)}

    return {"inputs": [_d(d) for d in it.get_input_details()], "outputs": [_d(d) for d in it.get_output_details()]}


# ----------------------------------------------------------------------------------------------
# The format's record: what the export asks of it


def _qat_source(ctx: ExportContext, mode: str, meta: dict[str, Any]) -> Path | None:
    """A QAT run's own SavedModel for an int8 file (its learned ranges), else None."""
    if mode in ("int8", "int8-full"):
        qat = ctx.run.qat_saved_model()
        if qat is not None:
            meta["qat"] = True
            meta["batch"] = None  # the QAT SavedModel keeps a free batch dimension
            return qat
    return None


def prepare(ctx: ExportContext, mode: str, meta: dict[str, Any]) -> tuple[Any, bytes | None]:
    """What a file is converted from: (QAT SavedModel or frozen pass, the shared calibrated model or None)."""
    qat = _qat_source(ctx, mode, meta)
    batch = 1 if mode == "int8-full" else None
    if qat is None and ctx.shares_calibration(NAME, mode):
        return None, ctx.calibrated_model(batch)
    return (qat if qat is not None else ctx.frozen(batch)), None


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write one .tflite file; returns the row's figures (how many kernels' biases were corrected)."""
    extra: dict[str, Any] = {}
    source, calibrated = req.source
    rep = representative(ctx.calib) if ctx.calib is not None and get_mode(req.mode).calibrated else None
    converted = ctx.float_tflite() if req.mode == "none" else None  # shared with the reference pass
    if calibrated is not None:
        converted, corrected = ctx.quantize_shared(req.mode, req.io_type, calibrated)
        extra["bias_corrected"] = len(corrected)
    export_tflite(source, req.path, req.mode, meta=req.meta, representative=rep, io_type=req.io_type,
                  allow_select_ops=ctx.opts.allow_select_ops, calibrated=calibrated, converted=converted)
    return extra


NAME = "tflite"
FORMAT = Format(
    name=NAME, help="LiteRT (TensorFlow Lite) flatbuffer: Android, iOS, Linux, microcontrollers, MediaPipe",
    suffix=".tflite", modes=MODES, kind="tflite", write=write, prepare=prepare,
    needs=frozenset({FROZEN, CALIBRATION}), options=("io_type", "allow_select_ops"), batch_one=("int8-full",),
    shared_calibration=True, reference_graph=("none",))


class Quantizer:
    """A float graph calibrated once, in LiteRT with the kernels' mean inputs where it can (as `edgetl export`
    does); its integer files, and any other file of the same graph, bias-corrected."""

    def __init__(self, source: Any, calib: Any, threads: int | None, bias_correction: bool) -> None:
        """source: what calibrate_tflite converts (a SavedModel folder or a frozen forward pass)."""
        from edgetl.export.calibration import calibrate_graph

        result = calibrate_graph(calibrate_tflite(source, representative(calib[:1])), calib, threads,
                                 means=bias_correction)
        self.calibrated, self.means = result.data, result.means

    def quantize(self, mode: str, io_type: str | None) -> tuple[bytes, list[str]]:
        """The calibrated model quantized to `mode` (int8, int8-full, int16x8), corrected; and the ops corrected."""
        return self.correct(quantize_calibrated(self.calibrated, mode, io_type if mode == "int8-full" else None))

    def correct(self, data: bytes) -> tuple[bytes, list[str]]:
        """A quantized file of the same graph with its int8 kernels' mean shifts taken off (as it is without means)."""
        from edgetl.export.tflite_bias import correct_bias

        return correct_bias(data, self.calibrated, self.means) if self.means else (data, [])
