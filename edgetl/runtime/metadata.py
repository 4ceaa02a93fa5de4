"""What every edgetl model file says about itself (labels, input contract, provenance), and how to read it.

One JSON document (``build_metadata``) describes each artifact. Export stores it inside the file,
in the place its format provides for it (edgetl.export.metadata writes it), so a file that travels
alone still says how to feed it and what its outputs mean:

- TFLite: a flatbuffer ``Model.metadata`` entry named ``METADATA_NAME`` whose buffer holds the
  UTF-8 JSON. Stock LiteRT/TFLite interpreters ignore metadata entries they do not know.
- ONNX: ``metadata_props`` key ``edgetl`` (the JSON) and key ``labels`` (class names, one a line).
- SavedModel: ``<dir>/assets.extra/edgetl_metadata.json`` (assets.extra is the folder TensorFlow
  Serving and the SavedModel loader leave alone).

A run's own Keras model gets the same document, built from its manifest when it is opened.

Readers return None for a file without edgetl metadata (a model exported by another tool) and
raise ModelError for a file that is not a model of that format. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import __version__
from edgetl.core.errors import ModelError

if TYPE_CHECKING:
    from types import ModuleType

    from ai_edge_litert.schema_py_generated import Model

    from edgetl.rundir import Run

log = logging.getLogger("edgetl")

METADATA_NAME = "edgetl_metadata"
ONNX_KEY = "edgetl"
ONNX_LABELS_KEY = "labels"
SAVED_MODEL_DIR = "assets.extra"
SAVED_MODEL_FILE = "edgetl_metadata.json"
SCHEMA_VERSION = 1
TFLITE_IDENTIFIER = b"TFL3"
OWN_MODEL = "keras"  # build_metadata's fmt for a run's own model.keras, opened in place


def build_metadata(run: Run, *, fmt: str, quantization: str = "none", io_type: str | None = None) -> dict[str, Any]:
    """The metadata document of one model file made from a run (exported, or the run's own Keras model).

    Args:
        run: the edgetl Run the file comes from.
        fmt: "keras" (the run's model itself), "tflite", "onnx" or "saved_model".
        quantization: the quantization mode ("none", "float16", "dynamic", "int8", "int8-full", "int16x8").
        io_type: "uint8" or "int8" for int8-full TFLite files (integer input and output), else None.

    Returns:
        A JSON-ready dict. Keys: schema, edgetl_version (of the edgetl that wrote the file), format,
        quantization, class_names, image_size [h, w], color, layout, pixel_range, input_dtype,
        output_dtype, output, resize, backbone, preprocessing, preprocessing_in_model,
        run {name, fingerprint (None for "keras"), data_fingerprint} (and path for "keras" only).

    An exported file carries nothing of the machine that exported it: the run is named by its folder
    name and identified by its fingerprint, and a backbone or weights file by its file name.
    """
    manifest = run.manifest
    inp = manifest.get("input") or {}
    backbone = manifest.get("backbone") or {}
    dtype = io_type if io_type else "float32"
    # fmt "keras" is the run's own model.keras opened in place: written by the training that made the run,
    # and not hashed (that would read the whole model again on every open; exported files record the hash).
    own = fmt == OWN_MODEL
    version = (manifest.get("versions") or {}).get("edgetl") if own else __version__
    return {
        "schema": SCHEMA_VERSION,
        "edgetl_version": version,
        "format": fmt,
        "quantization": quantization,
        "class_names": list(manifest.get("class_names") or []),
        "image_size": list(inp.get("image_size") or []),
        "color": inp.get("color", "RGB"),
        "layout": inp.get("layout", "NHWC"),
        "pixel_range": list(inp.get("pixel_range") or [0, 255]),
        "input_dtype": dtype,
        "output_dtype": dtype,
        "output": "probabilities",
        "resize": inp.get("resize", "bilinear, aspect ratio not kept"),
        "backbone": {k: backbone.get(k) if own else _file_name(backbone.get(k))
                     for k in ("name", "kind", "alpha", "weights")},
        "preprocessing": inp.get("preprocessing"),
        "preprocessing_in_model": bool(inp.get("preprocessing_in_model", True)),
        "run": {"name": Path(run.path).resolve().name, "fingerprint": None if own else run_fingerprint(run),
                "data_fingerprint": (manifest.get("data") or {}).get("fingerprint"),
                **({"path": str(Path(run.path).resolve())} if own else {})},
    }


def _file_name(value: Any) -> Any:
    """A path's last part (a weights or backbone file named by path); any other value as it is."""
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return value.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return value


def run_fingerprint(run: Run) -> str | None:
    """sha256 of the run's Keras model file: which trained weights an artifact came from (None if unreadable)."""
    path = Path(run.model_path)
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def read_run_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a run directory's own model, built from its manifest (a run carries no embedded copy).

    Raises:
        ModelError, DataError: the folder is not a readable run.
    """
    from edgetl.rundir import load_run

    return build_metadata(load_run(path), fmt=OWN_MODEL)


def prop_bytes(value: str | bytes) -> bytes:
    """An ONNX metadata_props value as bytes: protobuf hands a string field back as bytes when it is not UTF-8."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def parse_json(data: bytes, where: str) -> dict[str, Any]:
    """The metadata JSON object in `data` (read from `where`).

    Raises:
        ModelError: not UTF-8 JSON, or not an object.
    """
    try:
        out = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"the edgetl metadata in '{where}' is not valid JSON. Export the file again.") from None
    if not isinstance(out, dict):
        raise ModelError(f"the edgetl metadata in '{where}' is not a JSON object. Export the file again.")
    return out


# ----------------------------------------------------------------------------------------------
# TFLite


def tflite_schema() -> ModuleType:
    """LiteRT's generated flatbuffer schema module (Model, ModelT, BufferT, MetadataT, ...)."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def tflite_model(data: bytes | bytearray | memoryview, where: str) -> Model:
    """The root table of a TFLite flatbuffer.

    Raises:
        ModelError: the bytes are not a TFLite model.
    """
    if len(data) < 8 or bytes(data[4:8]) != TFLITE_IDENTIFIER:
        raise ModelError(f"'{where}' is not a TFLite model (no TFL3 file identifier).")
    try:
        return tflite_schema().Model.GetRootAs(data, 0)
    except Exception as exc:  # flatbuffers raises struct/index errors on garbage
        raise ModelError(f"'{where}' is not a readable TFLite model ({type(exc).__name__}).") from None


def load_tflite(path: str | os.PathLike[str]) -> Model:
    """Read a .tflite file and return its flatbuffer root table.

    Raises:
        ModelError: the file cannot be read or is not a TFLite model.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}.") from None
    return tflite_model(data, str(p))


def flatbuffer_text(v: bytes | str | None) -> str:
    """A flatbuffer string field as text (the generated code returns bytes)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def read_tflite_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata of a .tflite file, or None when it has none.

    Raises:
        ModelError: the file cannot be read or is not a TFLite model.
    """
    p = Path(path)
    root = load_tflite(p)
    try:
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if flatbuffer_text(entry.Name()) != METADATA_NAME:
                continue
            idx = entry.Buffer()
            if idx >= root.BuffersLength():
                raise ModelError(f"the edgetl metadata entry of '{p}' points to a missing buffer. Export it again.")
            buf = root.Buffers(idx)
            if buf.DataLength() == 0:
                return None
            return parse_json(buf.DataAsNumpy().tobytes(), str(p))
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError) as exc:
        # A truncated or corrupted flatbuffer: offsets point outside the file.
        raise ModelError(f"'{p}' is not a readable TFLite model ({type(exc).__name__}). Export it again.") from None
    return None


# ----------------------------------------------------------------------------------------------
# ONNX and SavedModel


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata of a .onnx file, or None when it has none.

    Raises:
        ModelError: the file cannot be read or is not an ONNX model.
    """
    import onnx

    p = Path(path)
    try:
        # Weights are not needed to read the properties; external data files are not opened.
        model = onnx.load(str(p), load_external_data=False)
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}.") from None
    except Exception as exc:  # DecodeError and friends: not a protobuf of that type
        raise ModelError(f"'{p}' is not a readable ONNX model ({type(exc).__name__}).") from None
    for prop in model.metadata_props:
        if prop.key == ONNX_KEY:
            return parse_json(prop_bytes(prop.value), str(p))
    return None


def read_saved_model_metadata(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata of a SavedModel folder, or None when it has none.

    Raises:
        ModelError: the folder is not a SavedModel, or its metadata file is unreadable.
    """
    d = Path(directory)
    if not (d / "saved_model.pb").is_file() and not (d / "saved_model.pbtxt").is_file():
        raise ModelError(f"'{d}' is not a SavedModel folder (no saved_model.pb).")
    f = d / SAVED_MODEL_DIR / SAVED_MODEL_FILE
    if not f.is_file():
        return None
    try:
        data = f.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read '{f}': {exc.strerror or exc}.") from None
    return parse_json(data, str(f))
