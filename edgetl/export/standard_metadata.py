"""The standard TFLite Model Metadata, written with MediaPipe's metadata writers.

This is what MediaPipe Tasks, the TFLite Task Library and Android Studio's model binding read to
classify with a .tflite and no code of the app's own: the input is an RGB image with
NormalizationOptions (edgetl models take 0..255 pixels, so mean 0 and std 1; an integer input keeps
its quantization as the converter wrote it), the output is class scores with the labels packed
as the associated label file. Name, description, version and author come from the run.

The standard metadata goes on last: MediaPipe's populator appends the packed files after the
flatbuffer, and rewriting the flatbuffer afterwards (edgetl's own metadata entry) would drop them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from edgetl.core.errors import ExportError, UsageError, first_line
from edgetl.runtime.app_runtime import MetadataTools, metadata_tools

log = logging.getLogger("edgetl")

# The pixel contract of every edgetl model: 0..255 in, preprocessing inside the model.
NORM_MEAN = (0.0,)
NORM_STD = (1.0,)


def write_standard_metadata(tflite_bytes: bytes, *, class_names: Sequence[str], name: str, description: str,
                            version: str | None = None, author: str | None = None) -> bytes:
    """Return the model with standard TFLite Model Metadata for an image classifier, labels packed inside.

    Entries other tools wrote (edgetl's own metadata, the converter's) are kept.

    Raises:
        UsageError: mediapipe is not installed.
        ExportError: the writer refuses the model (for instance an output that is not one score per class).
    """
    tools = metadata_tools()
    labels = [str(c) for c in class_names]
    writer = None
    try:
        writer = tools.image_classifier.MetadataWriter.create(
            bytearray(tflite_bytes), list(NORM_MEAN), list(NORM_STD), tools.writer.Labels().add(labels))
        writer.writer.add_general_info(name, description)
        model, _ = writer.populate()
        if version or author:
            model = _set_version_and_author(tools, bytes(model), bytes(tflite_bytes), version=version, author=author)
    except Exception as exc:
        raise ExportError(f"MediaPipe's metadata writer refused the model ({first_line(exc)}).") from None
    finally:
        # The writer removes its temporary label folder when collected: let it, while its modules are loaded.
        del writer
    return bytes(model)


def _set_version_and_author(tools: MetadataTools, model: bytes, original: bytes, *, version: str | None,
                            author: str | None) -> bytes:
    # The image classifier writer takes a name and a description only; the schema has version and
    # author too, so they are set on the metadata it wrote, which is then populated with the same
    # files into the original model (the populator refuses to pack a file twice).
    import flatbuffers

    displayer = tools.metadata.MetadataDisplayer.with_model_buffer(model)
    schema = tools.schema
    meta = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(displayer.get_metadata_buffer(), 0))
    meta.version = version
    meta.author = author
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), tools.metadata.MetadataPopulator.METADATA_FILE_IDENTIFIER)
    files = {n: displayer.get_associated_file_buffer(n) for n in displayer.get_packed_associated_file_list()}
    populator = tools.metadata.MetadataPopulator.with_model_buffer(original)
    populator.load_metadata_buffer(builder.Output())
    populator.load_associated_file_buffers(files)
    populator.populate()
    return bytes(populator.get_model_buffer())


def describe_for_apps(meta: dict[str, Any]) -> dict[str, str | None]:
    """Name, description, version and author of the standard metadata, from edgetl's metadata document.

    The run is named by its folder name and identified by its fingerprint: nothing of the machine
    that exported it (paths, user names) goes in.
    """
    run = meta.get("run") or {}
    backbone = meta.get("backbone") or {}
    names = [str(c) for c in meta.get("class_names") or []]
    size = "x".join(str(s) for s in meta.get("image_size") or [])
    arch = str(backbone.get("name") or "image classifier")
    if backbone.get("alpha") is not None:
        arch += f" alpha {backbone['alpha']}"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    description = (f"Image classifier ({arch}, {size} RGB input, pixels 0..255; quantization "
                   f"{meta.get('quantization', 'none')}) trained with edgetl: {len(names)} classes: {shown}.")
    fingerprint = run.get("fingerprint")
    return {"name": str(run.get("name") or arch), "description": description,
            "version": f"sha256:{fingerprint[:16]}" if fingerprint else None,
            "author": f"edgetl {meta.get('edgetl_version')}" if meta.get("edgetl_version") else "edgetl"}


def embed_tflite_metadata(tflite_bytes: bytes, meta: dict[str, Any]) -> bytes:
    """edgetl's metadata entry, then the standard metadata from the same document (see write_standard_metadata).

    Without mediapipe the file gets edgetl's entry only, and a warning says what app runtimes will miss.
    """
    from edgetl.export.metadata import write_tflite_metadata

    data = write_tflite_metadata(tflite_bytes, meta)
    try:
        metadata_tools()
    except UsageError as exc:
        log.warning("no standard TFLite metadata written (%s): MediaPipe Tasks will not find the labels", exc)
        return data
    return write_standard_metadata(data, class_names=meta.get("class_names") or [], **describe_for_apps(meta))
