"""SavedModel export: the Keras classifier as a TensorFlow SavedModel folder.

The folder has one signature, serving_default, taking "image" (float32, N x H x W x 3, RGB 0..255)
and returning the class probabilities. It is what TensorFlow Serving, TF.js and the TFLite and
ONNX converters read; edgetl's own TFLite and ONNX exports start from it. The edgetl metadata goes
to assets.extra/edgetl_metadata.json and the labels to assets.extra/labels.txt.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ExportError
from edgetl.core.fileio import atomic_path
from edgetl.core.native import quiet_native_stderr
from edgetl.export.formats.base import SAVED_MODEL, ExportContext, Format, WriteRequest
from edgetl.export.metadata import SAVED_MODEL_DIR, write_saved_model_metadata

if TYPE_CHECKING:
    import keras


def save_serving(model: keras.Model, directory: str | os.PathLike[str], *, batch: int | None = None) -> Path:
    """Write `model` as a SavedModel with a serving_default signature (no metadata, not atomic).

    Args:
        model: the Keras classifier.
        directory: the folder to create.
        batch: a fixed batch size for the signature; None keeps the batch axis free.

    Raises:
        ExportError: Keras could not trace or save the model.
    """
    d = Path(directory)
    kwargs: dict[str, Any] = {}
    if batch is not None:
        import tensorflow as tf

        shape = (batch, *tuple(model.inputs[0].shape)[1:])
        kwargs["input_signature"] = [tf.TensorSpec(shape, tf.float32, name=model.inputs[0].name)]
    try:
        with quiet_native_stderr():
            model.export(str(d), format="tf_saved_model", verbose=False, **kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"cannot save the model as a SavedModel: {text[0][:300] if text else type(exc).__name__}."
                          ) from None
    return d


def frozen_forward(model: keras.Model, *, batch: int | None = None) -> Any:
    """The model's inference pass as a ConcreteFunction with its variables frozen to constants.

    What the TFLite converter converts fastest (no SavedModel written and read back; from_keras_model
    took 3-4x longer on MobileNetV2, BENCHMARKS.md). `batch` fixes the batch size (None: free).

    Raises:
        ExportError: the model could not be traced.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec((batch, *tuple(model.inputs[0].shape)[1:]), tf.float32, name="image")

    @tf.function(input_signature=[spec])
    def serve(image: tf.Tensor) -> tf.Tensor:
        return model(image, training=False)

    try:
        with quiet_native_stderr():
            return convert_variables_to_constants_v2(serve.get_concrete_function())
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ExportError(f"cannot trace the model for TFLite: {text[0][:300] if text else type(exc).__name__}."
                          ) from None


def export_saved_model(model_or_savedmodel: Any, path: str | os.PathLike[str], *,
                       meta: dict[str, Any] | None = None) -> Path:
    """Write the SavedModel folder `path` atomically (a temporary folder beside it, then a rename).

    Args:
        model_or_savedmodel: a Keras model, or an already written SavedModel folder to copy.
        path: the folder to create (replaced if it exists: the caller checks --force).
        meta: the edgetl metadata; None writes none.

    Returns:
        The written folder.
    """
    with atomic_path(path, suffix=".saved_model") as tmp:
        if isinstance(model_or_savedmodel, (str, os.PathLike)):
            shutil.copytree(os.fspath(model_or_savedmodel), tmp)
        else:
            save_serving(model_or_savedmodel, tmp)
        if meta is not None:
            write_saved_model_metadata(tmp, meta)
            names = meta.get("class_names") or []
            if names:
                (tmp / SAVED_MODEL_DIR / "labels.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return Path(path)


def write(ctx: ExportContext, req: WriteRequest) -> dict[str, Any]:
    """Write one SavedModel folder (a copy of the export's SavedModel, with the metadata)."""
    export_saved_model(ctx.saved_model(), req.path, meta=req.meta)
    return {}


FORMAT = Format(
    name="saved_model", help="TensorFlow SavedModel folder: TensorFlow Serving, TensorFlow.js converter, TF-TRT",
    suffix="", modes=("none",), kind="saved_model", write=write, needs=frozenset({SAVED_MODEL}),
    file_name="{stem}-saved_model")
