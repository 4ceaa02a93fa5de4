"""`edgetl optimize`: quantization-aware training (QAT) and pruning of a trained run.

tensorflow-model-optimization (tfmot) works only on Keras 2 (tf_keras) models, so the run's Keras 3
classifier is rebuilt in tf_keras as one flat graph (QAT refuses nested models), its weights are
copied over and the two are checked to give the same outputs. After training, the weights go back
into the Keras 3 classifier, so the new run is a run like any other (model.keras in safe mode).

A QAT run also keeps the tf_keras model with its fake-quantization nodes as a SavedModel
(`qat_saved_model/`): the TFLite converter reads the ranges learned in training from it, which
model.keras (float) cannot hold. `qat_tflite()` converts it; `edgetl export` uses it for int8 modes.

tf_keras and tfmot are imported only inside this module's functions. Importing tfmot sets
TF_USE_LEGACY_KERAS=1 for the whole process; `_tfmot()` puts the variable back at once, so Keras 3
code (train, export) keeps working in the same process.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, UsageError, first_line, unknown_choice
from edgetl.core.progress import Reporter

log = logging.getLogger("edgetl")

METHODS = ("qat", "prune")
SCHEDULES = ("polynomial", "constant")
DEFAULT_LR = {"qat": 1e-4, "prune": 1e-4}
# Pruning needs longer than QAT: half of the weights must be relearned around. Measured on a
# fine-tuned MobileNetV2 0.35 (BENCHMARKS.md, tools/bench_optimize.py): 50% pruning lost 4.2 points
# after 3 epochs and 0.5 after 10; QAT recovered all of its int8 loss in 3.
DEFAULT_EPOCHS = {"qat": 3, "prune": 10}
DEFAULT_BATCH_SIZE = 32
DEFAULT_BLOCK = 1
QAT_SAVED_MODEL = "qat_saved_model"
REPORT_FILE = "optimize_report.json"
# The tf_keras twin must give the Keras 3 classifier's probabilities within this (measured: 0 to 6e-8).
TWIN_TOLERANCE = 1e-5
# Layers whose kernels pruning acts on (and whose sparsity is reported). Depthwise kernels are left
# dense: they hold about 2% of a MobileNet's weights, and pruning them costs accuracy for no size.
_PRUNABLE = ("Conv2D", "Dense", "SeparableConv2D")
# The weights pruning zeroes (tfmot's registry: a SeparableConv2D loses pointwise weights only).
_PRUNED_WEIGHTS = ("kernel", "pointwise_kernel")
# Weighted layers tfmot has no rule for that QAT gives an output quantizer (quantize_for_training).
_AFFINE_LAYERS = ("LayerNormalization", "LayerScale", "Normalization")


@dataclass
class OptimizeResult:
    """What `optimize_run` produced.

    metrics: val/test metrics of the float classifier (model.keras) of the new run.
    qat_metrics: test (else val) accuracy of the fake-quantized tf_keras model, for QAT.
    sparsity: achieved fraction of zero weights in prunable kernels (pruning; also measured for QAT).
    table: rows of the comparison (float, PTQ int8, QAT int8, pruned) when compare was on.
    """

    run_dir: Path
    parent: Path
    method: str
    metrics: dict[str, Any]
    qat_metrics: dict[str, Any] | None = None
    sparsity: float | None = None
    epochs_run: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None


# ----------------------------------------------------------------------------------------------
# tfmot import with the environment restored


def _tfmot() -> tuple[Any, Any]:
    """(tf_keras, tfmot), imported without leaving TF_USE_LEGACY_KERAS=1 behind for Keras 3 code."""
    import tensorflow as tf

    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve tf.keras to Keras 3 first: tfmot reads it after setting the variable, and the lazy
    # loader must not pick tf_keras for the rest of the process.
    with contextlib.suppress(Exception):
        _ = tf.keras.version
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError as exc:
        raise ModelError(f"edgetl optimize needs tensorflow-model-optimization and tf-keras ({exc}). Install them: "
                         "pip install tensorflow-model-optimization tf-keras.") from None
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return tf_keras, tfmot


# ----------------------------------------------------------------------------------------------
# option checks


def check_options(method: str, epochs: int | None, lr: float | None, sparsity: float, schedule: str,
                  batch_size: int, block: int = 1) -> None:
    """Reject bad options before anything is loaded.

    Raises:
        UsageError: naming the value and what is allowed.
    """
    if method not in METHODS:
        raise unknown_choice("--method", method, METHODS)
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 1000):
        raise UsageError(f"--epochs {epochs} is out of range. Use 1..1000 (a few epochs are usually enough).")
    if lr is not None and not 0 < float(lr) < 1:
        raise UsageError(f"--lr {lr} is out of range. Use a small positive rate below 1, e.g. "
                         f"{DEFAULT_LR[method]:g} (the default).")
    if schedule not in SCHEDULES:
        raise unknown_choice("--schedule", schedule, SCHEDULES)
    if method == "prune" and not 0 < float(sparsity) < 1:
        raise UsageError(f"--sparsity {sparsity} is out of range. Use a fraction in (0, 1), e.g. 0.5 for half the "
                         "weights set to zero.")
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 64:
        raise UsageError(f"--block {block} is out of range. Use 1..64 consecutive input channels (1: element-wise; "
                         f"default {DEFAULT_BLOCK}).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
        raise UsageError(f"--batch-size {batch_size} is out of range. Use 1..4096 (default {DEFAULT_BATCH_SIZE}).")


def _check_source(run: Any) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------------------------
# the tf_keras twin


def _preprocessing_tfk(tfk: Any, mode: str) -> list[Any]:
    """tf_keras versions of edgetl.model.preprocessing_layers (same names, weights copied later)."""
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


def build_twin(run: Any, model3: Any, tfk: Any) -> Any:
    """The run's classifier rebuilt in tf_keras as one flat graph, with model3's weights.

    Args:
        run: the source Run.
        model3: its Keras 3 classifier.
        tfk: the tf_keras module.

    Returns:
        The tf_keras model (BatchNorm layers frozen, as in the Keras 3 classifier).

    Raises:
        ModelError: the architecture or weights do not line up.
    """
    bb = _check_source(run)
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
        if inner is not None and name in ("QuantizeWrapper", "QuantizeWrapperV2", "PruneLowMagnitude"):
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


def max_output_diff(model3: Any, twin: Any, images: Any) -> float:
    """Largest absolute difference of the two models' probabilities on `images` (float32 0..255)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32)
    p3 = np.asarray(model3(x, training=False))
    p2 = np.asarray(twin(x, training=False))
    return float(np.abs(p3 - p2).max())


# ----------------------------------------------------------------------------------------------
# QAT and pruning transforms


def _flatten(model: Any, tfk: Any) -> Any:
    """`model` with every nested Keras model (ConvNeXt's stem and downsampling Sequentials) inlined.

    tfmot quantizes flat graphs only. Each layer is a fresh copy with the same name and weights (so
    variable names match the twin's for qat_weights_to_twin), not the twin's own instance: sharing
    would give the twin's layers a second inbound node. A model without nested models is returned
    as it is.
    """
    import tensorflow as tf

    if not any(isinstance(layer, tfk.Model) for layer in model.layers):
        return model

    def copy(layer: Any, *args: Any, **kwargs: Any) -> Any:
        new = layer.__class__.from_config(layer.get_config())
        out = new(*args, **kwargs)
        new.set_weights(layer.get_weights())
        return out

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


def quantize_for_training(twin: Any, tfk: Any, tfmot: Any) -> Any:
    """tfmot's default 8-bit QAT model of `twin`.

    Layers tfmot has no rule for but that hold no weights (Rescaling, Normalization, unsupported
    activations) get an output quantizer, so the converter has a learned range for their outputs.
    Raw TF ops (TFOpLambda: MobileNetV3's hard-swish arithmetic) stay unwrapped: the converter
    calibrates their ranges from representative images. Weighted layers that only scale and shift
    per channel (a BatchNormalization tfmot cannot fold, LayerNormalization, LayerScale) get an
    output quantizer too. Nested models (ConvNeXt's Sequential blocks) are inlined first.

    Raises:
        ModelError: one line naming a layer that cannot be quantized and why.
    """
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs as configs,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry_mod,
    )

    q = tfmot.quantization.keras
    registry = registry_mod.Default8BitQuantizeRegistry()
    output_only = configs.Default8BitOutputQuantizeConfig
    unsupported_activations = ("hard_sigmoid", "hard_swish", "hard_silu", "silu", "elu", "selu", "exponential")

    # tfmot folds a BatchNormalization into the linear convolution or Dense layer before it (and
    # splits SeparableConv2D into depthwise + 1x1 conv first, so it counts as one). Any other BN
    # (ResNet50V2's and DenseNet's pre-activation BN after an Add or Concatenate) has no rule: it
    # is frozen, so it quantizes as an affine op on its output (the converter quantizes its
    # per-channel scale and offset like any constant).
    folded_into = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
    try:
        twin = _flatten(twin, tfk)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"the models nested in this backbone cannot be inlined for tfmot: {first_line(exc)}. Use "
                         "post-training quantization (edgetl export --quantize int8) for this backbone.") from None
    standalone_bn: set[str] = set()
    for layer in twin.layers:
        if layer.__class__.__name__ != "BatchNormalization":
            continue
        inbound = [n.inbound_layers for n in layer._inbound_nodes]
        prev = inbound[0] if len(inbound) == 1 else None
        if not (prev is not None and not isinstance(prev, list) and prev.__class__.__name__ in folded_into
                and getattr(prev.activation, "__name__", "") == "linear"):
            standalone_bn.add(layer.name)

    def annotate(layer: Any) -> Any:
        cls = layer.__class__.__name__
        if isinstance(layer, tfk.layers.InputLayer):
            return layer
        if layer.name in standalone_bn:
            return q.quantize_annotate_layer(layer, quantize_config=output_only())
        if cls == "AveragePooling2D":
            # TFLite's int8 AVERAGE_POOL_2D needs its output scale equal to its input's; tfmot gives it
            # a range of its own, which the converter refuses (DenseNet's transitions). No quantizer:
            # the converter carries the input's scale through, as tfmot does for MaxPooling2D.
            return q.quantize_annotate_layer(layer, quantize_config=configs.NoOpQuantizeConfig())
        if cls in ("TFOpLambda", "SlicingOpLambda"):
            # A raw TF op (MobileNetV3's x + 3 and x * (1/6)) cannot be called inside a QuantizeWrapper.
            # Left as it is, it trains in float; the converter calibrates its range from the
            # representative images, and everything around it keeps the ranges learned in training.
            return layer
        if isinstance(layer, tfk.layers.Activation):
            act = getattr(layer.activation, "__name__", str(layer.activation))
            if act in unsupported_activations:
                return q.quantize_annotate_layer(layer, quantize_config=output_only())
        # Not in the registry, but quantize_apply's layout transforms handle them: BatchNormalization
        # after a convolution is folded into it; SeparableConv2D is split into DepthwiseConv2D and a
        # 1x1 Conv2D (qat_weights_to_twin maps the pair back).
        if registry.supports(layer) or cls in ("BatchNormalization", "SeparableConv2D"):
            return q.quantize_annotate_layer(layer)
        # Per-channel scale and offset, no rule in tfmot: trained in float, the output quantized; the
        # converter quantizes their weights as constants (ConvNeXt's LayerNormalization and LayerScale).
        if cls in _AFFINE_LAYERS:
            return q.quantize_annotate_layer(layer, quantize_config=output_only())
        if layer.weights:
            raise ModelError(f"layer '{layer.name}' ({cls}) holds weights that tfmot's 8-bit scheme has no rule "
                             "for, so it cannot be quantization-aware trained; use post-training quantization "
                             "(edgetl export --quantize int8) for this backbone.")
        return q.quantize_annotate_layer(layer, quantize_config=output_only())

    try:
        annotated = tfk.models.clone_model(twin, clone_function=annotate)
        # quantize_apply rebuilds the model from its config: custom layers (LayerScale) must resolve.
        custom = {layer.__class__.__name__: layer.__class__ for layer in twin.layers
                  if not layer.__class__.__module__.startswith("tf_keras.src.layers")}
        with q.quantize_scope({**custom, "Default8BitOutputQuantizeConfig": output_only,
                               "NoOpQuantizeConfig": configs.NoOpQuantizeConfig}):
            return q.quantize_apply(annotated)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"tfmot cannot quantize this model: {first_line(exc)}. Use post-training quantization "
                         "(edgetl export --quantize int8) for this backbone.") from None


def init_ranges(qat_model: Any, twin: Any, images: Any, batch: int = 16) -> int:
    """Start each activation range of the QAT model at the float model's min and max on `images`.

    tfmot starts every range at [-6, 6] and moves it by 0.1% a step (an EMA with decay 0.999), so a
    fine-tuning of a few hundred steps would keep ranges far too wide (a Rescaling output in [-1, 1]
    would get 1/6 of the int8 levels). The twin computes the same float tensors unclipped.

    Returns:
        The number of ranges set.
    """
    import numpy as np
    import tf_keras

    # The QAT model has the nested models' layers inlined (ConvNeXt): so must the twin probed here.
    twin = _flatten(twin, tf_keras)
    by_name = {layer.name: layer for layer in twin.layers}
    # (twin layer, its output is the depthwise half of a split SeparableConv2D, min var, max var)
    targets: list[tuple[Any, bool, Any, Any]] = []
    for wrapper in qat_model.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None or inner.name not in by_name:
            continue
        for pair in _range_vars(wrapper):
            targets.append((by_name[inner.name], False, pair["min"], pair["max"]))
    # tfmot's split of a SeparableConv2D: the depthwise half's output is a tensor the twin never
    # names. Left at [-6, 6] it can be 10^6 times wider than the 1x1 conv's output range, which
    # XNNPACK refuses (requantization scale >= 256). It is the depthwise convolution of the
    # SeparableConv2D's input with its depthwise kernel: computed below from the twin.
    seps = [layer for layer in twin.layers if layer.__class__.__name__ == "SeparableConv2D"]
    splits = _separable_splits(qat_model, twin)
    if len(seps) == len(splits):
        for sep, (dw, pw) in zip(seps, splits, strict=True):
            targets += [(sep, True, pair["min"], pair["max"]) for pair in _range_vars(dw)]
            targets += [(sep, False, pair["min"], pair["max"]) for pair in _range_vars(pw)]
    if not targets:
        return 0
    import tensorflow as tf

    def depthwise(sep: Any, x: Any) -> Any:
        return tf.nn.depthwise_conv2d(x, sep.depthwise_kernel, strides=(1, *sep.strides, 1),
                                      padding=sep.padding.upper(), dilations=sep.dilation_rate)

    probe = tf_keras.Model(twin.inputs, [layer.input if dw else layer.output for layer, dw, _, _ in targets])
    lo = np.full(len(targets), np.inf)
    hi = np.full(len(targets), -np.inf)
    x = np.asarray(images, dtype=np.float32)
    for i in range(0, len(x), batch):
        outs = probe(x[i:i + batch], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for j, o in enumerate(outs):
            arr = np.asarray(depthwise(targets[j][0], o) if targets[j][1] else o)
            lo[j] = min(lo[j], float(arr.min()))
            hi[j] = max(hi[j], float(arr.max()))
    for j, (_, _, vmin, vmax) in enumerate(targets):
        # TFLite needs 0 inside every range (asymmetric quantization of activations).
        vmin.assign(min(0.0, lo[j]))
        vmax.assign(max(0.0, hi[j], lo[j] + 1e-6))
    return len(targets)


def _range_vars(wrapper: Any) -> list[dict[str, Any]]:
    """The {"min": var, "max": var} activation ranges of a tfmot wrapper (output, post-activation)."""
    found: dict[str, dict[str, Any]] = {}
    for v in wrapper.weights:
        short = v.name.split("/")[-1].split(":")[0]
        for kind in ("output", "post_activation"):
            if short in (f"{kind}_min", f"{kind}_max"):
                found.setdefault(kind, {})[short.rsplit("_", 1)[1]] = v
    return [pair for pair in found.values() if "min" in pair and "max" in pair]


def qat_weights_to_twin(qat_model: Any, twin: Any) -> None:
    """Copy the trained float weights of the QAT model's layers back into `twin`, by variable name.

    The wrappers take kernels out of their inner layers, so the inner layers' weight lists are not
    complete; the variables keep their names (Conv1/kernel:0) and the twin has the same ones.

    Raises:
        ModelError: a twin variable has no trained counterpart.
    """
    trained = {v.name: v for layer in qat_model.layers for v in layer.weights}
    split = _separable_splits(qat_model, twin)
    for layer in weighted_layers(twin):
        if layer.__class__.__name__ == "SeparableConv2D":
            # tfmot split it into a DepthwiseConv2D and a 1x1 Conv2D with new names: take the next
            # pair in graph order (depthwise kernel; pointwise kernel and bias).
            if not split:
                raise ModelError(f"the QAT model has no split counterpart of SeparableConv2D '{layer.name}'; cannot "
                                 "copy it back. Report this.")
            dw, pw = split.pop(0)
            srcs = _own(dw, ("depthwise_kernel",)) + _own(pw, ("kernel", "bias"))
            if [tuple(v.shape) for v in srcs] != [tuple(w.shape) for w in layer.weights]:
                raise ModelError(f"the split of SeparableConv2D '{layer.name}' in the QAT model has other weight "
                                 "shapes; cannot copy it back. Report this.")
            for w, src in zip(layer.weights, srcs, strict=True):
                w.assign(src)
            continue
        for w in layer.weights:
            src = trained.get(w.name)
            if src is None or tuple(src.shape) != tuple(w.shape):
                raise ModelError(f"the QAT model has no trained weight '{w.name}' of shape {tuple(w.shape)}; cannot "
                                 "copy it back. Report this.")
            w.assign(src)


def _separable_splits(qat_model: Any, twin: Any) -> list[tuple[Any, Any]]:
    """(DepthwiseConv2D wrapper, Conv2D wrapper) that tfmot made from each SeparableConv2D of `twin`.

    They are the DepthwiseConv2D layers that have no namesake in `twin`, each with the Conv2D it feeds,
    in graph order (the order of the SeparableConv2D layers they replace).
    """
    names = {layer.name for layer in twin.layers}
    pairs: list[tuple[Any, Any]] = []
    for wrapper in qat_model.layers:
        inner = getattr(wrapper, "layer", None)
        if inner is None or inner.__class__.__name__ != "DepthwiseConv2D" or inner.name in names:
            continue
        consumers = [n.outbound_layer for n in wrapper._outbound_nodes]
        if len(consumers) == 1 and getattr(consumers[0], "layer", None).__class__.__name__ == "Conv2D":
            pairs.append((wrapper, consumers[0]))
    return pairs


def _own(wrapper: Any, short_names: tuple[str, ...]) -> list[Any]:
    """The wrapped layer's variables by short name (a wrapper also holds its quantizers' min/max)."""
    by_short = {v.name.split("/")[-1].split(":")[0]: v for v in wrapper.weights}
    return [by_short[n] for n in short_names if n in by_short]


def prune_for_training(twin: Any, tfk: Any, tfmot: Any, *, sparsity: float, schedule: str, end_step: int,
                       block: int = 1) -> Any:
    """`twin` with prune_low_magnitude on every trainable Conv2D, Dense and SeparableConv2D layer.

    polynomial: sparsity rises from 0 to `sparsity` over `end_step` steps (tfmot's PolynomialDecay);
    constant: `sparsity` from the first step. block > 1: Dense layers and 1x1 convolutions lose weights
    in runs of `block` consecutive input channels, ranked by their mean magnitude; other kernels lose
    them one by one. tfmot prunes in blocks only rank-2 kernels, so 1x1 convolutions train here as the
    Dense layers they equal; copy_weights puts their kernels back in the Conv2D shape.
    """
    s = tfmot.sparsity.keras
    freq = max(1, min(100, end_step // 10))
    # Pruning happens every `freq` steps up to end_step: end on a multiple, or the last step is skipped
    # and the target sparsity never reached.
    end_step = max(freq, end_step // freq * freq)
    if schedule == "polynomial":
        sched = s.PolynomialDecay(initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0,
                                  end_step=max(1, end_step), frequency=freq)
    else:
        sched = s.ConstantSparsity(float(sparsity), begin_step=0, frequency=freq)

    def wrap(layer: Any) -> Any:
        if layer.__class__.__name__ not in _PRUNABLE or not layer.trainable:
            return layer
        if block > 1 and _is_pointwise(layer) and _blockable(layer.kernel.shape[2:], block):
            layer = _as_dense(layer, tfk)
        blocks = block > 1 and layer.__class__.__name__ == "Dense" and _blockable(layer.kernel.shape, block)
        return s.prune_low_magnitude(layer, pruning_schedule=sched, block_size=(block, 1) if blocks else (1, 1))

    try:
        return tfk.models.clone_model(twin, clone_function=wrap)
    except Exception as exc:
        raise ModelError(f"tfmot cannot prune this model: {first_line(exc)}.") from None


def _blockable(shape: Any, block: int) -> bool:
    """True for a kernel [in, out] that tfmot can prune in blocks of `block` inputs.

    More than one block along `in` and more than one output: tfmot squeezes the pooled block
    magnitudes and fails on a single row or column (EfficientNet's squeeze-excite convolutions
    have 4 inputs). Exported, such a kernel is stored [out, in] (TFLite, ONNX), so a block along
    `in` is a run of consecutive zeros in the file, which gzip compresses best.
    """
    dims = [int(d) for d in shape]
    return len(dims) == 2 and dims[0] > block and dims[1] > 1


def _is_pointwise(layer: Any) -> bool:
    """A channels-last 1x1 Conv2D with stride 1: the same function as a Dense layer on the last axis."""
    if layer.__class__.__name__ != "Conv2D":
        return False
    cfg = layer.get_config()
    return (tuple(cfg["kernel_size"]) == (1, 1) and tuple(cfg["strides"]) == (1, 1)
            and tuple(cfg["dilation_rate"]) == (1, 1) and int(cfg.get("groups", 1)) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def _as_dense(conv: Any, tfk: Any) -> Any:
    """A built tf_keras Dense with `conv`'s name, activation and weights (kernel [1,1,in,out] to [in,out])."""
    kernel, *rest = conv.get_weights()
    dense = tfk.layers.Dense(kernel.shape[-1], activation=conv.activation, use_bias=conv.use_bias, name=conv.name)
    dense.build((None, None, None, kernel.shape[2]))
    dense.set_weights([kernel.reshape(kernel.shape[2:]), *rest])
    return dense


def mixed_block_runs(kernel: Any, block: int) -> tuple[int, int]:
    """(partly zero, all) runs of `block` consecutive inputs, per output, in a kernel [in, out].

    Pruning in blocks leaves every run all zero or all kept: 0 partly zero runs. The last run may be
    shorter, as tfmot pads it.
    """
    import numpy as np

    zero = np.asarray(kernel) == 0
    mixed = total = 0
    for i in range(0, zero.shape[0], block):
        run = zero[i:i + block]
        mixed += int((run.any(axis=0) & ~run.all(axis=0)).sum())
        total += run.shape[1]
    return mixed, total


def kernel_sparsity(model: Any) -> float:
    """Fraction of exact zeros over the kernels pruning acts on: Conv2D, Dense, SeparableConv2D's pointwise."""
    import numpy as np

    zeros = total = 0
    for layer in weighted_layers(model):
        if layer.__class__.__name__ not in _PRUNABLE or not layer.trainable and layer.name == "preprocess_caffe":
            continue
        for w in layer.weights:
            if w.name.split("/")[-1].split(":")[0] in _PRUNED_WEIGHTS:
                arr = np.asarray(w)
                zeros += int((arr == 0).sum())
                total += arr.size
    return zeros / total if total else 0.0


def gzip_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the file (or folder, files concatenated) after gzip -9: what a sparse model costs to ship."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for f in files:
            gz.write(f.read_bytes())
    return len(buf.getvalue())


# ----------------------------------------------------------------------------------------------
# the QAT SavedModel and its TFLite conversion


def save_qat_model(qat_model: Any, path: Path, image_size: int) -> None:
    """Write the fake-quantized tf_keras model as a SavedModel with a serving_default signature.

    Its input is "image" (float32, pixels 0..255) and its output "probabilities", like the float
    SavedModel export writes.
    """
    import tensorflow as tf

    from edgetl.core.fileio import atomic_path

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="image")])
    def serve(image: Any) -> dict[str, Any]:
        return {"probabilities": qat_model(image, training=False)}

    with atomic_path(path) as tmp:
        tf.saved_model.save(qat_model, str(tmp), signatures={"serving_default": serve})


def qat_saved_model(run: Any) -> Path | None:
    """The QAT SavedModel of a run written by `edgetl optimize --method qat`, else None."""
    opt = run.manifest.get("optimize") or {}
    if opt.get("method") != "qat" or not opt.get("saved_model"):
        return None
    p = run.path / opt["saved_model"]
    if not (p / "saved_model.pb").is_file():
        raise ModelError(f"QAT run '{run.path}' lacks its {opt['saved_model']}/ SavedModel. The run is damaged; run "
                         "edgetl optimize again.")
    return p


def qat_tflite(run_dir: Any, mode: str = "int8-full", *, io_type: str | None = "uint8",
               meta: dict[str, Any] | None = None, representative: Any = None) -> bytes:
    """Convert a QAT run to an int8 TFLite flatbuffer with the quantization ranges learned in training.

    Tensors after a fake-quantization node keep the range learned in training; the converter still
    wants a representative dataset for full-integer output, and uses it only for the few tensors
    QAT leaves without a range (inside a Rescaling layer, for instance: its multiply before the add).

    Args:
        run_dir: a run written by `edgetl optimize --method qat` (path or Run).
        mode: "int8" (float input/output) or "int8-full" (integer input/output).
        io_type: "uint8" or "int8" for int8-full.
        meta: edgetl metadata to embed (edgetl.export.metadata.build_metadata), or None.
        representative: generator function of [float32 (1, H, W, 3)] batches; None: 100 training images.

    Raises:
        UsageError: another mode; ModelError: not a QAT run; ExportError: the conversion failed.
    """
    import tensorflow as tf

    from edgetl.core.native import quiet_native_stderr
    from edgetl.export.tflite import explain_error
    from edgetl.rundir import Run, load_run

    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    saved = qat_saved_model(run)
    if saved is None:
        raise ModelError(f"run '{run.path}' is not quantization-aware trained. Run edgetl optimize --method qat.")
    if mode not in ("int8", "int8-full"):
        raise UsageError(f"a QAT run converts to --quantize int8 or int8-full, not '{mode}'; other modes use the "
                         "float model.keras.")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if representative is None:
        calib = _calibration_images(run.splits(), run.image_size, 100).astype("float32")

        def representative() -> Any:
            for i in range(len(calib)):
                yield [calib[i:i + 1]]

    converter.representative_dataset = representative
    if mode == "int8-full":
        dtype = {"uint8": tf.uint8, "int8": tf.int8}[io_type or "uint8"]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
    try:
        with quiet_native_stderr(), _quiet_warnings():
            data = bytes(converter.convert())
    except Exception as exc:
        raise explain_error(exc, mode, False) from None
    if meta is not None:
        from edgetl.export.metadata import write_tflite_metadata

        data = write_tflite_metadata(data, meta)
    return data


@contextlib.contextmanager
def _quiet_warnings() -> Any:
    import warnings

    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the QAT input quantizer supplies them.
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------------------------
# optimize_run


def optimize_run(run_dir: Any, *, method: str, epochs: int | None = None, output: Any, lr: float | None = None,
                 sparsity: float = 0.5, schedule: str = "polynomial", block: int = DEFAULT_BLOCK,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 force: bool = False, compare: bool = False, threads: int | None = None,
                 reporter: Reporter | None = None) -> OptimizeResult:
    """Fine-tune a trained run with QAT or pruning and write the result as a new run directory.

    Args:
        run_dir: the trained run (edgetl train --output).
        method: "qat" (quantization-aware training) or "prune" (magnitude pruning).
        epochs: fine-tuning epochs on the run's training split (None: DEFAULT_EPOCHS of the method).
        output: the new run directory.
        lr: Adam learning rate (default 1e-4: the model is already trained).
        sparsity: pruning's target fraction of zero weights.
        schedule: pruning schedule, "polynomial" (0 to sparsity over the first 70% of steps) or "constant".
        block: pruning in runs of this many consecutive input channels of 1x1 convolutions and Dense
            layers (1: element-wise). Blocks of zeros compress better with the same sparsity.
        batch_size: training batch size.
        force: replace `output` if it holds a run.
        compare: also export float, PTQ int8-full and the optimized model to TFLite and measure them
            (the table of optimize_report.json); slower.
        threads: CPU threads for the comparison's latency.
        reporter: progress events.

    Returns:
        The OptimizeResult.

    Raises:
        UsageError: bad options; ModelError: the run cannot be rebuilt or optimized; RunExistsError:
            `output` holds files and force is off; DataError: the run's images are gone.
    """
    from edgetl import rundir

    reporter = reporter or Reporter()
    check_options(method, epochs, lr, sparsity, schedule, batch_size, block)
    lr = float(lr) if lr is not None else DEFAULT_LR[method]
    epochs = int(epochs) if epochs is not None else DEFAULT_EPOCHS[method]
    src = rundir.load_run(run_dir)
    _check_source(src)
    if output is None:
        raise UsageError("--output is required: the optimized model is written as a new run directory.")
    out = Path(output)
    if out.resolve() == src.path.resolve():
        raise UsageError(f"--output '{out}' is the source run. Choose a new folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        rundir.prepare_output(out, force=False)
    splits = src.splits()
    if not Path(splits.root).is_dir():
        from edgetl.core.errors import DataError

        raise DataError(f"the run's data folder '{splits.root}' is gone: fine-tuning needs its images. Put it back "
                        "at that path.")
    if not splits.train:
        from edgetl.core.errors import DataError

        raise DataError(f"run '{src.path}' has no training images to fine-tune on. Train it again with data.")

    t0 = time.perf_counter()
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import keras
    import numpy as np

    seed = int((src.manifest.get("config") or {}).get("seed", 42))
    keras.utils.set_random_seed(seed)
    tfk, tfmot = _tfmot()
    tfk.utils.set_random_seed(seed)
    size = src.image_size
    reporter.start("rebuilding the model in tf_keras", None)
    model3 = src.load_model()
    twin = build_twin(src, model3, tfk)
    probe = _probe_images(splits, size)
    diff = max_output_diff(model3, twin, probe)
    reporter.finish()
    if diff > TWIN_TOLERANCE:
        raise ModelError(f"the tf_keras rebuild of '{src.path}' differs from its model by {diff:.2g} (tolerance "
                         f"{TWIN_TOLERANCE:g}); optimizing it would not be the same model. Report this.")
    reporter.info(f"tf_keras rebuild matches the run's model (max difference {diff:.2g})")

    from edgetl.data import make_dataset

    train_ds = make_dataset(splits.root, splits.train, (size, size), batch_size, shuffle=True, seed=seed,
                            cache=True)
    val_ds = make_dataset(splits.root, splits.val, (size, size), batch_size, cache=True) if splits.val else None
    steps = -(-len(splits.train) // batch_size)
    callbacks: list[Any] = []
    if method == "qat":
        reporter.start("inserting fake-quantization nodes", None)
        trainable = quantize_for_training(twin, tfk, tfmot)
        init_ranges(trainable, twin, _calibration_images(splits, size))
        reporter.finish()
    else:
        end_step = max(1, int(steps * epochs * 0.7)) if schedule == "polynomial" else 1
        trainable = prune_for_training(twin, tfk, tfmot, sparsity=sparsity, schedule=schedule, end_step=end_step,
                                       block=block)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    trainable.compile(optimizer=tfk.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    rows: list[dict[str, Any]] = []
    callbacks.append(_history_callback(tfk, rows, method, lr, epochs, steps, reporter))
    t1 = time.perf_counter()
    trainable.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0)
    seconds = {"build": round(t1 - t0, 2), "train": round(time.perf_counter() - t1, 2)}

    if method == "prune":
        copy_weights(tfmot.sparsity.keras.strip_pruning(trainable), model3)
    else:
        qat_weights_to_twin(trainable, twin)
        copy_weights(twin, model3)  # the float Keras 3 classifier now holds the fine-tuned weights

    # Evaluate: the float classifier on val and test (as train does), the fake-quantized one for QAT.
    from edgetl.core.metrics import classification_metrics

    t1 = time.perf_counter()
    metrics: dict[str, Any] = {}
    qat_metrics: dict[str, Any] | None = None
    for name in ("val", "test"):
        items = getattr(splits, name)
        if not items:
            metrics[name] = None
            continue
        ds = make_dataset(splits.root, items, (size, size), batch_size)
        labels = np.array([i.label for i in items])
        probs = model3.predict(ds, verbose=0)
        metrics[name] = classification_metrics(labels, probs, splits.class_names)
        if method == "qat":
            qprobs = trainable.predict(ds, verbose=0)
            qat_metrics = {"split": name, "accuracy": float((qprobs.argmax(1) == labels).mean())}
    seconds["evaluate"] = round(time.perf_counter() - t1, 2)

    # Write the new run.
    path = rundir.prepare_output(out, force=force)
    manifest = _new_manifest(src, method, epochs, lr, sparsity, schedule, batch_size, block)
    from edgetl.core.fileio import atomic_path, write_json, write_text

    write_json(path / rundir.MANIFEST, manifest)
    write_text(path / rundir.LABELS_FILE, "\n".join(src.class_names) + "\n")
    with atomic_path(path / rundir.MODEL_FILE, suffix=".keras") as tmp:
        model3.save(tmp)
    _write_history(path / rundir.HISTORY_FILE, rows)
    write_json(path / rundir.METRICS_FILE, {"class_names": src.class_names, **metrics})
    from edgetl.core.plots import plot_run

    plots = plot_run(path, rows, metrics, src.class_names, f"{src.manifest['backbone']['name']} {method}")
    sparsity_now = kernel_sparsity(model3)
    opt: dict[str, Any] = {"method": method, "sparsity": round(sparsity_now, 4), "twin_max_diff": diff}
    if method == "qat":
        save_qat_model(trainable, path / QAT_SAVED_MODEL, size)
        opt.update({"saved_model": QAT_SAVED_MODEL, "qat_metrics": qat_metrics,
                    "export": "int8 and int8-full TFLite convert from saved_model with the ranges learned in "
                              "training (edgetl.optimize.qat_tflite); other modes use model.keras"})
    else:
        opt.update({"target_sparsity": float(sparsity), "block": int(block)})
    seconds["total"] = round(time.perf_counter() - t0, 2)
    manifest.update({
        "status": "complete",
        "finished": rundir.now(),
        "training": {"stage": method, "epochs_run": {method: len(rows)}, "feature_cache": False,
                     "global_batch_size": batch_size, "lr": lr, "seconds": seconds},
        "metrics": {name: (m["accuracy"] if m else None) for name, m in metrics.items()},
        "optimize": opt,
    })
    manifest["files"]["plots"] = plots
    write_json(path / rundir.MANIFEST, manifest)
    result = OptimizeResult(run_dir=path, parent=src.path, method=method, metrics=metrics, qat_metrics=qat_metrics,
                            sparsity=sparsity_now, epochs_run=len(rows), seconds=seconds)
    if compare:
        result.table = compare_runs(src.path, path, threads=threads, reporter=reporter)
    from edgetl.core.fileio import write_json as _wj

    result.report_path = path / REPORT_FILE
    _wj(result.report_path, {"edgetl_optimize": 1, "parent": str(src.path), "run": str(path), "method": method,
                             "sparsity": round(sparsity_now, 4), "qat_metrics": qat_metrics,
                             "metrics": manifest["metrics"], "seconds": seconds, "table": result.table})
    return result


def _probe_images(splits: Any, size: int) -> Any:
    """A few real images (and two extremes) to compare the twin with the Keras 3 model."""
    import numpy as np

    from edgetl.data import load_images

    items = (splits.val or splits.train)[:8]
    x = load_images(splits.root, items, (size, size)).astype(np.float32)
    extremes = np.stack([np.zeros((size, size, 3), np.float32), np.full((size, size, 3), 255.0, np.float32)])
    return np.concatenate([x, extremes])


def _calibration_images(splits: Any, size: int, n: int = 64) -> Any:
    """Up to n training images, every class represented (seeded): the activation ranges' starting point."""
    from edgetl.data import load_images
    from edgetl.data.sampling import balanced_sample

    return load_images(splits.root, balanced_sample(splits.train, n, seed=0), (size, size))


def _history_callback(tfk: Any, rows: list[dict[str, Any]], stage: str, lr: float, epochs: int, steps: int,
                      reporter: Reporter) -> Any:
    class _Rows(tfk.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t = time.perf_counter()
            reporter.start(f"{stage} epoch {epoch + 1}/{epochs}", steps)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            reporter.advance(1)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            reporter.finish()
            row: dict[str, Any] = {"stage": stage, "epoch": len(rows) + 1, "lr": lr,
                                   "seconds": round(time.perf_counter() - self.t, 3)}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                row[key] = round(float(logs[key]), 6) if key in logs else ""
            rows.append(row)
            reporter.epoch(stage, epoch + 1, epochs, {k: float(v) for k, v in logs.items()})

    return _Rows()


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    from edgetl.core.fileio import atomic_path
    from edgetl.train import HISTORY_COLUMNS

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _new_manifest(src: Any, method: str, epochs: int, lr: float, sparsity: float, schedule: str,
                  batch_size: int, block: int) -> dict[str, Any]:
    from edgetl import rundir

    m = {k: v for k, v in src.manifest.items() if k not in ("training", "metrics", "finished", "optimize")}
    options: dict[str, Any] = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    if method == "prune":
        options.update({"sparsity": float(sparsity), "schedule": schedule, "block": int(block)})
    m.update({"status": "running", "created": rundir.now(), "versions": rundir.versions(),
              "parent": {"run": str(src.path.resolve()), "method": method, "options": options},
              "files": {"model": rundir.MODEL_FILE, "labels": rundir.LABELS_FILE, "history": rundir.HISTORY_FILE,
                        "metrics": rundir.METRICS_FILE}})
    return m


# ----------------------------------------------------------------------------------------------
# the comparison table


def compare_runs(parent: Any, optimized: Any, *, threads: int | None = None,
                 reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Float, PTQ int8-full (parent) and the optimized model as TFLite, measured on the held-out images.

    Rows: name, accuracy, drop (from the parent's float TFLite), size_mb, gzip_mb, gzip_ratio (to the
    float file's gzip size), latency_ms, path.
    Files go to OPTIMIZED/compare/.
    """
    import numpy as np

    from edgetl.core.fileio import write_bytes
    from edgetl.export import export_run
    from edgetl.export.metadata import build_metadata
    from edgetl.rundir import load_run
    from edgetl.runtime import open_model

    reporter = reporter or Reporter()
    opt = load_run(optimized)
    folder = opt.path / "compare"
    base_rep = export_run(parent, formats=("tflite",), quantize=("none", "int8-full"), output=folder / "parent",
                          threads=threads, force=True, reporter=reporter)
    by_mode = {r["mode"]: r for r in base_rep.rows}
    ref_acc = by_mode["none"]["accuracy"]
    rows = [_table_row("float", by_mode["none"], ref_acc), _table_row("PTQ int8", by_mode["int8-full"], ref_acc)]
    method = (opt.manifest.get("optimize") or {}).get("method")
    if method == "qat":
        path = folder / "qat-int8-full-uint8.tflite"
        meta = build_metadata(opt, fmt="tflite", quantization="int8-full", io_type="uint8")
        reporter.start("converting the QAT model", None)
        write_bytes(path, qat_tflite(opt, "int8-full", io_type="uint8", meta=meta))
        reporter.finish()
        splits = opt.splits()
        items = splits.test or splits.val
        from edgetl.data import load_images

        x = load_images(splits.root, items, (opt.image_size, opt.image_size))
        y = np.array([i.label for i in items])
        runner = open_model(path, threads=threads)
        try:
            probs = runner.predict(x)
            from edgetl.runtime.timing import median_ms

            lat = median_ms(lambda: runner.predict(x[:1]))
        finally:
            runner.close()
        acc = round(float((probs.argmax(1) == y).mean()), 4)
        rows.append({"name": "QAT int8", "accuracy": acc,
                     "drop": round(ref_acc - acc, 4) if ref_acc is not None else None,
                     "size_mb": round(path.stat().st_size / 1e6, 3), "gzip_mb": round(gzip_size(path) / 1e6, 3),
                     "latency_ms": lat, "path": str(path)})
    else:
        rep = export_run(opt.path, formats=("tflite",), quantize=("none", "int8-full"), output=folder / "pruned",
                         threads=threads, force=True, reporter=reporter)
        pm = {r["mode"]: r for r in rep.rows}
        rows.append(_table_row("pruned", pm["none"], ref_acc))
        rows.append(_table_row("pruned int8", pm["int8-full"], ref_acc))
    # What pruning is for: the compressed download against the float file's.
    for r in rows:
        r["gzip_ratio"] = round(r["gzip_mb"] / rows[0]["gzip_mb"], 3) if rows[0]["gzip_mb"] else None
    return rows


def _table_row(name: str, row: dict[str, Any], ref_acc: float | None) -> dict[str, Any]:
    acc = row.get("accuracy")
    return {"name": name, "accuracy": acc,
            "drop": round(ref_acc - acc, 4) if acc is not None and ref_acc is not None else None,
            "size_mb": row.get("size_mb"), "gzip_mb": round(gzip_size(row["path"]) / 1e6, 3),
            "latency_ms": row.get("latency_ms"), "path": row["path"]}
