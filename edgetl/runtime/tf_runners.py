"""TensorFlow runners: a Keras classifier (.keras, or a run's model) and a SavedModel folder."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import ModelError, first_line
from edgetl.rundir import MANIFEST as MANIFEST_FILE
from edgetl.rundir import Run
from edgetl.runtime.metadata import OWN_MODEL, build_metadata
from edgetl.runtime.runner import OpenRequest, Runner, size_on_disk, static_square

if TYPE_CHECKING:
    import keras

log = logging.getLogger("edgetl")


class KerasRunner(Runner):
    """A Keras classifier (.keras file or a run directory's model.keras)."""

    kind = "keras"

    def __init__(self, path: Path, model: keras.Model, threads: int | None) -> None:
        super().__init__(path, threads)
        import tensorflow as tf

        self.model = model
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else tuple(model.input_shape)
        if len(shape) != 4:
            raise ModelError(f"'{path}' takes inputs of shape {shape}; edgetl needs images (N, H, W, 3).")
        self._shape = shape
        self.num_outputs = int(model.outputs[0].shape[-1])
        spec = tf.TensorSpec((None, *shape[1:]), tf.float32)
        # One traced graph for every batch size: model.predict adds ~ms of per-call overhead.
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def spatial_size(self) -> int | None:
        """Square input size from the model's input shape, None when not fixed."""
        return static_square(self._shape, self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._fn(batch.astype(np.float32, copy=False))
        if isinstance(out, dict):
            out = next(iter(out.values()))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.numpy()


def load_keras(model_path: Path, threads: int | None, safe_mode: bool) -> KerasRunner:
    """Load a .keras file into a KerasRunner (metadata not settled yet).

    Raises:
        ModelError: not a .keras archive, or not a single-input model.
    """
    if not zipfile.is_zipfile(model_path):
        raise ModelError(f"'{model_path}' is not a .keras file (not a zip archive). Pass a model saved by edgetl.")
    _set_tf_threads(threads)
    from edgetl.model.classifier import load_model

    model = load_model(str(model_path), safe_mode=safe_mode)
    if not hasattr(model, "inputs") or len(getattr(model, "inputs", []) or []) != 1:
        raise ModelError(f"'{model_path}' is not a single-input Keras model; edgetl needs an image classifier.")
    return KerasRunner(model_path, model, threads)


class SavedModelRunner(Runner):
    """A TensorFlow SavedModel folder, run through its serving signature."""

    kind = "saved_model"

    def __init__(self, path: Path, threads: int | None) -> None:
        _set_tf_threads(threads)
        super().__init__(path, threads)
        import tensorflow as tf

        try:
            self.loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot load SavedModel '{path}': {first_line(exc)}. "
                             "Pass a folder written by 'edgetl export --format saved_model'.") from None
        sigs = getattr(self.loaded, "signatures", {})
        key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if sigs else None)
        if key is None:
            raise ModelError(f"SavedModel '{path}' has no serving signature. Export it with a signature.")
        self.fn = sigs[key]
        _, kwargs = self.fn.structured_input_signature
        if len(kwargs) != 1:
            raise ModelError(f"SavedModel '{path}' signature '{key}' has {len(kwargs)} inputs; edgetl needs one.")
        self.input_name, spec = next(iter(kwargs.items()))
        self._shape = tuple(spec.shape)
        self._tf_dtype = spec.dtype
        self.input_dtype = spec.dtype.name if spec.dtype.name in ("uint8", "int8") else "float32"
        outs = self.fn.structured_outputs
        self.output_name = next(iter(outs)) if isinstance(outs, dict) else None
        out_spec = outs[self.output_name] if self.output_name else outs
        self.num_outputs = int(out_spec.shape[-1]) if out_spec.shape.rank and out_spec.shape[-1] else 0
        if len(self._shape) != 4:
            raise ModelError(f"SavedModel '{path}' takes inputs of shape {self._shape}; edgetl needs (N, H, W, 3).")
        if self._shape[0] is not None:
            self.batch_fixed = int(self._shape[0])

    def spatial_size(self) -> int | None:
        """Square input size from the serving signature, None when not fixed."""
        return static_square(self._shape, self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = tf.constant(np.asarray(batch).astype(self._tf_dtype.as_numpy_dtype, copy=False))
        out = self.fn(**{self.input_name: x})
        if isinstance(out, dict):
            out = out[self.output_name] if self.output_name in out else next(iter(out.values()))
        return out.numpy()


def _set_tf_threads(threads: int | None) -> None:
    if threads is None:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1 if threads == 1 else 2)
    except RuntimeError:
        # TensorFlow fixes its thread pools when it first runs an op; later calls cannot change them.
        if tf.config.threading.get_intra_op_parallelism_threads() != threads:
            log.warning("TensorFlow was already running: --threads %d does not apply to the Keras/SavedModel "
                        "runner in this process", threads)


def open_run(p: Path, req: OpenRequest) -> Runner:
    """A run directory: its model.keras, with the metadata built from its manifest."""
    from edgetl.rundir import load_run

    run = load_run(p)
    meta = build_metadata(run, fmt=OWN_MODEL)
    runner = load_keras(run.model_path, req.threads, req.safe_mode)
    runner.path = p
    runner.size_bytes = size_on_disk(run.model_path)
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, req.class_names, None)
    runner.embedded_metadata = True
    return runner


def keras_file_metadata(p: Path) -> dict[str, Any] | None:
    """The metadata of a .keras file: built from the run manifest beside it, None when there is none."""
    manifest_path = p.parent / MANIFEST_FILE
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if isinstance(manifest, dict) and manifest.get("class_names") and manifest.get("input"):
                return build_metadata(Run(p.parent, manifest), fmt=OWN_MODEL)
        except (OSError, ValueError, UnicodeDecodeError):
            log.warning("ignoring unreadable %s beside '%s'", MANIFEST_FILE, p)
    return None


def open_keras_file(p: Path, req: OpenRequest) -> Runner:
    """A .keras file, with the metadata of the run manifest beside it when there is one."""
    runner = load_keras(p, req.threads, req.safe_mode)
    meta = keras_file_metadata(p)
    runner.finish_metadata(meta, runner.spatial_size(), runner.num_outputs, req.class_names, req.image_size)
    if meta:
        runner.embedded_metadata = True
    return runner
