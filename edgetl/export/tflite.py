"""TFLite (LiteRT) export: SavedModel or Keras model -> .tflite through TFLiteConverter.

Builtin ops only unless the caller allows TensorFlow (Flex) ops; an op that needs Flex fails with
the op names and the flag to pass. The edgetl metadata goes into the flatbuffer's metadata list, and the
standard TFLite metadata (labels, normalisation) after it, for MediaPipe Tasks and the TFLite Task Library.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgetl.core.errors import ExportError, UsageError, first_line
from edgetl.core.fileio import write_bytes
from edgetl.core.native import quiet_native_stderr
from edgetl.export.standard_metadata import embed_tflite_metadata

log = logging.getLogger("edgetl")

_SELECT_RE = re.compile(r"(?:TF Select ops|Flex ops):\s*([A-Za-z0-9_, .]+)")
_CUSTOM_RE = re.compile(r"Custom ops:\s*([A-Za-z0-9_, .]+)")


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
    import tensorflow as tf

    from edgetl.export.modes import apply_tflite

    if isinstance(model_or_savedmodel, (str, os.PathLike)):
        converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(model_or_savedmodel))
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(model_or_savedmodel)
    apply_tflite(converter, mode, representative=representative, io_type=io_type, allow_select_ops=allow_select_ops)
    try:
        with quiet_native_stderr():
            return bytes(converter.convert())
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
                  allow_select_ops: bool = False) -> Path:
    """Convert, embed the metadata, and write `path` atomically.

    Args:
        model_or_savedmodel: SavedModel folder or Keras model.
        path: the .tflite file to write.
        mode: TFLite quantization mode.
        meta: the edgetl metadata (edgetl.export.metadata.build_metadata), written as edgetl's entry and as
            the standard TFLite metadata app runtimes read; None writes neither.
        representative, io_type, allow_select_ops: see convert_tflite.

    Returns:
        The written path.
    """
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
