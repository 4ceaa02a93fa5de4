"""The tf_keras twin of a run's Keras 3 classifier: what tensorflow-model-optimization can work on.

tfmot works only on Keras 2 (tf_keras) models, so the run's classifier is rebuilt in tf_keras as one
flat graph (QAT refuses nested models), its weights are copied over, and the two are checked to give
the same outputs (TWIN_TOLERANCE). After training, copy_weights takes the weights back.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ModelError

if TYPE_CHECKING:
    import keras
    import numpy as np

    from edgetl.data import DataSplits
    from edgetl.rundir import Run

# The tf_keras twin must give the Keras 3 classifier's probabilities within this (measured: 0 to 6e-8).
TWIN_TOLERANCE = 1e-5
# Wrappers tfmot puts around a layer; the layer inside holds the weights that correspond.
_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "PruneLowMagnitude")


def check_source(run: Run) -> dict[str, Any]:
    """The run's backbone entry, once the run is one optimize can rebuild.

    Raises:
        ModelError: not a Keras Applications backbone, or already quantization-aware trained.
    """
    bb = run.manifest.get("backbone") or {}
    card = bb.get("card") or {}
    if bb.get("kind") != "keras" or not card.get("constructor"):
        raise ModelError(f"run '{run.path}' uses a {bb.get('kind')} backbone ({bb.get('name')}); edgetl optimize "
                         "rebuilds Keras Applications backbones only (see 'edgetl backbones'). Train with one of "
                         "those, or export with post-training quantization.")
    if (run.manifest.get("optimize") or {}).get("method") == "qat":
        raise ModelError(f"run '{run.path}' is already quantization-aware trained. Optimize its parent run "
                         f"('{(run.manifest.get('parent') or {}).get('run')}') instead.")
    return bb


def _preprocessing_tfk(tfk: Any, mode: str) -> list[Any]:
    """tf_keras versions of edgetl.model's preprocessing layers (same names, weights copied later)."""
    from edgetl.model.backbones import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    if mode == "tf":
        return [tfk.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")]
    if mode == "unit":
        return [tfk.layers.Rescaling(1 / 255.0, name="preprocess_unit")]
    if mode == "torch":
        var = [s * s for s in IMAGENET_STD_RGB]
        return [tfk.layers.Normalization(mean=list(IMAGENET_MEAN_RGB), variance=var, name="preprocess_torch")]
    if mode == "caffe":
        return [tfk.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)]
    return []


def build_twin(run: Run, model3: keras.Model, tfk: Any) -> Any:
    """The run's classifier rebuilt in tf_keras as one flat graph, with model3's weights.

    Args:
        run: the source Run.
        model3: its Keras 3 classifier.
        tfk: the tf_keras module (load_tfmot).

    Returns:
        The tf_keras model (BatchNorm layers frozen, as in the Keras 3 classifier).

    Raises:
        ModelError: the architecture or weights do not line up.
    """
    bb = check_source(run)
    card = bb["card"]
    size = run.image_size
    mode = run.manifest["input"].get("preprocessing", card.get("preprocessing", "none"))
    dropout = float((run.manifest.get("config") or {}).get("dropout", 0.2))
    inputs = tfk.Input((size, size, 3), dtype="float32", name="image")
    x = inputs
    for layer in _preprocessing_tfk(tfk, mode):
        x = layer(x)
    kwargs: dict[str, Any] = {"include_top": False, "weights": None, "input_tensor": x, "pooling": "avg"}
    if card.get("alpha") is not None and bb.get("alpha") is not None:
        kwargs["alpha"] = float(bb["alpha"])
    ctor = getattr(tfk.applications, card["constructor"], None)
    if ctor is None:
        raise ModelError(f"tf_keras has no application {card['constructor']}; edgetl optimize cannot rebuild "
                         f"{bb.get('name')}.")
    base = ctor(**kwargs)
    y = base.output
    if len(y.shape) == 4:
        y = tfk.layers.GlobalAveragePooling2D(name="global_pool")(y)
    y = tfk.layers.Dropout(dropout, name="head_dropout")(y)
    outputs = tfk.layers.Dense(len(run.class_names), activation="softmax", name="predictions")(y)
    twin = tfk.Model(inputs, outputs, name="edgetl_classifier_tfk")
    copy_weights(model3, twin)
    for layer in weighted_layers(twin):
        if layer.__class__.__name__ == "BatchNormalization":
            layer.trainable = False
    return twin


def weighted_layers(model: Any) -> list[Any]:
    """Layers that hold weights, nested models flattened and tfmot wrappers unwrapped, in graph order."""
    out: list[Any] = []
    for layer in model.layers:
        name = layer.__class__.__name__
        if name == "QuantizeLayer":  # tfmot's input quantizer: ranges only, no counterpart in the float model
            continue
        inner = getattr(layer, "layer", None)
        if inner is not None and name in _WRAPPERS:
            layer = inner
        if hasattr(layer, "layers") and layer.__class__.__name__ in ("Functional", "Model", "Sequential"):
            out.extend(weighted_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def copy_weights(src: Any, dst: Any) -> None:
    """Copy weights layer by layer in graph order (works across Keras 3 and tf_keras).

    Layer names are not compared (unnamed layers get different automatic names in each library);
    classes and weight shapes are.

    Raises:
        ModelError: the models do not have the same weighted layers.
    """
    a, b = weighted_layers(src), weighted_layers(dst)
    if len(a) != len(b):
        raise ModelError(f"the tf_keras rebuild has {len(b)} weighted layers, the run's model {len(a)}; they do not "
                         "line up. Report this with the run's manifest.")
    for la, lb in zip(a, b, strict=True):
        wa = la.get_weights()
        shapes_b = [tuple(w.shape) for w in lb.get_weights()]
        kinds = (la.__class__.__name__, lb.__class__.__name__)
        sizes_b = [math.prod(sh) for sh in shapes_b]
        if kinds == ("Dense", "Conv2D") and shapes_b[0][:2] == (1, 1) and [w.size for w in wa] == sizes_b:
            # prune_for_training's stand-in for a 1x1 convolution
            wa = [w.reshape(sh) for w, sh in zip(wa, shapes_b, strict=True)]
            kinds = ("Conv2D", "Conv2D")
        if kinds[0] != kinds[1] or [tuple(w.shape) for w in wa] != shapes_b:
            raise ModelError(f"layer '{la.name}' ({la.__class__.__name__}) does not match '{lb.name}' "
                             f"({lb.__class__.__name__}) in the rebuild; weights cannot be copied.")
        lb.set_weights(wa)


def max_output_diff(model3: keras.Model, twin: Any, images: np.ndarray) -> float:
    """Largest absolute difference of the two models' probabilities on `images` (float32 0..255)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    p3 = np.asarray(model3(x, training=False))
    p2 = np.asarray(twin(x, training=False))
    return float(np.abs(p3 - p2).max())


def probe_images(splits: DataSplits, size: int) -> np.ndarray:
    """A few real images (and two extremes) to compare the twin with the Keras 3 model: (N, size, size, 3) float32."""
    import numpy as np

    from edgetl.data import load_images

    items = (splits.val or splits.train)[:8]
    x = load_images(splits.root, items, (size, size)).astype(np.float32)
    extremes = np.stack([np.zeros((size, size, 3), np.float32), np.full((size, size, 3), 255.0, np.float32)])
    return np.concatenate([x, extremes])


def flatten_nested(model: Any, tfk: Any) -> Any:
    """`model` with every nested Keras model (ConvNeXt's stem and downsampling Sequentials) inlined.

    tfmot quantizes flat graphs only. Each layer is a fresh copy with the same name and weights (so
    variable names match the twin's for qat_weights_to_twin), not the twin's own instance: sharing
    would give the twin's layers a second inbound node. A model without nested models is returned
    as it is.

    Raises:
        ModelError: a functional model is nested inside (only Sequential ones can be inlined).
    """
    import tensorflow as tf

    if not any(isinstance(layer, tfk.Model) for layer in model.layers):
        return model

    def copy(layer: Any, *args: Any, **kwargs: Any) -> Any:
        new = layer.__class__.from_config(layer.get_config())
        out = new(*args, **kwargs)
        new.set_weights(layer.get_weights())
        return out

    # tf_keras keeps a functional model's graph in these attributes only (no public API walks it).
    computed: dict[str, Any] = {str(id(t)): t for t in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            flat = list(node._flat_arguments)
            for kt_id, index in node._keras_inputs_ids_and_indices:
                flat[index] = computed[kt_id]
            args, kwargs = tf.nest.pack_sequence_as((node.call_args, node.call_kwargs.values()), flat)
            kwargs = dict(zip(node.call_kwargs.keys(), kwargs, strict=True))
            if isinstance(node.layer, tfk.Sequential):
                y = args[0]
                for sub in node.layer.layers:
                    y = copy(sub, y)
                outputs = y
            elif isinstance(node.layer, tfk.Model):
                raise ModelError(f"layer '{node.layer.name}' is a functional model nested inside the backbone; tfmot "
                                 "quantizes only flat graphs, so this backbone cannot be quantization-aware trained; "
                                 "use post-training quantization (edgetl export --quantize int8).")
            else:
                outputs = copy(node.layer, *args, **kwargs)
            for kt_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs), strict=True):
                computed[kt_id] = y
    outputs = [computed[str(id(t))] for t in model.outputs]
    return tfk.Model(model.inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)
