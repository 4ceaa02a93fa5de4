"""Quantization-aware training (QAT) of the tf_keras twin, and the QAT model's int8 TFLite conversion.

A QAT run keeps the tf_keras model with its fake-quantization nodes as a SavedModel
(`qat_saved_model/`, rundir.QAT_SAVED_MODEL): the TFLite converter reads the ranges learned in
training from it, which model.keras (float) cannot hold. `qat_tflite()` converts it; `edgetl export`
uses it for int8 modes (Run.qat_saved_model).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ModelError, UsageError, first_line
from edgetl.optimize.twin import flatten_nested, weighted_layers
from edgetl.rundir import Run, load_run

if TYPE_CHECKING:
    import numpy as np

    from edgetl.data import DataSplits

# Weighted layers tfmot has no rule for that QAT gives an output quantizer (quantize_for_training).
AFFINE_LAYERS = ("LayerNormalization", "LayerScale", "Normalization")
# Training images the activation ranges start from (init_ranges), and qat_tflite calibrates with.
RANGE_SAMPLES = 64
CONVERT_SAMPLES = 100


def calibration_images(splits: DataSplits, size: int, n: int = RANGE_SAMPLES) -> np.ndarray:
    """Up to n training images, every class represented (seeded): (n, size, size, 3) uint8."""
    from edgetl.data import load_images
    from edgetl.data.sampling import balanced_sample

    return load_images(splits.root, balanced_sample(splits.train, n, seed=0), (size, size))


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
        twin = flatten_nested(twin, tfk)
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
        if cls in AFFINE_LAYERS:
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


def init_ranges(qat_model: Any, twin: Any, images: np.ndarray, batch: int = 16) -> int:
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
    twin = flatten_nested(twin, tf_keras)
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


def qat_tflite(run_dir: str | Path | Run, mode: str = "int8-full", *, io_type: str | None = "uint8",
               meta: dict[str, Any] | None = None,
               representative: Callable[[], Iterable[list[np.ndarray]]] | None = None) -> bytes:
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
    from edgetl.export.formats.tflite import explain_error

    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    saved = run.qat_saved_model()
    if saved is None:
        raise ModelError(f"run '{run.path}' is not quantization-aware trained. Run edgetl optimize --method qat.")
    if mode not in ("int8", "int8-full"):
        raise UsageError(f"a QAT run converts to --quantize int8 or int8-full, not '{mode}'; other modes use the "
                         "float model.keras.")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if representative is None:
        calib = calibration_images(run.splits(), run.image_size, CONVERT_SAMPLES).astype("float32")

        def representative() -> Iterator[list[np.ndarray]]:
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
        from edgetl.export.standard_metadata import embed_tflite_metadata

        data = embed_tflite_metadata(data, meta)  # edgetl's entry and the standard metadata, as export writes
    return data


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": the QAT input quantizer supplies them.
        warnings.simplefilter("ignore")
        yield
