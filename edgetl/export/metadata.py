"""Writing the edgetl metadata document into each exported file, in the place its format provides for it.

The document, its names and its readers live in edgetl.runtime.metadata (the runtime reads what
export writes); they are re-exported here so export code has one module to import.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ModelError
from edgetl.runtime.kinds import read_metadata
from edgetl.runtime.metadata import (
    METADATA_NAME,
    ONNX_KEY,
    ONNX_LABELS_KEY,
    SAVED_MODEL_DIR,
    SAVED_MODEL_FILE,
    SCHEMA_VERSION,
    TFLITE_IDENTIFIER,
    build_metadata,
    flatbuffer_text,
    read_onnx_metadata,
    read_saved_model_metadata,
    read_tflite_metadata,
    run_fingerprint,
    tflite_model,
    tflite_schema,
)

if TYPE_CHECKING:
    import flatbuffers
    import onnx

__all__ = [
    "METADATA_NAME", "ONNX_KEY", "ONNX_LABELS_KEY", "SAVED_MODEL_DIR", "SAVED_MODEL_FILE", "SCHEMA_VERSION",
    "build_metadata", "read_metadata", "read_onnx_metadata", "read_saved_model_metadata", "read_tflite_metadata",
    "run_fingerprint", "write_onnx_metadata", "write_saved_model_metadata", "write_tflite_metadata",
]


def _dumps(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------------------------------------
# TFLite


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

    schema = tflite_schema()
    root = tflite_model(tflite_bytes, "the converted model")
    model = schema.ModelT.InitFromObj(root)
    buffers = model.buffers or []
    if any(getattr(b, "offset", 0) and b.offset > 1 for b in buffers):
        raise ModelError("this TFLite model keeps its weights outside the flatbuffer (over 2 GB); edgetl cannot "
                         "embed metadata in it. Export a smaller model.")
    payload = np.frombuffer(_dumps(meta), dtype=np.uint8).copy()
    entries = model.metadata or []
    existing = [m for m in entries if flatbuffer_text(m.name) == METADATA_NAME]
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
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


@functools.lru_cache(maxsize=1)
def _aligned_buffer_class() -> type:
    schema = tflite_schema()

    class AlignedBufferT(schema.BufferT):  # type: ignore[name-defined, misc]
        """BufferT whose data vector is 16-byte aligned, as the TFLite schema asks (force_align: 16)."""

        def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - flatbuffers' naming
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


# ----------------------------------------------------------------------------------------------
# ONNX and SavedModel


def write_onnx_metadata(model_proto: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Set metadata_props "edgetl" (JSON) and "labels" (class names, newline-joined) in place."""
    wanted = {ONNX_KEY: _dumps(meta).decode("utf-8"),
              ONNX_LABELS_KEY: "\n".join(str(c) for c in meta.get("class_names", []))}
    keep = [p for p in model_proto.metadata_props if p.key not in wanted]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in wanted.items():
        model_proto.metadata_props.add(key=key, value=value)


def write_saved_model_metadata(directory: str | os.PathLike[str], meta: dict[str, Any]) -> None:
    """Write <directory>/assets.extra/edgetl_metadata.json (atomically)."""
    from edgetl.core.fileio import write_bytes

    target = Path(directory) / SAVED_MODEL_DIR / SAVED_MODEL_FILE
    write_bytes(target, json.dumps(meta, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")
