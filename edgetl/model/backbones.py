"""Backbone cards and frozen bases: Keras Applications, TF-Hub handles, KerasHub presets, a user's own model."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, UsageError, did_you_mean, first_line

log = logging.getLogger("edgetl")

# "preset": a KerasHub preset's own image converter (its scale and offset), for presets matching no other mode.
PREPROCESSING_MODES = ("tf", "torch", "caffe", "unit", "none", "preset")
KERASHUB_PREFIX = "kerashub:"
# How --backbone kerashub:PRESET is spelled; shown by 'edgetl backbones' and in errors.
PRESET_FORMS = (
    "kerashub:NAME (a built-in KerasHub image preset, e.g. kerashub:resnet_18_imagenet), "
    "kerashub:kaggle://OWNER/MODEL/keras/VARIANT[/VERSION], kerashub:hf://ORG/MODEL, "
    "or kerashub:/path/to/preset (a folder written by save_to_preset)"
)
# ImageNet statistics used by Keras' "torch" and "caffe" preprocessing modes (RGB order).
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def models_dir() -> Path:
    """The folder holding backbone cards and bundled weights (models/ in the repository)."""
    import importlib.resources

    try:
        return Path(str(importlib.resources.files("edgetl.models")))
    except ModuleNotFoundError:  # running from a source tree without an install
        return Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class Card:
    """What edgetl knows about one Keras Applications backbone."""

    name: str
    constructor: str
    default_size: int
    min_size: int
    preprocessing: str
    params: int
    features: int
    alpha: list[float] | None = None
    int8: str = ""
    bundled_weights: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=1)
def cards() -> dict[str, Card]:
    """All backbone cards, by name."""
    import yaml

    raw = yaml.safe_load((models_dir() / "backbones.yaml").read_text())
    out = {}
    for name, entry in raw.items():
        bundled = {str(k): str(v) for k, v in (entry.pop("bundled_weights", None) or {}).items()}
        out[name] = Card(name=name, bundled_weights=bundled, **entry)
    return out


def get_card(name: str) -> Card:
    """The card of a named backbone, or a ModelError with a did-you-mean."""
    all_cards = cards()
    if name not in all_cards:
        raise ModelError(
            f"unknown backbone '{name}'.{did_you_mean(name, all_cards)} Allowed: {', '.join(all_cards)}, "
            "hub:HANDLE, or a path to a .keras file or SavedModel folder. See 'edgetl backbones'."
        )
    return all_cards[name]


@dataclass(frozen=True)
class Preset:
    """What a KerasHub preset says about its input, read from its image converter (if it has one)."""

    handle: str  # as given after kerashub: (a local folder resolved to an absolute path)
    image_size: int | None  # the converter's size, or the backbone's fixed input size
    fixed_size: bool  # the backbone's config fixes its input size
    mean: list[float] | None  # per channel, in 0..255 units: x_model = (x - mean) / std
    std: list[float] | None

    def normalization(self) -> dict[str, list[float]] | None:
        return {"mean": list(self.mean), "std": list(self.std)} if self.mean is not None and self.std else None


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved --backbone value."""

    # "keras" (a card), "hub" (TF-Hub handle), "kerashub" (a KerasHub preset), "file" (.keras or SavedModel)
    kind: str
    name: str  # card name, hub handle, preset handle, or path
    card: Card | None = None
    preset: Preset | None = None

    @property
    def default_size(self) -> int:
        if self.card:
            return self.card.default_size
        return self.preset.image_size if self.preset and self.preset.image_size else 224

    @property
    def min_size(self) -> int:
        if self.card:
            return self.card.min_size
        return self.preset.image_size if self.preset and self.preset.fixed_size and self.preset.image_size else 1

    @property
    def default_preprocessing(self) -> str:
        if self.card:
            return self.card.preprocessing
        if self.preset:
            return preset_mode(self.preset)
        # TF-Hub image modules take floats in [0, 1] by convention; a user's own model is taken as is.
        return "unit" if self.kind == "hub" else "none"

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """Per-channel mean and std (0..255 units) of the "preset" preprocessing mode, when the preset has them."""
        return self.preset.normalization() if self.preset else None


def resolve_backbone(value: str) -> BackboneSpec:
    """Turn a --backbone value into a spec: a card name, hub:HANDLE, kerashub:PRESET, or a path.

    A kerashub: preset in a local folder is read without TensorFlow; a built-in name or a kaggle:// or
    hf:// handle imports keras_hub and fetches the preset's image converter (cached by KerasHub).
    """
    if value.startswith(KERASHUB_PREFIX):
        handle = value[len(KERASHUB_PREFIX):]
        if not handle:
            raise UsageError(f"--backbone kerashub: needs a preset. Allowed: {PRESET_FORMS}.")
        preset = read_preset(handle)
        return BackboneSpec("kerashub", preset.handle, preset=preset)
    if value.startswith("hub:"):
        handle = value[4:]
        if not handle:
            raise UsageError("--backbone hub: needs a handle, e.g. hub:https://tfhub.dev/... or "
                             "hub:/path/to/savedmodel.")
        if "://" in handle and not handle.startswith("https://"):
            raise UsageError(f"TF-Hub handle '{handle}' is not https. Use an https:// URL or a local folder.")
        return BackboneSpec("hub", handle)
    if value.endswith(".keras") or os.sep in value or "/" in value or Path(value).exists():
        p = Path(value)
        if not p.exists():
            raise ModelError(f"backbone file '{value}' does not exist. Pass a .keras file, a SavedModel folder "
                             "or a backbone name.")
        return BackboneSpec("file", str(p.resolve()))
    return BackboneSpec("keras", value, get_card(value))


def backbone_label(kind: str, name: str) -> str:
    """A backbone's short name for file names and titles: a card's name, else the last part of its path or handle.

    A KerasHub handle's trailing version is dropped (kaggle://keras/resnetv1/keras/resnet_18_imagenet/3 ->
    resnet_18_imagenet).
    """
    if kind == "keras":
        return name
    parts = [p for p in name.replace("://", "/").split("/") if p]
    if kind == "kerashub" and len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return Path(parts[-1]).stem if parts else "model"


def check_image_size(spec: BackboneSpec, size: int) -> None:
    """Reject input sizes the backbone cannot take."""
    if size < spec.min_size:
        raise UsageError(
            f"--image-size {size} is below {spec.name}'s minimum of {spec.min_size}. "
            f"Use {spec.min_size} or more (its default is {spec.default_size})."
        )
    if size > 1024:
        raise UsageError(f"--image-size {size} is larger than edgetl allows (1024). Use 1024 or less.")


def check_alpha(spec: BackboneSpec, alpha: float | None, weights: str) -> None:
    """Width multipliers exist only for the MobileNet family, and ImageNet weights only for some."""
    if alpha is None:
        return
    if spec.card is None or spec.card.alpha is None:
        with_alpha = [c.name for c in cards().values() if c.alpha]
        raise UsageError(f"--alpha applies only to {', '.join(with_alpha)}, not to '{spec.name}'. Drop --alpha.")
    if not 0 < alpha <= 2:
        raise UsageError(f"--alpha {alpha} is out of range. Use a value in (0, 2], e.g. {spec.card.alpha}.")
    if weights == "imagenet" and alpha not in spec.card.alpha:
        raise UsageError(
            f"--alpha {alpha} has no ImageNet weights for {spec.name}. Allowed: {spec.card.alpha}, "
            "or use --weights none / a weights file."
        )


def bundled_weights_path(spec: BackboneSpec, alpha: float | None) -> Path:
    """The weights file shipped in models/ for this backbone and alpha (--weights bundled)."""
    bundled = spec.card.bundled_weights if spec.card else {}
    key = str(alpha) if alpha is not None else "1.0"
    if key not in bundled:
        offered = [f"{n} --alpha {a}" for n, c in cards().items() for a in c.bundled_weights]
        raise UsageError(
            f"edgetl ships no weights for {spec.name} at alpha {key}. Bundled weights exist for: {', '.join(offered)}."
        )
    return models_dir() / bundled[key]


def keras_cache_dir() -> str:
    """Where Keras caches downloaded weights."""
    return os.path.join(os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras")), "models")


def build_base(spec: BackboneSpec, *, weights: str, alpha: float | None, image_size: int | None) -> Any:
    """Build the frozen base: a Keras model or layer from RGB-preprocessed images to features.

    Args:
        spec: the resolved backbone.
        weights: "imagenet", "none", "bundled", or a path to a weights file.
        alpha: width multiplier (MobileNet family) or None.
        image_size: square input size in pixels; None (Keras Applications only): any size, the base then computes
            at the size of each classifier built on it (build_classifier) the same graph as a base built for it.

    Returns:
        A Keras model (cards, .keras files) or a TFSMLayer (TF-Hub, SavedModel), not trainable.

    Raises:
        ModelError: the weights cannot be downloaded or loaded, or the file is not a model.
    """
    if spec.kind == "keras":
        base = _build_application(spec, weights=weights, alpha=alpha, image_size=image_size)
    elif image_size is None:
        raise ModelError(f"'{spec.name}' is built for one input size; only Keras Applications take any size.")
    elif spec.kind == "hub":
        base = _build_hub(spec.name)
    elif spec.kind == "kerashub":
        base = _build_preset(spec.name, weights=weights, image_size=image_size)
    else:
        base = _build_from_file(Path(spec.name), image_size)
    base.trainable = False
    return base


def _build_application(spec: BackboneSpec, *, weights: str, alpha: float | None, image_size: int | None) -> Any:
    import keras

    card = spec.card
    if card is None:  # only specs resolved from a card reach here
        raise ModelError(f"'{spec.name}' is not a Keras Applications backbone.")
    ctor = getattr(keras.applications, card.constructor)
    kwargs: dict[str, Any] = {
        "include_top": False,
        "input_shape": (image_size, image_size, 3),
        "pooling": "avg",
    }
    if card.alpha is not None and alpha is not None:
        kwargs["alpha"] = alpha
    if weights == "none":
        kwargs["weights"] = None
    elif weights == "imagenet":
        kwargs["weights"] = "imagenet"
    else:
        path = bundled_weights_path(spec, alpha) if weights == "bundled" else Path(weights)
        if not path.is_file():
            raise ModelError(f"weights file '{path}' does not exist. Pass --weights imagenet, none, bundled or a file.")
        kwargs["weights"] = None
        base = ctor(**kwargs)
        try:
            base.load_weights(str(path))
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError variously
            raise ModelError(
                f"cannot load weights '{path}' into {spec.name}"
                f"{f' alpha {alpha}' if alpha else ''}: {first_line(exc)}. "
                "The file must hold weights of this backbone built with include_top=False."
            ) from None
        return base
    try:
        return ctor(**kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise ModelError(
                f"cannot download ImageNet weights for {spec.name} ({first_line(exc)}). On an offline machine "
                f"pass --weights PATH to a local weights file, or put the file in the Keras cache "
                f"({keras_cache_dir()})."
            ) from None
        raise ModelError(f"cannot build {spec.name}: {first_line(exc)}") from None


def _build_hub(handle: str) -> Any:
    import keras

    local = Path(handle)
    if local.exists():
        folder = str(local.resolve())
    else:
        try:
            import tensorflow_hub as hub

            folder = hub.resolve(handle)
        except Exception as exc:
            raise ModelError(
                f"cannot fetch TF-Hub handle '{handle}' ({first_line(exc)}). Offline, download the SavedModel "
                "elsewhere and pass hub:/path/to/folder."
            ) from None
    return _tfsm_layer(folder, keras)


def _tfsm_layer(folder: str, keras: Any) -> Any:
    if not (Path(folder) / "saved_model.pb").is_file():
        raise ModelError(f"'{folder}' is not a SavedModel folder (no saved_model.pb). Pass a SavedModel folder.")
    try:
        return keras.layers.TFSMLayer(folder, call_endpoint="serving_default", trainable=False, name="hub_base")
    except Exception as exc:
        raise ModelError(f"cannot load SavedModel '{folder}': {first_line(exc)}") from None


def check_keras_archive(path: str | Path, what: str, fix: str) -> None:
    """Refuse a .keras file that is not a zip archive (garbage, truncated, another format) in one line.

    Keras reports such a file as "File not found", which sends the user looking for a file that is there.

    Raises:
        ModelError: the file is missing or not a zip archive; the message ends with `fix`.
    """
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{what} '{p}' does not exist. {fix}")
    if not zipfile.is_zipfile(p):
        raise ModelError(f"{what} '{p}' is damaged or not a Keras file (a .keras file is a zip archive; this one "
                         f"is not, {p.stat().st_size} bytes). {fix}")


def _build_from_file(path: Path, image_size: int) -> Any:
    import keras

    if path.is_dir():
        return _tfsm_layer(str(path), keras)
    if path.suffix != ".keras":
        raise ModelError(f"backbone file '{path}' is not a .keras file or SavedModel folder.")
    check_keras_archive(path, "backbone file", "Pass a .keras model saved by Keras 3 (model.save('base.keras')).")
    try:
        model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelError(f"cannot load backbone '{path}': {first_line(exc)}") from None
    shape = tuple(model.input_shape[1:3])
    if None not in shape and shape != (image_size, image_size):
        raise UsageError(
            f"backbone '{path.name}' takes {shape[0]}x{shape[1]} images, not {image_size}. "
            f"Pass --image-size {shape[0]}."
        )
    return model


# --- KerasHub presets ---------------------------------------------------------------------------------------

_REMOTE_SCHEMES = ("kaggle://", "hf://")
_PRESET_CONFIG = "config.json"  # the backbone's class and config, in every preset folder
_PRESET_CONVERTER = "image_converter.json"  # written with an image task (ImageClassifier.save_to_preset)


def _offline_hint(handle: str) -> str:
    return (f"Offline, save the preset on a machine with network (keras_hub.models.ImageClassifier.from_preset("
            f"'{handle}').save_to_preset('DIR')), copy DIR here and pass --backbone kerashub:DIR.")


def read_preset(handle: str) -> Preset:
    """What a KerasHub preset says about its input: image size and its converter's normalisation.

    A local folder is read as JSON (no TensorFlow); other handles import keras_hub and fetch the converter.

    Raises:
        ModelError: the folder is not a preset, the name is unknown, or the preset cannot be fetched.
    """
    import json

    local = Path(handle).expanduser()
    if local.is_dir():
        if not (local / _PRESET_CONFIG).is_file():
            raise ModelError(f"'{handle}' is not a KerasHub preset folder (no {_PRESET_CONFIG}). Pass a folder "
                             f"written by save_to_preset, or one of: {PRESET_FORMS}.")
        try:
            config = json.loads((local / _PRESET_CONFIG).read_text()).get("config") or {}
            conv_file = local / _PRESET_CONVERTER
            converter = json.loads(conv_file.read_text()).get("config") if conv_file.is_file() else None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read KerasHub preset '{handle}': {first_line(exc)}") from None
        return _preset_from(str(local.resolve()), config, converter)
    if "/" in handle and not handle.startswith(_REMOTE_SCHEMES):
        raise ModelError(f"KerasHub preset folder '{handle}' does not exist. Allowed: {PRESET_FORMS}.")
    keras_hub = _import_keras_hub()
    if "://" not in handle:
        names = keras_hub.models.Backbone.presets
        if handle not in names:
            images = list(keras_hub.models.ImageClassifier.presets)
            raise ModelError(f"unknown KerasHub preset '{handle}'.{did_you_mean(handle, images)} Image presets "
                             f"include {', '.join(images[:4])}... (keras_hub.models.ImageClassifier.presets); "
                             f"allowed: {PRESET_FORMS}.")
    try:
        conv = keras_hub.layers.ImageConverter.from_preset(handle)
        converter = {"scale": conv.scale, "offset": conv.offset, "image_size": conv.image_size}
    except FileNotFoundError:  # a backbone-only preset: no converter to read
        converter = None
    except Exception as exc:  # kagglehub and huggingface_hub raise their own kinds
        raise ModelError(f"cannot fetch KerasHub preset '{handle}' ({first_line(exc)}). {_offline_hint(handle)}") \
            from None
    return _preset_from(handle, {}, converter)


def _preset_from(handle: str, config: dict[str, Any], converter: dict[str, Any] | None) -> Preset:
    shape = config.get("image_shape") or [None, None, 3]
    fixed = shape[0] if shape and shape[0] is not None and shape[0] == shape[1] else None
    size = fixed
    mean = std = None
    if converter is not None:
        conv_size = converter.get("image_size")
        if size is None and conv_size and conv_size[0] and conv_size[0] == conv_size[1]:
            size = int(conv_size[0])
        mean, std = _converter_normalization(handle, converter)
    return Preset(handle=handle, image_size=size, fixed_size=fixed is not None, mean=mean, std=std)


def _converter_normalization(handle: str, converter: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The converter's x * scale + offset as (x - mean) / std per channel, in 0..255 units."""
    scale, offset = converter.get("scale"), converter.get("offset")
    if "mean" in converter and "variance" in converter:  # KerasHub's older converter arguments
        std0 = [v ** 0.5 for v in converter["variance"]]
        base = 1.0 if scale is None else scale
        scale = [base / s for s in std0]
        offset = [-m / s for m, s in zip(converter["mean"], std0, strict=True)]

    def per_channel(v: Any, default: float) -> list[float]:
        if v is None:
            return [default] * 3
        vals = [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if len(vals) == 1:
            return vals * 3
        if len(vals) != 3:
            raise ModelError(f"KerasHub preset '{handle}' has a converter with {len(vals)} channels; edgetl takes "
                             "RGB images (3 channels).")
        return vals

    s, o = per_channel(scale, 1.0), per_channel(offset, 0.0)
    if any(x == 0 for x in s):
        raise ModelError(f"KerasHub preset '{handle}' has an image converter with a zero scale; it is not usable.")
    return [-oc / sc for sc, oc in zip(s, o, strict=True)], [1.0 / sc for sc in s]


def preset_mode(preset: Preset) -> str:
    """The preprocessing mode equal to the preset's converter ("preset" when no named mode is)."""
    if preset.mean is None or preset.std is None:
        log.warning("KerasHub preset '%s' has no image converter (a backbone saved alone): its input is taken as "
                    "pixels 0..255 as they are. Pass --preprocessing if it expects otherwise.", preset.handle)
        return "none"
    named = {
        "none": ([0.0] * 3, [1.0] * 3),
        "unit": ([0.0] * 3, [255.0] * 3),
        "tf": ([127.5] * 3, [127.5] * 3),
        "torch": (list(IMAGENET_MEAN_RGB), list(IMAGENET_STD_RGB)),
    }
    for mode, (mean, std) in named.items():
        if all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(preset.mean + preset.std, mean + std,
                                                                     strict=True)):
            return mode
    return "preset"


def _import_keras_hub() -> Any:
    try:
        import keras_hub
    except ImportError as exc:
        raise ModelError(f"--backbone kerashub: needs the keras-hub package ({first_line(exc)}). "
                         "Install it: pip install 'keras-hub>=0.32,<0.33'.") from None
    return keras_hub


def _build_preset(handle: str, *, weights: str, image_size: int) -> Any:
    """The image backbone of a KerasHub preset (its own weights unless weights is "none" or a file)."""
    import keras

    keras_hub = _import_keras_hub()
    if weights == "bundled":
        raise UsageError("--weights bundled has no KerasHub preset; use --weights imagenet (the preset's own), none "
                         "or a weights file.")
    try:
        backbone = keras_hub.models.Backbone.from_preset(handle, load_weights=weights == "imagenet")
    except Exception as exc:
        remote = not Path(handle).is_dir()
        raise ModelError(f"cannot load KerasHub preset '{handle}' ({first_line(exc)})."
                         f"{' ' + _offline_hint(handle) if remote else ''}") from None
    inputs = backbone.inputs
    shape = tuple(inputs[0].shape) if len(inputs) == 1 else ()
    if len(shape) != 4 or shape[-1] != 3:
        raise ModelError(f"KerasHub preset '{handle}' is a {type(backbone).__name__}, not an image backbone (it takes "
                         f"{', '.join(str(tuple(i.shape)) for i in inputs)}). Pass an image preset, e.g. one of "
                         "keras_hub.models.ImageClassifier.presets.")
    if None not in shape[1:3] and shape[1:3] != (image_size, image_size):
        raise UsageError(f"KerasHub preset '{handle}' takes {shape[1]}x{shape[2]} images, not {image_size}. "
                         f"Pass --image-size {shape[1]}.")
    if weights not in ("imagenet", "none"):
        try:
            backbone.load_weights(weights)
        except Exception as exc:
            raise ModelError(f"cannot load weights '{weights}' into KerasHub preset '{handle}': {first_line(exc)}. "
                             "The file must hold weights of this backbone (backbone.save_weights).") from None
    if not isinstance(backbone, keras.Model):
        raise ModelError(f"KerasHub preset '{handle}' did not give a Keras model.")
    return backbone
