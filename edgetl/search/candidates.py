"""The candidates of a search: backbone x width x input size, parsed, defaulted per target, and their weights.

A candidate is written `BACKBONE[:ALPHA]@SIZE` (`mobilenet_v2:0.35@96`). Weights come from a folder of
Keras' own weight files (`--weights-dir`, by default Keras' cache), named as Keras names them, so the
files a user already downloaded (or copied to an offline machine) are found without configuration.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgetl.core.errors import UsageError, did_you_mean
from edgetl.model.backbones import Card, cards, keras_cache_dir, models_dir

log = logging.getLogger("edgetl")

WEIGHT_SOURCES = ("imagenet", "none", "bundled")  # besides --weights-dir
# The default candidates per target, from the backbone cards: MobileNetV2 (int8 "good with per-channel
# weights" on its card, the only family every target here runs well) at its smallest width and at 1.0,
# at the input sizes Keras has ImageNet files for up to the card's default size. A microcontroller gets
# the smallest width at the two smallest sizes, and MobileNet (v1) at its smallest width: the classic
# MCU models (a few hundred KB of int8 weights).
DEFAULT_SIZES = (96, 128, 160, 224)
MCU_SIZES = (96, 128)


@dataclass(frozen=True)
class Candidate:
    """One model to try: a backbone card, its width multiplier (None: the card has none) and input size."""

    backbone: str
    alpha: float | None
    image_size: int

    @property
    def key(self) -> str:
        """How the candidate is written: BACKBONE[:ALPHA]@SIZE."""
        alpha = f":{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.backbone}{alpha}@{self.image_size}"

    @property
    def slug(self) -> str:
        """A file-name-safe form of the key (mobilenet_v2_a0.35-96), as exported file names spell it."""
        alpha = f"_a{self.alpha:g}" if self.alpha is not None else ""
        return f"{self.backbone}{alpha}-{self.image_size}"

    @property
    def card(self) -> Card:
        return cards()[self.backbone]


_ITEM = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(?::\s*([0-9.]+))?\s*@\s*([0-9]+)\s*$")


def parse_item(text: str, where: str = "--candidates") -> Candidate:
    """One `BACKBONE[:ALPHA]@SIZE` item, checked against the backbone cards.

    Raises:
        UsageError: the item is malformed, the backbone unknown, the width or size not allowed.
    """
    m = _ITEM.match(str(text))
    if not m:
        raise UsageError(f"{where} item '{text}' is not BACKBONE[:ALPHA]@SIZE. Write it like "
                         "mobilenet_v2:0.35@96 or efficientnet_b0@224.")
    name, alpha_text, size_text = m.groups()
    return make(name, float(alpha_text) if alpha_text else None, int(size_text), where)


def make(name: str, alpha: float | None, size: int, where: str = "--candidates") -> Candidate:
    """A checked Candidate (an alpha-less item of a width family takes alpha 1.0)."""
    all_cards = cards()
    if name not in all_cards:
        raise UsageError(f"{where}: unknown backbone '{name}'.{did_you_mean(name, all_cards)} "
                         f"Allowed: {', '.join(all_cards)} (see 'edgetl backbones').")
    card = all_cards[name]
    if card.alpha is None and alpha is not None:
        raise UsageError(f"{where}: {name} has no width multiplier; drop ':{alpha:g}' (widths exist for "
                         f"{', '.join(n for n, c in all_cards.items() if c.alpha)}).")
    if card.alpha is not None:
        alpha = 1.0 if alpha is None else alpha
        if alpha not in card.alpha:
            raise UsageError(f"{where}: {name} has no width {alpha:g}. Allowed: "
                             f"{', '.join(f'{a:g}' for a in card.alpha)}.")
    if not card.min_size <= size <= 1024:
        raise UsageError(f"{where}: size {size} of {name} is out of range. Use {card.min_size}..1024 (its "
                         f"default is {card.default_size}).")
    return Candidate(name, alpha, size)


def parse_candidates(value: str) -> list[Candidate]:
    """A comma list of BACKBONE[:ALPHA]@SIZE items, or a YAML file of them (duplicates dropped, order kept).

    The YAML file is a list of items, or a mapping with a `candidates:` list; an item is a string or a
    mapping {backbone, alpha, image_size}.

    Raises:
        UsageError: the file cannot be read, or an item is not allowed.
    """
    text = value.strip()
    if text.endswith((".yaml", ".yml")) or (os.sep in text and Path(text).exists()):
        items = _read_yaml(Path(text))
    else:
        items = [parse_item(part) for part in text.split(",") if part.strip()]
    if not items:
        raise UsageError(f"--candidates '{value}' names no candidate. Pass items like mobilenet_v2:0.35@96.")
    return list(dict.fromkeys(items))


def _read_yaml(path: Path) -> list[Candidate]:
    import yaml

    where = f"candidates file '{path}'"
    if not path.is_file():
        raise UsageError(f"{where} does not exist. Pass a YAML file or a comma list such as mobilenet_v2:0.35@96.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{where} cannot be read as YAML ({type(exc).__name__}). Fix the file.") from None
    if isinstance(raw, dict):
        raw = raw.get("candidates")
    if not isinstance(raw, list):
        raise UsageError(f"{where} must hold a list of candidates (or 'candidates:' with one), e.g. "
                         "- mobilenet_v2:0.35@96.")
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append(parse_item(item, where))
        elif isinstance(item, dict) and "backbone" in item and "image_size" in item:
            unknown = set(item) - {"backbone", "alpha", "image_size"}
            if unknown:
                raise UsageError(f"{where}: unknown key '{sorted(unknown)[0]}'. Allowed: backbone, alpha, image_size.")
            try:
                alpha = None if item.get("alpha") is None else float(item["alpha"])
                size = int(item["image_size"])
            except (TypeError, ValueError):
                raise UsageError(f"{where}: item {item} needs a number for alpha and image_size.") from None
            out.append(make(str(item["backbone"]), alpha, size, where))
        else:
            raise UsageError(f"{where}: item {item!r} is neither BACKBONE[:ALPHA]@SIZE nor a mapping with "
                             "backbone and image_size.")
    return out


def default_candidates(target: str) -> list[Candidate]:
    """The candidates searched when --candidates is not given (see DEFAULT_SIZES above)."""
    v2 = cards()["mobilenet_v2"]
    widths = v2.alpha or [1.0]
    if target == "mcu":
        v1 = cards()["mobilenet"]
        return [make("mobilenet_v2", min(widths), s) for s in MCU_SIZES] + \
               [make("mobilenet", min(v1.alpha or [1.0]), s) for s in MCU_SIZES]
    sizes = [s for s in DEFAULT_SIZES if v2.min_size <= s <= v2.default_size]
    return [make("mobilenet_v2", a, s) for a in (min(widths), 1.0) for s in sizes]


# --- weights --------------------------------------------------------------------------------------------------

# Keras' file names (keras.applications, include_top=False) for the cards without size variants.
_FIXED_NAMES = {
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19": "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "resnet50_v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "inception_v3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "xception": "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "efficientnet_b0": "efficientnetb0_notop.h5",
    "efficientnet_b1": "efficientnetb1_notop.h5",
    "efficientnet_b2": "efficientnetb2_notop.h5",
    "efficientnet_b3": "efficientnetb3_notop.h5",
    "efficientnet_v2_b0": "efficientnetv2-b0_notop.h5",
    "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "convnext_tiny": "convnext_tiny_notop.h5",
}
# Sizes Keras publishes separately trained files for; the files load at any other size too.
_SIZED = {"mobilenet": (128, 160, 192, 224), "mobilenet_v2": (96, 128, 160, 192, 224)}
_MOBILENET_V1_ALPHA = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}


def keras_file_name(c: Candidate, size: int | None = None) -> str | None:
    """The name Keras gives the candidate's ImageNet no-top weights at `size` (default: its own), or None."""
    size = size or c.image_size
    if c.backbone == "mobilenet_v2":
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(c.alpha or 1.0)}_{size}_no_top.h5"
    if c.backbone == "mobilenet":
        return f"mobilenet_{_MOBILENET_V1_ALPHA.get(c.alpha or 1.0, '2_5')}_{size}_tf_no_top.h5"
    if c.backbone in ("mobilenet_v3_small", "mobilenet_v3_large"):
        kind = c.backbone.rsplit("_", 1)[1]
        return f"weights_mobilenet_v3_{kind}_224_{c.alpha or 1.0}_float_no_top_v2.h5"
    return _FIXED_NAMES.get(c.backbone)


@dataclass(frozen=True)
class Weights:
    """Where a candidate's weights come from: `value` is what build_base takes (a path, imagenet, none, bundled)."""

    value: str
    note: str = ""  # said to the user: the nearest size's file was used, ...
    identity: str = ""  # what a cached result depends on (file name, size and mtime; or the source)

    @property
    def is_file(self) -> bool:
        return self.value not in WEIGHT_SOURCES


def find_weights(c: Candidate, source: str, weights_dir: str | None) -> Weights | None:
    """The weights of a candidate, or None when there are none (the caller skips it with one line).

    Args:
        source: imagenet (a weights folder, by default Keras' cache; Keras downloads what is missing when
            no --weights-dir is given), none (random) or bundled (shipped with edgetl).
        weights_dir: the folder of Keras' weight files (None: Keras' cache).
    """
    if source == "none":
        return Weights("none", identity="none")
    if source == "bundled":
        key = str(c.alpha) if c.alpha is not None else "1.0"
        name = c.card.bundled_weights.get(key)
        if name is None:
            return None
        return _file_weights(models_dir() / name, "")
    folder = Path(weights_dir) if weights_dir else Path(keras_cache_dir())
    exact = keras_file_name(c)
    if exact is None:
        return None
    if (folder / exact).is_file():
        return _file_weights(folder / exact, "")
    nearest = _nearest_sized(c, folder)
    if nearest is not None:
        size, path = nearest
        return _file_weights(path, f"{c.key}: no {c.image_size}-pixel weights in '{folder}'; using the {size}-pixel "
                                   f"file {path.name} (Keras' MobileNet files load at any size)")
    if weights_dir is None:
        # Not in Keras' cache: Keras downloads it (and fails with one line on an offline machine).
        return Weights("imagenet", identity=f"imagenet:{exact}")
    return None


def _nearest_sized(c: Candidate, folder: Path) -> tuple[int, Path] | None:
    sizes = sorted(_SIZED.get(c.backbone, ()), key=lambda s: (abs(s - c.image_size), -s))
    for s in sizes:
        name = keras_file_name(c, s)
        if name and (folder / name).is_file():
            return s, folder / name
    return None


def _file_weights(path: Path, note: str) -> Weights:
    st = path.stat()
    return Weights(str(path.resolve()), note, f"{path.name}:{st.st_size}:{st.st_mtime_ns}")


def digest(parts: Iterable[object]) -> str:
    """A short stable hash of values: names cached files and keys trials."""
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:12]
