"""Open any model edgetl makes (run dir, .keras, SavedModel, .tflite, .onnx, .ort) behind one Runner.

Which kind a path is, and how that kind is opened and read, is its record in edgetl.runtime.kinds.
Runtimes (TensorFlow, LiteRT, ONNX Runtime) are imported only when a model of theirs is opened.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from edgetl.core.errors import ModelError, UsageError
from edgetl.rundir import MANIFEST as MANIFEST_FILE
from edgetl.runtime.kinds import KINDS, detect_kind, get_kind, load_embedded_metadata
from edgetl.runtime.runner import OpenRequest, Runner

log = logging.getLogger("edgetl")

__all__ = ["KINDS", "MANIFEST_FILE", "detect_kind", "open_model"]


def open_model(path: str | os.PathLike[str], *, threads: int | None = None, safe_mode: bool = True,
               class_names: list[str] | None = None, image_size: int | None = None, kind: str | None = None) -> Runner:
    """Open any edgetl artifact (or a compatible foreign model) for inference.

    Args:
        path: a run directory (its model.keras and manifest), a .keras file, a SavedModel folder, a
            .tflite file (edgetl's metadata, or the standard TFLite metadata other tools write), a .onnx
            file or a .ort file (ONNX Runtime Mobile's format): any kind of edgetl.runtime.kinds.
        threads: CPU threads for the runtime (None: its default).
        safe_mode: load .keras files in Keras' safe mode (no arbitrary code); False only for trusted files.
        class_names: class names to use when the file carries none (overrides labels.txt and metadata).
        image_size: input size to use when the file's input shape does not fix it.
        kind: open it as this kind (edgetl.runtime.kinds.KINDS) instead of the kind detect_kind finds: how the
            export verifies a file in its format's own runtime.

    Returns:
        A Runner.

    Raises:
        ModelError: the path is not a model, is damaged, or its input size or classes cannot be read.
        UsageError: threads or image_size is out of range.
    """
    if threads is not None and (threads < 1 or threads > 1024):
        raise UsageError(f"--threads {threads} is out of range. Use 1 or more (or leave it out for the default).")
    if image_size is not None and not 8 <= image_size <= 4096:
        raise UsageError(f"--image-size {image_size} is out of range. Use 8..4096.")
    p = Path(path)
    if kind is not None and not p.exists():
        detect_kind(p)  # the one "does not exist" message
    spec = get_kind(kind if kind is not None else detect_kind(p))
    req = OpenRequest(threads=threads, safe_mode=safe_mode, class_names=class_names, image_size=image_size)
    if spec.open is not None:
        return spec.open(p, req)
    if spec.runner is None:
        raise ModelError(f"model kind '{spec.name}' has no Runner to open '{p}' with.")
    runner = spec.runner(p, threads)
    # An .ort file's metadata is read through the session just opened (onnx cannot load the file).
    meta = runner.session_metadata() if spec.metadata_from_runner else load_embedded_metadata(p, spec.name)  # type: ignore[attr-defined]
    if spec.fallback_metadata is not None:
        meta = spec.fallback_metadata(runner, p, meta)
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs or None, class_names, image_size)
    return runner
