"""The options of `edgetl optimize`: one table of methods and defaults, read by the library and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetl.core.errors import UsageError, unknown_choice

METHODS = ("qat", "prune")
SCHEDULES = ("polynomial", "constant")
DEFAULT_LR = {"qat": 1e-4, "prune": 1e-4}
# Pruning needs longer than QAT: half of the weights must be relearned around. Measured on a
# fine-tuned MobileNetV2 0.35 (BENCHMARKS.md, tools/bench_optimize.py): 50% pruning lost 4.2 points
# after 3 epochs and 0.5 after 10; QAT recovered all of its int8 loss in 3.
DEFAULT_EPOCHS = {"qat": 3, "prune": 10}
DEFAULT_SPARSITY = 0.5
DEFAULT_SCHEDULE = "polynomial"
DEFAULT_BATCH_SIZE = 32
DEFAULT_BLOCK = 1
MAX_BLOCK = 64


@dataclass(frozen=True)
class OptimizeOptions:
    """How a run is fine-tuned by `optimize_run`.

    method: "qat" (quantization-aware training) or "prune" (magnitude pruning); see METHODS.
    epochs: fine-tuning epochs on the run's training split; None: DEFAULT_EPOCHS of the method.
    lr: Adam learning rate; None: DEFAULT_LR of the method (small: the model is already trained).
    sparsity: pruning's target fraction of zero weights (DEFAULT_SPARSITY, half).
    schedule: pruning schedule: "polynomial" (0 to sparsity over the first 70% of steps, the default)
        or "constant".
    block: pruning in runs of this many consecutive input channels of 1x1 convolutions and Dense
        layers; DEFAULT_BLOCK (1) is element-wise.
    batch_size: training batch size (DEFAULT_BATCH_SIZE).
    """

    method: str
    epochs: int | None = None
    lr: float | None = None
    sparsity: float = DEFAULT_SPARSITY
    schedule: str = DEFAULT_SCHEDULE
    block: int = DEFAULT_BLOCK
    batch_size: int = DEFAULT_BATCH_SIZE

    def check(self) -> None:
        """Reject bad values before anything is loaded (see check_options)."""
        check_options(self.method, self.epochs, self.lr, self.sparsity, self.schedule, self.batch_size, self.block)

    @property
    def train_epochs(self) -> int:
        """epochs, or the method's default."""
        return int(self.epochs) if self.epochs is not None else DEFAULT_EPOCHS[self.method]

    @property
    def learning_rate(self) -> float:
        """lr, or the method's default."""
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.method]

    def manifest_options(self) -> dict[str, Any]:
        """The options a new run's manifest records under parent.options (pruning's only for pruning)."""
        options: dict[str, Any] = {"epochs": self.train_epochs, "lr": self.learning_rate,
                                   "batch_size": self.batch_size}
        if self.method == "prune":
            options.update({"sparsity": float(self.sparsity), "schedule": self.schedule, "block": int(self.block)})
        return options


def check_options(method: str, epochs: int | None, lr: float | None, sparsity: float, schedule: str,
                  batch_size: int, block: int = DEFAULT_BLOCK) -> None:
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
    if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= MAX_BLOCK:
        raise UsageError(f"--block {block} is out of range. Use 1..{MAX_BLOCK} consecutive input channels "
                         f"(1: element-wise; default {DEFAULT_BLOCK}).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
        raise UsageError(f"--batch-size {batch_size} is out of range. Use 1..4096 (default {DEFAULT_BATCH_SIZE}).")
