"""Class weights for imbalanced folders (--class-weights auto|none|FILE.yaml) and the warnings about them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.core.errors import UsageError, did_you_mean

log = logging.getLogger("edgetl")

CLASS_WEIGHT_MODES = ("auto", "none")  # or the path of a YAML file {class name: weight}
AUTO_RATIO = 3.0  # without --class-weights, weights are on when the largest class is more than this x the smallest
WARN_RATIO = 10.0  # a warning names the classes when the imbalance exceeds this
WARN_MIN_IMAGES = 10  # ... or when a class has fewer training images than this


@dataclass(frozen=True)
class ClassWeights:
    """The weights a run trains with (None: unweighted) and why."""

    weights: list[float] | None  # in label order
    source: str  # "auto", "auto (default: ...)", "none", "file PATH"

    def keras(self) -> dict[int, float] | None:
        """As Keras' fit(class_weight=...) takes them."""
        return {i: w for i, w in enumerate(self.weights)} if self.weights else None

    def to_manifest(self, class_names: Sequence[str]) -> dict[str, Any]:
        weights = dict(zip(class_names, self.weights, strict=True)) if self.weights else None
        return {"source": self.source, "weights": weights}


def from_manifest(entry: dict[str, Any] | None, class_names: Sequence[str]) -> ClassWeights:
    """The weights a run recorded (a resumed run keeps them); a run from before class weights trained without."""
    if not entry:
        return ClassWeights(None, "none (the run started without class weights)")
    weights = entry.get("weights")
    return ClassWeights([float(weights[n]) for n in class_names] if weights else None, str(entry.get("source")))


def check_option(value: str | None) -> None:
    """Reject a --class-weights value that is neither a mode nor an existing YAML file, before any work."""
    if value is None or value in CLASS_WEIGHT_MODES:
        return
    p = Path(value)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        raise UsageError(f"--class-weights '{value}' is neither auto, none nor an existing .yaml file. Pass one of "
                         "those; a file maps class names to weights, e.g. 'cats: 2.0'.")
    _read(p)  # a damaged file fails here, before a run folder exists


def _read(path: Path) -> dict[Any, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"--class-weights file '{path}' cannot be read ({type(exc).__name__}). Write it as YAML: "
                         "class name: weight, one a line.") from None
    if not isinstance(raw, dict):
        raise UsageError(f"--class-weights file '{path}' must map class names to weights (e.g. 'cats: 2.0').")
    return raw


def inverse_frequency(counts: Sequence[int]) -> list[float]:
    """n / (classes * n_c): rarer classes weigh more, and the weights average 1 over the training images."""
    total, k = sum(counts), len(counts)
    return [total / (k * c) if c else 0.0 for c in counts]


def resolve(value: str | None, counts: Sequence[int], class_names: Sequence[str]) -> ClassWeights:
    """The class weights for --class-weights `value` (None: auto when the imbalance exceeds AUTO_RATIO).

    Args:
        value: None, "auto", "none" or the path of a YAML file {class name: weight} (missing classes weigh 1).
        counts: training images per class, in label order.
        class_names: names in label order.

    Raises:
        UsageError: the file cannot be read, names an unknown class, or gives a weight that is not positive.
    """
    present = [c for c in counts if c]
    ratio = max(present) / min(present) if present else 1.0
    if value is None:
        if ratio > AUTO_RATIO:
            big, small = _largest_smallest(counts, class_names)
            log.info("class weights on (inverse frequency): the largest class '%s' has %.1fx the images of the "
                     "smallest '%s' (more than %gx). Pass --class-weights none to train unweighted.",
                     big, ratio, small, AUTO_RATIO)
            return ClassWeights(inverse_frequency(counts), f"auto (default: imbalance {ratio:.1f}x > {AUTO_RATIO:g}x)")
        return ClassWeights(None, f"none (default: imbalance {ratio:.1f}x <= {AUTO_RATIO:g}x)")
    if value == "none":
        return ClassWeights(None, "none")
    if value == "auto":
        return ClassWeights(inverse_frequency(counts), "auto")
    return ClassWeights(_from_file(Path(value), class_names), f"file {value}")


def _from_file(path: Path, class_names: Sequence[str]) -> list[float]:
    check_option(str(path))
    raw = _read(path)
    out = [1.0] * len(class_names)
    for key, weight in raw.items():
        name = str(key)
        if name not in class_names:
            raise UsageError(f"--class-weights file '{path}' names class '{name}', which the data does not have."
                             f"{did_you_mean(name, class_names)} Classes: {', '.join(class_names)}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 1e6:
            raise UsageError(f"--class-weights file '{path}': the weight of '{name}' is {weight!r}. Use a positive "
                             "number.")
        out[list(class_names).index(name)] = float(weight)
    return out


def warn_imbalance(counts: Sequence[int], class_names: Sequence[str]) -> list[str]:
    """Log (and return) a warning naming small classes (< WARN_MIN_IMAGES) and an imbalance above WARN_RATIO."""
    out = []
    small = [f"{n} ({c})" for n, c in zip(class_names, counts, strict=True) if c < WARN_MIN_IMAGES]
    if small:
        out.append(f"{len(small)} class(es) have fewer than {WARN_MIN_IMAGES} training images: {', '.join(small)}. "
                   "Their accuracy will be unreliable; add images to them.")
    present = [c for c in counts if c]
    if present and max(present) > WARN_RATIO * min(present):
        big, little = _largest_smallest(counts, class_names)
        out.append(f"the classes are imbalanced {max(present) / min(present):.1f}x (more than {WARN_RATIO:g}x): "
                   f"'{big}' has {max(present)} training images, '{little}' {min(present)}. Class weights help; "
                   "more images of the small classes help more.")
    for line in out:
        log.warning(line)
    return out


def _largest_smallest(counts: Sequence[int], class_names: Sequence[str]) -> tuple[str, str]:
    present = [(c, n) for c, n in zip(counts, class_names, strict=True) if c]
    # The first of equal classes, in label order.
    return max(present, key=lambda p: p[0])[1], min(present, key=lambda p: p[0])[1]
