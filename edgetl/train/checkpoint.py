"""Per-epoch checkpoints and the feature cache on disk: what `edgetl train --resume` continues from.

Layout inside a run directory (removed when the run completes):
    checkpoints/state.json          the pointer: stage, epochs done, weights file, early-stopping state
    checkpoints/<stage>-<n>.weights.h5   model and optimizer state after epoch n of a stage
    checkpoints/<stage>-best.npz    best weights so far (early stopping keeps them)
    cache/<split>.npy, <split>-labels.npy   features of the frozen base (fast path; edgetl.train.features)
Every file is written atomically and state.json is written last, so a run killed at any instant
(even with SIGKILL) resumes from the last epoch whose files are all complete.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.fileio import atomic_path, write_json

if TYPE_CHECKING:
    import keras

CHECKPOINTS = "checkpoints"
CACHE = "cache"


@dataclass
class State:
    """Where training stands: stage ("head" or "fine_tune"), epochs done in it, files to restore."""

    stage: str = "head"
    epochs_done: int = 0
    weights: str | None = None
    head_done: bool = False
    history_rows: int = 0  # rows of history.csv that belong to completed, checkpointed epochs
    early_stop: dict[str, Any] = field(default_factory=dict)  # wait, best, best_epoch, best_file


class Checkpoints:
    """Reads and writes the checkpoint folder of one run."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / CHECKPOINTS
        self.cache_dir = run_dir / CACHE

    def load(self) -> State:
        """The last complete state, or a fresh one."""
        path = self.dir / "state.json"
        if not path.is_file():
            return State()
        try:
            return State(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return State()

    def save(self, state: State, model: keras.Model | None = None, best: list[np.ndarray] | None = None) -> State:
        """Write the model's weights (with optimizer state) and best weights, then point state.json at them."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if model is not None and state.epochs_done == 0:
            # The start of a stage: plain weights, since the next stage compiles a new optimizer.
            name = f"{state.stage}-start.npz"
            with atomic_path(self.dir / name, suffix=".npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, *model.get_weights())
            state.weights = name
        elif model is not None:
            name = f"{state.stage}-{state.epochs_done}.weights.h5"
            with atomic_path(self.dir / name, suffix=".weights.h5") as tmp:
                model.save_weights(str(tmp))
            state.weights = name
        if best is not None:
            name = f"{state.stage}-best-{state.early_stop.get('best_epoch', 0)}.npz"
            with atomic_path(self.dir / name, suffix=".npz") as tmp, open(tmp, "wb") as f:
                np.savez(f, *best)
            state.early_stop["best_file"] = name
        write_json(self.dir / "state.json", asdict(state))
        self._prune(keep={state.weights, state.early_stop.get("best_file")})
        return state

    def _prune(self, keep: set[str | None]) -> None:
        for p in self.dir.iterdir():
            if p.name != "state.json" and p.name not in keep and not p.name.startswith("."):
                with contextlib.suppress(OSError):
                    p.unlink()

    def restore(self, model: keras.Model, state: State) -> None:
        """Load the state's weights into a compiled model (optimizer variables built first)."""
        if not state.weights:
            return
        if state.weights.endswith(".npz"):
            model.set_weights(self._arrays(self.dir / state.weights))
            return
        if getattr(model, "optimizer", None) is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(str(self.dir / state.weights))

    def best_weights(self, state: State) -> list[np.ndarray] | None:
        name = state.early_stop.get("best_file")
        if not name or not (self.dir / name).is_file():
            return None
        return self._arrays(self.dir / name)

    @staticmethod
    def _arrays(path: Path) -> list[np.ndarray]:
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def load_features(self, split: str) -> tuple[np.ndarray, np.ndarray] | None:
        """A split's cached (features memory-mapped, labels), or None when the pass must compute them."""
        from edgetl.train.features import load_cached

        return load_cached(self.cache_dir, split)

    def remove(self) -> None:
        """A complete run needs neither checkpoints nor cached features."""
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
