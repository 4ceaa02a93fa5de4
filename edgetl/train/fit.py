"""One training stage: compile, fit with early stopping, and checkpoint after every epoch (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.progress import Reporter, keras_callback
from edgetl.train.features import Features, feature_dataset

# Training steps per call of the compiled step function when the head trains on cached features (fit_stage).
HEAD_STEPS_PER_EXECUTION = 8

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from edgetl.train.checkpoint import Checkpoints, State
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import Placement
    from edgetl.train.history import History


def fit_stage(model: keras.Model, train: tf.data.Dataset | Features, val: tf.data.Dataset | Features | None,
              cfg: TrainConfig, lr: float, epochs: int, stage: str, history: History, reporter: Reporter,
              placement: Placement, ckpt: Checkpoints, state: State | None, *,
              class_weight: dict[int, float] | None = None, log_dir: Path | None = None) -> int:
    """Compile and fit with early stopping on val loss (train loss without a val split); best weights kept.

    Each epoch ends with a checkpoint; `state` (from a checkpoint of this stage) resumes after its epoch.
    `train` and `val` are image datasets, or cached (features, labels) for the head alone.
    cfg.label_smoothing smooths the targets; `class_weight` weighs each class's images in the loss;
    `log_dir` receives Keras TensorBoard logs of the stage.

    Returns:
        The epochs of this stage recorded in the history.
    """
    import keras

    if epochs == 0:
        return 0
    smoothing = float(cfg.label_smoothing)
    with placement.strategy.scope():
        if smoothing:  # Keras' sparse loss has no smoothing: the labels become one-hot (see _one_hot below)
            loss: Any = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
            acc: Any = keras.metrics.CategoricalAccuracy(name="accuracy")
        else:
            loss, acc = "sparse_categorical_crossentropy", "accuracy"
        # On cached features a step is one small matrix product, and Keras' per-step Python (the step's dispatch,
        # the callbacks) was most of the head's time: HEAD_STEPS_PER_EXECUTION steps run in one call of the
        # compiled function, the same updates in the same order (MobileNetV2's 1,280 features, 800 images, 10
        # epochs: 1.1 s against 1.2-1.6 s).
        per_call = HEAD_STEPS_PER_EXECUTION if isinstance(train, tuple) and placement.name == "default" else 1
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss=loss, metrics=[acc],
                      jit_compile=bool(cfg.xla), steps_per_execution=per_call)
    resume = state if state is not None and state.stage == stage and state.epochs_done else None
    if resume is not None:
        ckpt.restore(model, resume)
    if resume is not None and resume.epochs_done >= epochs or resume is not None and resume.early_stop.get("stopped"):
        _restore_best(model, ckpt, resume)
        return history.count(stage)
    monitor = "val_loss" if val is not None else "loss"
    stop = _resumable_stop(resume.early_stop if resume else None, ckpt.best_weights(resume) if resume else None,
                           monitor=monitor, patience=max(cfg.patience, 1), restore_best_weights=True)
    save = _checkpoint_callback(ckpt, stop, stage, history, placement.chief)
    # Order matters: the history row and early stopping see the epoch before its checkpoint is written.
    callbacks = [history.callback(stage, lr), stop, save,
                 keras_callback(reporter, stage, epochs, _steps(train, cfg))]
    if log_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0))
    if isinstance(train, tuple):  # cached features: as tf.data, which every strategy distributes
        train = feature_dataset(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val = feature_dataset(val, cfg.batch_size, shuffle=False, seed=cfg.seed) if val is not None else None
    if smoothing:
        n_classes = int(model.output_shape[-1])
        train = _one_hot(train, n_classes)
        val = _one_hot(val, n_classes) if val is not None else None
    if placement.name == "multiworker":
        _local_symbolic_build(model, train)
    model.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False,
              initial_epoch=resume.epochs_done if resume else 0, class_weight=class_weight)
    return history.count(stage)


def _one_hot(data: tf.data.Dataset, n_classes: int) -> tf.data.Dataset:
    """(x, label) -> (x, one-hot label): what CategoricalCrossentropy's label smoothing needs."""
    import tensorflow as tf

    @tf.autograph.experimental.do_not_convert  # a plain graph function: no AutoGraph rewrite to pay for
    def one_hot(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return x, tf.one_hot(tf.cast(y, tf.int32), n_classes)

    return data.map(one_hot, num_parallel_calls=tf.data.AUTOTUNE)


def _restore_best(model: keras.Model, ckpt: Checkpoints, state: State) -> None:
    best = ckpt.best_weights(state)
    if best is not None:
        model.set_weights(best)


def _resumable_stop_class() -> type[keras.callbacks.EarlyStopping]:
    import keras

    class ResumableStop(keras.callbacks.EarlyStopping):
        """EarlyStopping whose counters and best weights survive a restart."""

        def __init__(self, saved: dict[str, Any] | None, best: list[np.ndarray] | None, **kw: Any) -> None:
            super().__init__(**kw)
            self.saved, self.saved_best = saved, best

        def on_train_begin(self, logs: Any = None) -> None:
            super().on_train_begin(logs)
            if self.saved and self.saved.get("best") is not None:
                self.wait = int(self.saved["wait"])
                self.best = float(self.saved["best"])
                self.best_epoch = int(self.saved["best_epoch"])
                self.best_weights = self.saved_best

    return ResumableStop


def _resumable_stop(saved: dict[str, Any] | None, best: list[np.ndarray] | None,
                    **kw: Any) -> keras.callbacks.EarlyStopping:
    return _resumable_stop_class()(saved, best, **kw)


def _checkpoint_callback(ckpt: Checkpoints, stop: keras.callbacks.EarlyStopping, stage: str, history: History,
                         chief: bool) -> keras.callbacks.Callback:
    """A callback that checkpoints model, optimizer and early-stopping state after each epoch."""
    import keras

    from edgetl.train.checkpoint import State

    class _Save(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if not chief:
                return
            improved = stop.best_epoch == epoch and stop.best_weights is not None
            early = {"wait": stop.wait, "best": None if stop.best is None else float(stop.best),
                     "best_epoch": stop.best_epoch, "stopped": bool(self.model.stop_training)}
            prev = ckpt.load()
            if not improved and prev.stage == stage:
                early["best_file"] = prev.early_stop.get("best_file")
            state = State(stage=stage, epochs_done=epoch + 1, head_done=stage != "head",
                          history_rows=len(history.rows), early_stop=early)
            ckpt.save(state, self.model, best=stop.best_weights if improved else None)

    return _Save()


def _local_symbolic_build(model: keras.Model, train: tf.data.Dataset) -> None:
    """Work around Keras 3.15 under MultiWorkerMirroredStrategy.

    Before fitting, Keras averages a *distributed* batch across replicas to build optimizer and metric
    variables, and that reduce fails across workers ("Attempt to convert a value (PerReplica...)").
    Building from one local batch creates the same variables without the cross-worker reduce.
    """
    sample = next(iter(train))
    build = model._maybe_symbolic_build
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=sample)


def _steps(train: tf.data.Dataset | Features, cfg: TrainConfig) -> int | None:
    if isinstance(train, tuple):
        return -(-len(train[1]) // cfg.batch_size)
    n = train.cardinality().numpy() if hasattr(train, "cardinality") else -1
    return int(n) if n >= 0 else None
