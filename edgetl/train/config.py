"""Options of each stage as dataclasses; YAML recipes; defaults < recipe < flags."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgetl.core.errors import UsageError, did_you_mean
from edgetl.train.class_weights import check_option as check_class_weights

# auto: run the frozen base once when that is exact, on the engine the cost model picks (edgetl.train.engine);
# keras / tflite: the same, on that engine; off: never.
FEATURE_CACHE_MODES = ("auto", "keras", "tflite", "off")


@dataclass(frozen=True)
class TrainConfig:
    """Every option of `edgetl train`, each with its one default."""

    data: str = ""
    backbone: str = "mobilenet_v2"
    weights: str = "imagenet"  # imagenet | none | bundled | PATH
    alpha: float | None = None  # width multiplier, MobileNet family only
    image_size: int | None = None  # None: the backbone card's default size
    preprocessing: str | None = None  # None: the backbone card's mode
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    dropout: float = 0.2
    val_split: float = 0.2
    test_split: float = 0.1
    augment: bool = False
    fine_tune_layers: str | None = None  # N (top N layers of the base) or "all"; None: no second stage
    fine_tune_lr: float = 1e-5
    fine_tune_epochs: int = 5
    patience: int = 3  # early stopping on val loss, in epochs
    feature_cache: str = "auto"  # FEATURE_CACHE_MODES: auto | keras | tflite | off
    max_bad_fraction: float = 0.05
    seed: int = 42
    strategy: str = "auto"  # auto | default | mirrored | multiworker (tf.distribute)
    mixed_precision: str = "auto"  # auto: mixed_float16 on GPUs of compute capability >= 7.0
    xla: bool = False  # jit-compile the training steps
    class_weights: str | None = None  # auto | none | FILE.yaml; None: auto when the largest class > 3x the smallest
    label_smoothing: float = 0.0  # 0 <= x < 1: targets (1 - x) on the class, x spread over all classes
    tensorboard: bool = False  # Keras TensorBoard logs under RUN/logs/<stage>
    output: str | None = None  # None: runs/<backbone>-<time>
    force: bool = False

    def validate(self) -> TrainConfig:
        """Reject impossible values with one clear line each; return self."""
        # The head starts random: a run with no head epoch would look complete and answer at chance.
        _positive_int(self.epochs, "--epochs", 1)
        _positive_int(self.batch_size, "--batch-size", 1)
        _positive_int(self.fine_tune_epochs, "--fine-tune-epochs", 0)
        if self.fine_tune_layers is not None and self.fine_tune_epochs == 0:
            raise UsageError(f"--fine-tune-layers {self.fine_tune_layers} with --fine-tune-epochs 0 fine-tunes "
                             "nothing. Give --fine-tune-epochs 1 or more, or drop --fine-tune-layers.")
        _positive_int(self.patience, "--patience", 0)
        if self.image_size is not None:
            _positive_int(self.image_size, "--image-size", 1)
        for name, value in (("--lr", self.lr), ("--fine-tune-lr", self.fine_tune_lr)):
            if not 0 < value <= 10:
                raise UsageError(f"{name} {value} is out of range. Use a positive learning rate such as 1e-3.")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"--dropout {self.dropout} is out of range. Use 0 <= dropout < 1, e.g. 0.2.")
        for name, value in (("--val-split", self.val_split), ("--test-split", self.test_split)):
            if not 0 <= value < 1:
                raise UsageError(f"{name} {value} is out of range. Use a fraction 0 <= x < 1, e.g. 0.2.")
        if self.val_split + self.test_split >= 0.9:
            raise UsageError(
                f"--val-split {self.val_split} + --test-split {self.test_split} leave too little to train on. "
                "Keep their sum below 0.9."
            )
        if not 0 <= self.seed <= 2**32 - 1:
            # TensorFlow and numpy take 32-bit unsigned seeds; a negative one failed deep inside training.
            raise UsageError(f"--seed {self.seed} is out of range. Use an integer 0..{2**32 - 1}, e.g. 42.")
        if not 0 <= self.max_bad_fraction <= 1:
            raise UsageError(f"--max-bad-fraction {self.max_bad_fraction} is out of range. Use 0..1, e.g. 0.05.")
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise UsageError(f"--feature-cache '{self.feature_cache}' is not allowed. "
                             f"Use {', '.join(FEATURE_CACHE_MODES)}.")
        if self.strategy not in ("auto", "default", "mirrored", "multiworker"):
            raise UsageError(f"--strategy '{self.strategy}' is not allowed. "
                             "Use auto, default, mirrored or multiworker.")
        if self.mixed_precision not in ("auto", "on", "off"):
            raise UsageError(f"--mixed-precision '{self.mixed_precision}' is not allowed. Use auto, on or off.")
        if not 0 <= self.label_smoothing < 1:
            raise UsageError(f"--label-smoothing {self.label_smoothing} is out of range. Use 0 <= x < 1, e.g. 0.1.")
        check_class_weights(self.class_weights)
        if self.fine_tune_layers is not None:
            ftl = str(self.fine_tune_layers)
            if ftl != "all" and not (ftl.isdigit() and int(ftl) > 0):
                raise UsageError(f"--fine-tune-layers '{ftl}' is not allowed. "
                                 "Use a positive number of layers or 'all'.")
        return self


def _positive_int(value: int, name: str, minimum: int) -> None:
    if value < minimum or value > 1_000_000:
        raise UsageError(f"{name} {value} is out of range. Use an integer of at least {minimum}.")


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a plain dict (keys with - or _ both accepted)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise UsageError(f"recipe '{path}' is a folder. Pass a YAML file to --config.")
    if not p.is_file():
        raise UsageError(f"recipe '{path}' does not exist. Pass a YAML file to --config.")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"recipe '{path}' cannot be read ({exc.strerror or exc}). Check its permissions.") from None
    except UnicodeDecodeError:
        raise UsageError(f"recipe '{path}' is not UTF-8 text. Save it as UTF-8 YAML or remove --config.") from None
    try:
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise UsageError(f"recipe '{path}' is not valid YAML{at}. Fix the file or remove --config.") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"recipe '{path}' must be a mapping of option: value, not a {type(raw).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def merge(cls: type, recipe: dict[str, Any], flags: dict[str, Any], source: str = "recipe") -> Any:
    """Build a config: dataclass defaults, then the recipe's keys, then flags that were given (not None)."""
    names = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in recipe.items():
        if key not in names:
            raise UsageError(
                f"unknown key '{key}' in {source}.{did_you_mean(key, names)} "
                f"Allowed keys: {', '.join(n for n in names if n not in ('force',))}."
            )
        values[key] = coerce(cls, key, value, source)
    for key, value in flags.items():
        if value is not None:
            values[key] = value
    return dataclasses.replace(cls(), **values)


def coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """Check a recipe value against the field's type; ints are accepted for floats."""
    allowed = _types_of(typing.get_type_hints(cls)[name])
    if value is None and type(None) in allowed:
        return None
    if bool in allowed and isinstance(value, bool):
        return value
    if int in allowed and isinstance(value, int) and not isinstance(value, bool):
        return value
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # a YAML integer with hundreds of digits
            raise UsageError(f"key '{name}' in {source} is too large ({str(value)[:20]}...). "
                             "Fix the value in the recipe.") from None
    if str in allowed and isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    names = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise UsageError(f"key '{name}' in {source} must be {names}, got {value!r}. Fix the value in the recipe.")


def _types_of(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_args(hint))
    return (hint,)


def as_dict(config: Any) -> dict[str, Any]:
    """A config as a plain dict (for manifests)."""
    return dataclasses.asdict(config)


