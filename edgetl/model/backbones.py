"""Backbone cards and frozen bases: Keras Applications, TF-Hub handles, a user's own model."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.errors import ModelError, UsageError, did_you_mean, first_line

log = logging.getLogger("edgetl")

PREPROCESSING_MODES = ("tf", "torch", "caffe", "unit", "none")
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
class BackboneSpec:
    """A resolved --backbone value."""

    kind: str  # "keras" (a card), "hub" (TF-Hub handle), "file" (.keras file or SavedModel folder)
    name: str  # card name, hub handle, or path
    card: Card | None = None

    @property
    def default_size(self) -> int:
        return self.card.default_size if self.card else 224

    @property
    def min_size(self) -> int:
        return self.card.min_size if self.card else 1

    @property
    def default_preprocessing(self) -> str:
        if self.card:
            return self.card.preprocessing
        # TF-Hub image modules take floats in [0, 1] by convention; a user's own model is taken as is.
        return "unit" if self.kind == "hub" else "none"


def resolve_backbone(value: str) -> BackboneSpec:
    """Turn a --backbone value into a spec: a card name, hub:HANDLE, or a path."""
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


def build_base(spec: BackboneSpec, *, weights: str, alpha: float | None, image_size: int) -> Any:
    """Build the frozen base: a Keras model or layer from RGB-preprocessed images to features.

    Args:
        spec: the resolved backbone.
        weights: "imagenet", "none", "bundled", or a path to a weights file.
        alpha: width multiplier (MobileNet family) or None.
        image_size: square input size in pixels.

    Returns:
        A Keras model (cards, .keras files) or a TFSMLayer (TF-Hub, SavedModel), not trainable.

    Raises:
        ModelError: the weights cannot be downloaded or loaded, or the file is not a model.
    """
    if spec.kind == "keras":
        base = _build_application(spec, weights=weights, alpha=alpha, image_size=image_size)
    elif spec.kind == "hub":
        base = _build_hub(spec.name)
    else:
        base = _build_from_file(Path(spec.name), image_size)
    base.trainable = False
    return base


def _build_application(spec: BackboneSpec, *, weights: str, alpha: float | None, image_size: int) -> Any:
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


def _build_from_file(path: Path, image_size: int) -> Any:
    import keras

    if path.is_dir():
        return _tfsm_layer(str(path), keras)
    if path.suffix != ".keras":
        raise ModelError(f"backbone file '{path}' is not a .keras file or SavedModel folder.")
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
