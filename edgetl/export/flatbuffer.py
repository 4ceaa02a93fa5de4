"""A TFLite file as LiteRT's flatbuffer object tree: read it, change it, write it back (no TensorFlow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import ModelT


def read_model(data: bytes) -> ModelT:
    """The .tflite flatbuffer as an object tree (ai_edge_litert's schema), ready to change."""
    from ai_edge_litert.schema_py_generated import ModelT

    return ModelT.InitFromPackedBuf(bytearray(data), 0)


def write_model(model: ModelT) -> bytes:
    """The object tree packed back into .tflite flatbuffer bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
