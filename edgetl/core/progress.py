"""How library code reports progress without printing: the CLI passes a Reporter."""

from __future__ import annotations

from typing import Any


class Reporter:
    """Receives progress events; this base class ignores them all (library and test use)."""

    def start(self, task: str, total: int | None) -> None:
        """A long step begins (one at a time); `total` units are expected (None: unknown)."""

    def advance(self, units: int = 1) -> None:
        """`units` more of the current task are done."""

    def finish(self) -> None:
        """The current task is over."""

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, Any]) -> None:
        """An epoch ended with these logs (loss, accuracy, val_loss, val_accuracy)."""

    def info(self, message: str) -> None:
        """A line worth showing the user."""


def keras_callback(reporter: Reporter, stage: str, epochs: int, steps: int | None) -> Any:
    """A Keras callback that forwards batch and epoch progress to a Reporter."""
    import keras

    class _Forward(keras.callbacks.Callback):
        done = 0  # steps of this epoch reported

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.done = 0
            reporter.start(f"{stage} epoch {epoch + 1}/{epochs}", steps)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            # `batch` is the call's last step under steps_per_execution (several steps a call), counted as if the
            # call were whole: the epoch's last one may end before it.
            end = batch + 1 if steps is None else min(batch + 1, steps)
            if end > self.done:
                reporter.advance(end - self.done)
                self.done = end

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            reporter.finish()
            reporter.epoch(stage, epoch + 1, epochs, {k: float(v) for k, v in (logs or {}).items()})

    return _Forward()
