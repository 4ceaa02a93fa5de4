"""What every exported file says about itself: labels, input contract, provenance.

One JSON document (``build_metadata``) is stored inside each artifact, in the place its format
provides for it, so a file that travels alone still says how to feed it and what its outputs mean:

- TFLite: a flatbuffer ``Model.metadata`` entry named ``METADATA_NAME`` whose buffer holds the
  UTF-8 JSON. Stock LiteRT/TFLite interpreters ignore metadata entries they do not know.
- ONNX: ``metadata_props`` key ``edgetl`` (the JSON) and key ``labels`` (class names, one a line).
- SavedModel: ``<dir>/assets.extra/edgetl_metadata.json`` (assets.extra is the folder TensorFlow
  Serving and the SavedModel loader leave alone).

Readers return None for a file without edgetl metadata (a model exported by another tool) and
raise ModelError for a file that is not a model of that format. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from edgetl import __version__
from edgetl.core.errors import ModelError

METADATA_NAME = "edgetl_metadata"
ONNX_KEY = "edgetl"
ONNX_LABELS_KEY = "labels"
SAVED_MODEL_DIR = "assets.extra"
SAVED_MODEL_FILE = "edgetl_metadata.json"
SCHEMA_VERSION = 1

_TFLITE_IDENTIFIER = b"TFL3"


def build_metadata(run: Any, *, fmt: str, quantization: str, io_type: str | None) -> dict[str, Any]:
    """The metadata document of one exported file.

    Args:
        run: the edgetl Run (rundir.Run) the file was exported from.
        fmt: "tflite", "onnx" or "saved_model".
        quantization: the quantization mode ("none", "float16", "dynamic", "int8", "int8-full", "int16x8").
        io_type: "uint8" or "int8" for int8-full TFLite files (integer input and output), else None.

    Returns:
        A JSON-ready dict. Keys: edgetl_version, format, quantization, class_names, image_size [h, w],
        color, layout, pixel_range, input_dtype, output_dtype, backbone, preprocessing,
        preprocessing_in_model, output, run {path, fingerprint, data_fingerprint}, schema.
    """
    manifest = run.manifest
    inp = manifest.get("input", {})
    size = inp.get("image_size") or [run.image_size, run.image_size]
    backbone = manifest.get("backbone", {}) or {}
    dtype = io_type if io_type else "float32"
    return {
        "schema": SCHEMA_VERSION,
        "edgetl_version": __version__,
        "format": fmt,
        "quantization": quantization,
        "class_names": list(run.class_names),
        "image_size": [int(size[0]), int(size[1])],
        "color": inp.get("color", "RGB"),
        "layout": inp.get("layout", "NHWC"),
        "pixel_range": list(inp.get("pixel_range", [0, 255])),
        "input_dtype": dtype,
        "output_dtype": dtype,
        "output": "probabilities",
        "resize": inp.get("resize", "bilinear, aspect ratio not kept"),
        "backbone": {"name": backbone.get("name"), "kind": backbone.get("kind"), "alpha": backbone.get("alpha"),
                     "weights": backbone.get("weights")},
        "preprocessing": inp.get("preprocessing"),
        "preprocessing_in_model": bool(inp.get("preprocessing_in_model", True)),
        "run": {"path": str(Path(run.path).resolve()), "fingerprint": run_fingerprint(run),
                "data_fingerprint": (manifest.get("data") or {}).get("fingerprint")},
    }


def run_fingerprint(run: Any) -> str | None:
    """sha256 of the run's Keras model file: which trained weights an artifact came from."""
    path = Path(run.model_path)
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def _dumps(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(data: bytes, where: str) -> dict[str, Any]:
    try:
        out = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"the edgetl metadata in '{where}' is not valid JSON. Export the file again.") from None
    if not isinstance(out, dict):
        raise ModelError(f"the edgetl metadata in '{where}' is not a JSON object. Export the file again.")
    return out


# ----------------------------------------------------------------------------------------------
# TFLite


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _tflite_root(data: bytes | bytearray | memoryview, where: str) -> Any:
    if len(data) < 8 or bytes(data[4:8]) != _TFLITE_IDENTIFIER:
        raise ModelError(f"'{where}' is not a TFLite model (no TFL3 file identifier).")
    try:
        return _schema().Model.GetRootAs(data, 0)
    except Exception as exc:  # flatbuffers raises struct/index errors on garbage
        raise ModelError(f"'{where}' is not a readable TFLite model ({type(exc).__name__}).") from None


def write_tflite_metadata(tflite_bytes: bytes, meta: dict[str, Any]) -> bytes:
    """Return the model with a metadata entry METADATA_NAME holding `meta` as JSON.

    An existing entry of that name is replaced; every other part of the model is kept. Constant
    buffers stay 16-byte aligned, as the converter writes them, so runtimes can map them in place.

    Raises:
        ModelError: the bytes are not a TFLite model, or one whose weights live outside the
            flatbuffer (models over 2 GB), which this writer does not repack.
    """
    import flatbuffers
    import numpy as np

    schema = _schema()
    root = _tflite_root(tflite_bytes, "the converted model")
    model = schema.ModelT.InitFromObj(root)
    buffers = model.buffers or []
    if any(getattr(b, "offset", 0) and b.offset > 1 for b in buffers):
        raise ModelError("this TFLite model keeps its weights outside the flatbuffer (over 2 GB); edgetl cannot "
                         "embed metadata in it. Export a smaller model.")
    payload = np.frombuffer(_dumps(meta), dtype=np.uint8).copy()
    entries = model.metadata or []
    existing = [m for m in entries if _as_text(m.name) == METADATA_NAME]
    if existing:
        buffers[existing[0].buffer].data = payload
    else:
        buf = schema.BufferT()
        buf.data = payload
        buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(buffers) - 1
        entries.append(entry)
    model.buffers = buffers
    model.metadata = entries
    aligned = _aligned_buffer_class()
    for b in buffers:
        b.__class__ = aligned
    builder = flatbuffers.Builder(max(1024, len(tflite_bytes) + len(payload) + 4096))
    builder.Finish(model.Pack(builder), file_identifier=_TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _as_text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


@functools.lru_cache(maxsize=1)
def _aligned_buffer_class() -> type:
    schema = _schema()

    class AlignedBufferT(schema.BufferT):  # type: ignore[name-defined, misc]
        """BufferT whose data vector is 16-byte aligned, as the TFLite schema asks (force_align: 16)."""

        def Pack(self, builder: Any) -> int:  # noqa: N802 - flatbuffers' naming
            import numpy as np

            data_off = None
            if self.data is not None and len(self.data) > 0:
                raw = np.asarray(self.data, dtype=np.uint8).tobytes()
                builder.StartVector(1, len(raw), 16)
                builder.head = builder.head - len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                builder.vectorNumElems = len(raw)
                data_off = builder.EndVector()
            schema.BufferStart(builder)
            if data_off is not None:
                schema.BufferAddData(builder, data_off)
            if getattr(self, "offset", 0):
                schema.BufferAddOffset(builder, self.offset)
            if getattr(self, "size", 0):
                schema.BufferAddSize(builder, self.size)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def read_tflite_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The edgetl metadata of a .tflite file, or None when it has none.

    Raises:
        ModelError: the file cannot be read or is not a TFLite model.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}.") from None
    root = _tflite_root(data, str(p))
    try:
        for i in range(root.MetadataLength()):
            entry = root.Metadata(i)
            if _as_text(entry.Name()) != METADATA_NAME:
                continue
            idx = entry.Buffer()
            if idx >= root.BuffersLength():
                raise ModelError(f"the edgetl metadata entry of '{p}' points to a missing buffer. Export it again.")
            buf = root.Buffers(idx)
            if buf.DataLength() == 0:
                return None
            return _loads(buf.DataAsNumpy().tobytes(), str(p))
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError) as exc:
        # A truncated or corrupted flatbuffer: offsets point outside the file.
        raise ModelError(f"'{p}' is not a readable TFLite model ({type(exc).__name__}). Export it again.") from None
    return None


# ----------------------------------------------------------------------------------------------
# ONNX


def write_onnx_metadata(model_proto: Any, meta: dict[str, Any]) -> None:
    """Set metadata_props "edgetl" (JSON) and "labels" (class names, newline-joined) in place."""
    wanted = {ONNX_KEY: _dumps(meta).decode("utf-8"),
              ONNX_LABELS_KEY: "\n".join(str(c) for c in meta.get("class_names", []))}
    keep = [p for p in model_proto.metadata_props if p.key not in wanted]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in wanted.items():
        model_proto.metadata_props.add(key=key, value=value)


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
            return _loads(prop.value.encode("utf-8"), str(p))
    return None


# ----------------------------------------------------------------------------------------------
# SavedModel


def write_saved_model_metadata(directory: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write <directory>/assets.extra/edgetl_metadata.json (atomically)."""
    from edgetl.core.fileio import write_bytes

    target = Path(directory) / SAVED_MODEL_DIR / SAVED_MODEL_FILE
    write_bytes(target, json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")


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
    return _loads(data, str(f))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read the metadata of any artifact by its kind (.tflite file, .onnx file, SavedModel folder)."""
    p = Path(path)
    if p.is_dir():
        return read_saved_model_metadata(p)
    if p.suffix.lower() == ".onnx":
        return read_onnx_metadata(p)
    return read_tflite_metadata(p)
