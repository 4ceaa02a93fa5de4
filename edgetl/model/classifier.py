"""The classifier: RGB pixels 0..255 in, class probabilities out, preprocessing inside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetl.core.errors import ModelError, UsageError
from edgetl.model.backbones import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    PREPROCESSING_MODES,
    check_keras_archive,
)

INPUT_NAME = "image"
OUTPUT_LAYER = "predictions"


def preprocessing_layers(mode: str, normalization: dict[str, list[float]] | None = None) -> list[Any]:
    """Keras layers that turn RGB 0..255 into what a backbone expects.

    They are plain built-in layers (no Lambda), so the model loads in safe mode and converts to
    TFLite and ONNX without custom code, and deployers never reimplement mean and std.

    Args:
        mode: one of PREPROCESSING_MODES.
        normalization: {"mean": [...], "std": [...]} per channel in 0..255 units; needed by "preset" only.
    """
    import keras
    import numpy as np

    if mode not in PREPROCESSING_MODES:
        raise UsageError(f"unknown preprocessing '{mode}'. Allowed: {', '.join(PREPROCESSING_MODES)}.")
    if mode == "tf":
        return [keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "unit":
        return [keras.layers.Rescaling(1 / 255.0, name="preprocess_unit")]
    if mode == "torch":
        var = [s * s for s in IMAGENET_STD_RGB]
        return [keras.layers.Normalization(mean=list(IMAGENET_MEAN_RGB), variance=var, name="preprocess_torch")]
    if mode == "preset":
        if not normalization:
            raise UsageError("--preprocessing preset takes a KerasHub preset's image converter, and this backbone has "
                             "none. Use one of tf, torch, caffe, unit, none.")
        var = [s * s for s in normalization["std"]]
        return [keras.layers.Normalization(mean=list(normalization["mean"]), variance=var, name="preprocess_preset")]
    if mode == "caffe":
        # RGB -> BGR and minus the BGR mean, as one fixed 1x1 convolution: a standard op every runtime has.
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_ch in range(3):
            kernel[0, 0, 2 - out_ch, out_ch] = 1.0
        bias = -np.asarray(CAFFE_MEAN_BGR, dtype="float32")
        layer = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        layer.build((None, None, None, 3))
        layer.set_weights([kernel, bias])
        return [layer]
    return []


@dataclass
class Classifier:
    """The full model and its two parts, which share layers (and so weights) with it."""

    model: Any  # pixels -> probabilities
    extractor: Any  # pixels -> features: preprocessing and frozen base
    head: Any  # features -> probabilities: dropout and dense
    base: Any
    feature_dim: int


def build_classifier(base: Any, *, image_size: int | None, num_classes: int, preprocessing: str, dropout: float,
                     seed: int = 42, normalization: dict[str, list[float]] | None = None) -> Classifier:
    """Assemble preprocessing, the frozen base (inference mode) and a new head.

    Args:
        base: a Keras model or layer from preprocessed images to features (2-D or 4-D output).
        image_size: square input size; None: any size (a base built for any size, build_base's image_size None).
        num_classes: classes of the head.
        preprocessing: one of PREPROCESSING_MODES.
        dropout: dropout rate before the dense layer.
        seed: seed of the dropout layer.
        normalization: mean and std of the "preset" mode (BackboneSpec.normalization).

    Returns:
        The Classifier.
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name=INPUT_NAME)
    x = inputs
    for layer in preprocessing_layers(preprocessing, normalization):
        x = layer(x)
    # training=False keeps BatchNorm statistics fixed even when top layers are unfrozen later.
    x = base(x, training=False)
    x = _single_tensor(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    elif len(x.shape) == 3:  # a vision transformer's tokens (KerasHub ViT, DeiT, DINOv2): their mean
        x = keras.layers.GlobalAveragePooling1D(name="token_pool")(x)
    elif len(x.shape) != 2:
        raise ModelError(f"the backbone returns a tensor of shape {tuple(x.shape)}; edgetl needs (batch, features), "
                         "(batch, tokens, features) or (batch, height, width, channels).")
    feature_dim = int(x.shape[-1])
    drop = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")
    dense = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=OUTPUT_LAYER)
    outputs = dense(drop(x))
    model = keras.Model(inputs, outputs, name="edgetl_classifier")
    extractor = keras.Model(inputs, x, name="edgetl_features")
    feats = keras.Input((feature_dim,), dtype="float32", name="features")
    head = keras.Model(feats, dense(drop(feats)), name="edgetl_head")
    return Classifier(model=model, extractor=extractor, head=head, base=base, feature_dim=feature_dim)


def _single_tensor(x: Any) -> Any:
    # TFSMLayer returns a dict of the SavedModel's outputs; a feature-vector module has one.
    if isinstance(x, dict):
        if len(x) != 1:
            raise ModelError(f"the backbone SavedModel has several outputs ({', '.join(x)}); edgetl needs one.")
        return next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ModelError("the backbone has several outputs; edgetl needs one.")
        return x[0]
    return x


def unfreeze_top(base: Any, layers: str) -> int:
    """Make the top `layers` weighted layers of the base trainable ("all": every one); BatchNorm stays frozen.

    Returns:
        The number of layers made trainable.
    """
    import keras

    if not isinstance(base, keras.Model):
        raise UsageError("--fine-tune-layers needs a Keras backbone; a SavedModel or TF-Hub base cannot be unfrozen. "
                         "Drop --fine-tune-layers.")
    base.trainable = True
    # Count only layers that learn: pooling and activations carry no weights, and BatchNorm stays frozen.
    candidates = [layer for layer in base.layers
                  if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
    count = len(candidates) if layers == "all" else min(int(layers), len(candidates))
    chosen = {id(layer) for layer in candidates[len(candidates) - count:]}
    for layer in base.layers:
        layer.trainable = id(layer) in chosen
    return count


def load_model(path: str, *, safe_mode: bool = True) -> Any:
    """Load a .keras classifier saved by edgetl, in Keras' safe mode by default."""
    import keras

    check_keras_archive(path, "Keras model", "Pass a .keras file saved by Keras 3 or a run directory; a run whose "
                        "model.keras is damaged has to be trained again (edgetl train --force).")
    if _uses_keras_hub(path):
        import keras_hub  # noqa: F401  (registers KerasHub's backbone classes, which the file names)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=safe_mode)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        reason = text[0][:300] if text else type(exc).__name__
        if "TFSMLayer" in reason:
            raise ModelError(f"'{path}' wraps a SavedModel (a TF-Hub or SavedModel backbone), and loading it runs that "
                             "SavedModel's graph. Pass --unsafe if you trust it.") from None
        if "safe_mode" in reason or "unsafe" in reason.lower():
            raise ModelError(f"'{path}' contains code (e.g. a Lambda layer) that safe mode will not run. Pass --unsafe "
                             "only if you trust the file.") from None
        raise ModelError(f"cannot load Keras model '{path}': {reason.rstrip('.')}. Pass a .keras file saved by "
                         "Keras 3 (model.save('model.keras')) or a run directory.") from None


def _uses_keras_hub(path: str) -> bool:
    """Whether a .keras file holds a KerasHub backbone (its config names keras_hub classes)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return b"keras_hub" in zf.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
