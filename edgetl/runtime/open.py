"""Open any artifact edgetl makes (run dir, .keras, SavedModel, .tflite, .onnx) behind one Runner.

Runtimes (TensorFlow, LiteRT, ONNX Runtime) are imported only when a model of theirs is opened.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, UsageError
from edgetl.rundir import MANIFEST as MANIFEST_FILE
from edgetl.rundir import Run
from edgetl.runtime.litert import LiteRTRunner
from edgetl.runtime.metadata import build_metadata, load_embedded_metadata
from edgetl.runtime.onnxrt import OnnxRunner
from edgetl.runtime.runner import Runner, size_on_disk
from edgetl.runtime.tf_runners import SavedModelRunner, load_keras

log = logging.getLogger("edgetl")

KINDS = ("keras", "saved_model", "tflite", "onnx")
_ALLOWED = ("a run directory, a .keras file, a SavedModel folder, a .tflite file, a .onnx file or a .ort file")
ORT_IDENTIFIER = b"ORTM"  # the ORT format's flatbuffer file identifier


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Which kind of artifact `path` is: "run", "keras", "saved_model", "tflite" or "onnx".

    Raises:
        ModelError: the path does not exist or is none of those.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(f"model '{p}' does not exist. Pass {_ALLOWED}.")
    if p.is_dir():
        if (p / MANIFEST_FILE).is_file():
            return "run"
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            return "saved_model"
        raise ModelError(f"folder '{p}' is neither an edgetl run (no {MANIFEST_FILE}) nor a SavedModel (no "
                         f"saved_model.pb). Pass {_ALLOWED}.")
    suffix = p.suffix.lower()
    head = _head(p, 8)
    if not head:
        # Every runtime says something cryptic about an empty buffer; a crashed copy or download is the usual cause.
        raise ModelError(f"model file '{p}' is empty (0 bytes). Copy or export it again.")
    if suffix == ".keras":
        return "keras"
    if suffix == ".tflite" or head[4:8] == b"TFL3":
        return "tflite"
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".ort" or head[4:8] == ORT_IDENTIFIER:
        return "onnx"  # ONNX Runtime Mobile's format: ONNX Runtime opens it like an .onnx file
    if suffix in (".h5", ".hdf5"):
        raise ModelError(f"'{p}' is a legacy HDF5 Keras file; edgetl reads the .keras format. "
                         "Re-save it with model.save('model.keras').")
    if suffix == ".pb":
        raise ModelError(f"'{p}' is a single .pb file; pass the SavedModel folder that holds it.")
    raise ModelError(f"'{p}' is not a model edgetl can open (suffix '{suffix or 'none'}'). Pass {_ALLOWED}.")


def open_model(path: str | os.PathLike[str], *, threads: int | None = None, safe_mode: bool = True,
               class_names: list[str] | None = None, image_size: int | None = None) -> Runner:
    """Open any edgetl artifact (or a compatible foreign model) for inference.

    Args:
        path: a run directory (its model.keras and manifest), a .keras file, a SavedModel folder, a
            .tflite file (edgetl's metadata, or the standard TFLite metadata other tools write), a .onnx
            file or a .ort file (ONNX Runtime Mobile's format).
        threads: CPU threads for the runtime (None: its default).
        safe_mode: load .keras files in Keras' safe mode (no arbitrary code); False only for trusted files.
        class_names: class names to use when the file carries none (overrides labels.txt and metadata).
        image_size: input size to use when the file's input shape does not fix it.

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
    kind = detect_kind(p)
    if kind == "run":
        return _open_run(p, threads, safe_mode, class_names)
    if kind == "keras":
        return _open_keras(p, threads, safe_mode, class_names, image_size)
    if kind == "saved_model":
        runner: Runner = SavedModelRunner(p, threads)
        num_outputs = runner.num_outputs or None
    elif kind == "tflite":
        runner = LiteRTRunner(p, threads)
        num_outputs = runner.num_outputs
    else:
        runner = OnnxRunner(p, threads)
        num_outputs = runner.num_outputs or None
    if kind == "onnx" and p.suffix.lower() != ".onnx":
        meta = runner.session_metadata()  # type: ignore[attr-defined]
    else:
        meta = load_embedded_metadata(p, kind)
    if kind == "tflite" and not (meta and meta.get("class_names")):
        meta = _standard_metadata(runner, p, meta)  # type: ignore[arg-type]
    runner.finish_metadata(meta, runner.spatial_size(), num_outputs, class_names, image_size)
    return runner


def _standard_metadata(runner: LiteRTRunner, p: Path, meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """A .tflite without edgetl metadata: labels and input normalisation from its standard metadata, if any."""
    from edgetl.runtime.app_runtime import read_standard_metadata

    try:
        std = read_standard_metadata(p)
    except ModelError as exc:
        log.warning("ignoring the standard TFLite metadata of '%s' (%s)", p, exc)
        return meta
    if not std:
        return meta
    norm = std.get("normalization")
    if norm and runner.input_dtype == "float32":
        runner.set_normalization(norm["mean"], norm["std"])
    out = dict(meta or {})
    if std.get("class_names"):
        out["class_names"] = std["class_names"]
    out["standard_metadata"] = {k: v for k, v in std.items() if k != "class_names"}
    return out


def _open_run(p: Path, threads: int | None, safe_mode: bool, class_names: list[str] | None) -> Runner:
    from edgetl.rundir import load_run

    run = load_run(p)
    meta = build_metadata(run, fmt="keras")
    runner = load_keras(run.model_path, threads, safe_mode)
    runner.path = p
    runner.size_bytes = size_on_disk(run.model_path)
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, class_names, None)
    runner.embedded_metadata = True
    return runner


def _open_keras(p: Path, threads: int | None, safe_mode: bool, class_names: list[str] | None,
                image_size: int | None) -> Runner:
    runner = load_keras(p, threads, safe_mode)
    meta = None
    manifest_path = p.parent / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("class_names") and manifest.get("input"):
                meta = build_metadata(Run(p.parent, manifest), fmt="keras")
        except (OSError, ValueError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s beside '%s'", MANIFEST_FILE, p)
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, class_names, image_size)
    if meta:
        runner.embedded_metadata = True
    return runner


def _head(p: Path, n: int) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise ModelError(f"cannot read '{p}': {exc.strerror or exc}. Check the path and its permissions.") from None
