"""history.csv while training: one row per epoch, flushed to disk as each epoch ends."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.rundir import HISTORY_COLUMNS, write_history

if TYPE_CHECKING:
    import keras


class History:
    """The epochs trained so far, mirrored in history.csv."""

    def __init__(self, path: Path, keep_rows: int | None = None) -> None:
        """Start a new history, or (resuming) keep the first `keep_rows` rows: the checkpointed epochs."""
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_rows is not None and path.is_file():
            with open(path, newline="") as f:
                self.rows = list(csv.DictReader(f))[:keep_rows]
        # Rewritten whole (atomically): rows of epochs after the last checkpoint are dropped, never duplicated.
        write_history(path, self.rows)

    def count(self, stage: str) -> int:
        """Epochs recorded for `stage` ("head" or "fine_tune")."""
        return sum(1 for r in self.rows if r["stage"] == stage)

    def callback(self, stage: str, lr: float) -> keras.callbacks.Callback:
        """A Keras callback that appends a row (losses, accuracies, lr, seconds) after each epoch."""
        import keras

        outer = self

        class _Row(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                row = {"stage": stage, "epoch": len(outer.rows) + 1, "lr": lr,
                       "seconds": round(time.perf_counter() - self.t, 3)}
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    row[key] = round(float(logs[key]), 6) if key in logs else ""
                outer.append(row)

        return _Row()

    def append(self, row: dict[str, Any]) -> None:
        """Add one row and make it durable: an interrupted run keeps every epoch it finished."""
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, HISTORY_COLUMNS).writerow(row)
            f.flush()
            os.fsync(f.fileno())
