"""Two-stage transfer learning with a frozen base, and the cached-features fast path."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import rundir
from edgetl.core.fileio import write_json, write_text
from edgetl.core.progress import Reporter, keras_callback
from edgetl.model.backbones import (
    BackboneSpec,
    build_base,
    bundled_weights_path,
    check_alpha,
    check_image_size,
    resolve_backbone,
)
from edgetl.train.config import TrainConfig, as_dict

log = logging.getLogger("edgetl")

HISTORY_COLUMNS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass
class TrainResult:
    """What a finished training run reports."""

    run_dir: Path
    class_names: list[str]
    metrics: dict[str, Any]
    feature_cache: bool
    epochs_run: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    chief: bool = True  # False on the other workers of a multi-worker run: they wrote nothing


def default_output(cfg: TrainConfig) -> str:
    """runs/<backbone>-<time>, when --output is not given."""
    name = Path(cfg.backbone).stem if ("/" in cfg.backbone or cfg.backbone.endswith(".keras")) else cfg.backbone
    name = name.replace("hub:", "hub-").replace(":", "-").replace("/", "-")[-40:]
    return os.path.join("runs", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def plan(cfg: TrainConfig) -> tuple[BackboneSpec, int, str]:
    """Check the options that need no data or TensorFlow: backbone, size, alpha, preprocessing."""
    from edgetl.core.errors import UsageError
    from edgetl.model.backbones import PREPROCESSING_MODES

    cfg.validate()
    spec = resolve_backbone(cfg.backbone)
    size = cfg.image_size or spec.default_size
    check_image_size(spec, size)
    check_alpha(spec, cfg.alpha, cfg.weights)
    if cfg.weights == "bundled":
        bundled_weights_path(spec, cfg.alpha)
    elif cfg.weights not in ("imagenet", "none") and not Path(cfg.weights).is_file():
        raise UsageError(f"--weights '{cfg.weights}' is neither imagenet, none, bundled nor an existing file. "
                         "Pass one of those or the path of a weights file.")
    mode = cfg.preprocessing or spec.default_preprocessing
    if mode not in PREPROCESSING_MODES:
        raise UsageError(f"--preprocessing '{mode}' is not allowed. Use one of {', '.join(PREPROCESSING_MODES)}.")
    if cfg.fine_tune_layers is not None and spec.kind != "keras" and not cfg.backbone.endswith(".keras"):
        raise UsageError("--fine-tune-layers needs a Keras backbone; a SavedModel or TF-Hub base stays frozen. "
                         "Drop --fine-tune-layers.")
    return spec, size, mode


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a classifier on an image folder and write a complete run directory.

    Args:
        cfg: the options (see TrainConfig).
        reporter: receives progress; None for silence.

    Returns:
        A TrainResult.

    Raises:
        EdgetlError: bad options, data or backbone; the run directory is left marked unfinished.
    """
    from edgetl.data import scan_folder

    reporter = reporter or Reporter()
    spec, size, mode = plan(cfg)
    output = cfg.output or default_output(cfg)
    # Check the output before any heavy work, and never after data has been written.
    if Path(output).is_dir() and any(Path(output).iterdir()) and not cfg.force:
        rundir.prepare_output(output, force=False)
    splits = scan_folder(cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
                         max_bad_fraction=cfg.max_bad_fraction)  # it warns about each skipped file

    t0 = time.perf_counter()
    placement, clf = _place_and_build(cfg, spec, size, mode, len(splits.class_names), reporter)
    # Only the chief writes the run directory; other workers train in a scratch folder they delete.
    if placement.chief:
        run_path = rundir.prepare_output(output, force=cfg.force)
    else:
        run_path = Path(tempfile.mkdtemp(prefix="edgetl-worker-"))
    try:
        return _train(cfg, spec, size, mode, splits, clf, placement, run_path, reporter, t0)
    finally:
        if not placement.chief:
            shutil.rmtree(run_path, ignore_errors=True)
        _restore_policy(placement)


def _place_and_build(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, n_classes: int,
                     reporter: Reporter) -> tuple[Any, Any]:
    """Choose the strategy and precision, then build the classifier in the strategy's scope."""
    import keras

    from edgetl.model.classifier import build_classifier
    from edgetl.train.distribute import place

    placement = place(cfg.strategy, cfg.mixed_precision, timeout=float(os.environ.get("EDGETL_WORKER_TIMEOUT", 120)))
    reporter.info(placement.describe(cfg.batch_size))
    keras.utils.set_random_seed(cfg.seed)
    reporter.info(f"building {spec.name} ({cfg.weights} weights) at {size}x{size}")
    with placement.strategy.scope():
        base = build_base(spec, weights=cfg.weights, alpha=cfg.alpha, image_size=size)
        clf = build_classifier(base, image_size=size, num_classes=n_classes, preprocessing=mode,
                               dropout=cfg.dropout, seed=cfg.seed)
    return placement, clf


def _restore_policy(placement: Any) -> None:
    if placement.mixed_precision:
        from edgetl.train.distribute import restore_float32_policy

        restore_float32_policy()


def _train(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, splits: Any, clf: Any, placement: Any,
           run_path: Path, reporter: Reporter, t0: float, manifest: dict[str, Any] | None = None) -> TrainResult:
    """The training proper, inside a prepared run directory (a resumed one when `manifest` is given)."""
    from edgetl.train.checkpoint import Checkpoints, State

    ckpt = Checkpoints(run_path)
    resuming = manifest is not None
    state = ckpt.load() if resuming else None
    if manifest is None:
        manifest = _manifest(cfg, spec, size, mode, splits, clf)
        write_json(run_path / rundir.MANIFEST, manifest)
        write_text(run_path / rundir.LABELS_FILE, "\n".join(splits.class_names) + "\n")
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * placement.replicas)  # the global batch
    history = _History(run_path / rundir.HISTORY_FILE, keep_rows=state.history_rows if state else None)
    seconds = {"build": time.perf_counter() - t0}
    if state is None:
        state = State()
    elif state.history_rows:
        reporter.info(f"resuming after {state.history_rows} completed epoch(s), stage {state.stage}")

    use_cache = cfg.feature_cache == "auto" and not cfg.augment
    epochs_run = {}
    t1 = time.perf_counter()
    feats: dict[str, Any] = {}
    # Features are needed unless a resumed run is already past the head stage of a fine-tuning run.
    if use_cache and (not state.head_done or cfg.fine_tune_layers is None):
        feats = {name: ckpt.load_features(name) if resuming else None for name in ("train", "val", "test")}
        todo = [name for name, f in feats.items() if f is None and getattr(splits, name)]
        for name, xy in _features(clf, splits, todo, size, cfg.batch_size, reporter, placement).items():
            feats[name] = xy
            if placement.chief:
                ckpt.save_features(name, *xy)
        seconds["features"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    if state.head_done:
        ckpt.restore(clf.model, state)  # the whole classifier as the head stage left it
        epochs_run["head"] = history.count("head")
    elif use_cache:
        epochs_run["head"] = _fit(clf.head, feats["train"], feats["val"], cfg, cfg.lr, cfg.epochs, "head",
                                  history, reporter, placement, ckpt, state)
    else:
        data = {name: _dataset(splits, name, size, cfg, augment=(name == "train" and cfg.augment))
                for name in ("train", "val")}
        epochs_run["head"] = _fit(clf.model, data["train"], data["val"], cfg, cfg.lr, cfg.epochs, "head",
                                  history, reporter, placement, ckpt, state)
    seconds["head"] = time.perf_counter() - t1

    if cfg.fine_tune_layers is not None and cfg.fine_tune_epochs > 0:
        from edgetl.model.classifier import unfreeze_top

        if not state.head_done:
            state = State(stage="fine_tune", head_done=True, history_rows=len(history.rows))
            if placement.chief:
                state = ckpt.save(state, clf.model)
        t1 = time.perf_counter()
        n = unfreeze_top(clf.base, str(cfg.fine_tune_layers))
        reporter.info(f"fine-tuning the top {n} layers of the base at lr {cfg.fine_tune_lr}")
        data = {name: _dataset(splits, name, size, cfg, augment=(name == "train" and cfg.augment))
                for name in ("train", "val")}
        epochs_run["fine_tune"] = _fit(clf.model, data["train"], data["val"], cfg, cfg.fine_tune_lr,
                                       cfg.fine_tune_epochs, "fine_tune", history, reporter, placement, ckpt,
                                       state if state.stage == "fine_tune" and state.epochs_done else None)
        seconds["fine_tune"] = time.perf_counter() - t1
        clf.base.trainable = False
        use_features_for_eval = False
    else:
        use_features_for_eval = use_cache

    t1 = time.perf_counter()
    metrics = {}
    for name in ("val", "test"):
        items = getattr(splits, name)
        if not items:
            metrics[name] = None
            continue
        if use_features_for_eval:
            probs = clf.head.predict(feats[name][0], batch_size=256, verbose=0)
        else:
            probs = clf.model.predict(_dataset(splits, name, size, cfg, augment=False), verbose=0)
        from edgetl.core.metrics import classification_metrics

        metrics[name] = classification_metrics(np.array([i.label for i in items]), probs, splits.class_names)
    seconds["evaluate"] = time.perf_counter() - t1

    model = _float32_model(clf, spec, cfg, size, mode, len(splits.class_names)) if placement.mixed_precision \
        else clf.model
    _save_model(model, run_path / rundir.MODEL_FILE)
    write_json(run_path / rundir.METRICS_FILE, {"class_names": splits.class_names, **metrics})
    from edgetl.core.plots import plot_run

    plots = plot_run(run_path, history.rows, metrics, splits.class_names, spec.name)
    seconds["total"] = time.perf_counter() - t0
    manifest.update({
        "status": "complete",
        "finished": rundir.now(),
        "training": {"feature_cache": use_cache, "epochs_run": epochs_run, "strategy": placement.name,
                     "replicas": placement.replicas, "global_batch_size": cfg.batch_size,
                     "mixed_precision": placement.mixed_precision, "xla": cfg.xla,
                     "seconds": {k: round(v, 2) for k, v in seconds.items()}},
        "metrics": {name: (m["accuracy"] if m else None) for name, m in metrics.items()},
    })
    manifest["files"]["plots"] = plots
    write_json(run_path / rundir.MANIFEST, manifest)
    ckpt.remove()
    return TrainResult(run_path, splits.class_names, metrics, use_cache, epochs_run, seconds, placement.chief)


class AlreadyComplete(Exception):
    """--resume on a run that finished: nothing to do (the CLI exits 0)."""


def resume(run_dir: str | os.PathLike[str], reporter: Reporter | None = None) -> TrainResult:
    """Continue an interrupted run from its last completed epoch, with its own options and data.

    Raises:
        AlreadyComplete: the run finished; nothing is changed.
        DataError: the data changed since the run started (what changed is named).
        ModelError: not a run directory.
    """
    from edgetl.core.errors import ModelError
    from edgetl.data import DataSplits

    reporter = reporter or Reporter()
    run = rundir.load_run(run_dir, require_complete=False)
    manifest = run.manifest
    if manifest.get("status") == "complete":
        raise AlreadyComplete(str(run.path))
    try:
        cfg = TrainConfig(**{**manifest["config"], "output": str(run.path), "force": False})
    except TypeError as exc:
        raise ModelError(f"run '{run.path}' was written by another edgetl version ({exc}); start a new run.") \
            from None
    spec, size, mode = plan(cfg)
    splits = DataSplits.from_manifest(manifest["data"])
    _check_same_data(splits, manifest)
    t0 = time.perf_counter()
    placement, clf = _place_and_build(cfg, spec, size, mode, len(splits.class_names), reporter)
    try:
        return _train(cfg, spec, size, mode, splits, clf, placement, run.path, reporter, t0, manifest=manifest)
    finally:
        _restore_policy(placement)


def _file_stats(splits: Any) -> dict[str, list[int]]:
    out = {}
    for split in ("train", "val", "test"):
        for item in getattr(splits, split):
            try:
                st = os.stat(os.path.join(splits.root, item.path))
                out[item.path] = [st.st_size, st.st_mtime_ns]
            except OSError:
                out[item.path] = [-1, -1]
    return out


def _check_same_data(splits: Any, manifest: dict[str, Any]) -> None:
    """Refuse to resume on changed data, saying what changed."""
    from edgetl.core.errors import DataError
    from edgetl.data import scan_folder

    recorded = manifest.get("data_files", {})
    now = _file_stats(splits)
    try:
        fresh = scan_folder(splits.root, val_split=0.0, test_split=0.0, max_bad_fraction=1.0)
        present = {i.path for s in ("train", "val", "test") for i in getattr(fresh, s)}
        added = sorted(present - set(now) - {p for p, _ in splits.skipped})
    except Exception:  # the folder may be gone entirely; missing files say enough
        added = []
    if not added and splits.fingerprint() == manifest["data"].get("fingerprint"):
        return
    missing = [p for p, st in now.items() if st[0] < 0]
    modified = [p for p, st in now.items() if st[0] >= 0 and recorded.get(p) not in (None, st)]
    parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in (("missing", missing), ("modified", modified),
                                                                ("added", added)) if v]
    detail = "; ".join(parts) or "file list or labels differ"
    raise DataError(f"the data in '{splits.root}' changed since the run started: {detail}. Resume needs the same "
                    "data: restore it, or start a new run.")


def _manifest(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, splits: Any, clf: Any) -> dict[str, Any]:
    return {
        "edgetl_run": rundir.SCHEMA_VERSION,
        "status": "running",
        "created": rundir.now(),
        "versions": rundir.versions(),
        "config": as_dict(cfg),
        "backbone": {"kind": spec.kind, "name": spec.name, "weights": cfg.weights, "alpha": cfg.alpha,
                     "card": spec.card.to_dict() if spec.card else None, "feature_dim": clf.feature_dim},
        "input": {"image_size": [size, size], "channels": 3, "color": "RGB", "layout": "NHWC",
                  "dtype": "float32", "pixel_range": [0, 255], "preprocessing": mode,
                  "preprocessing_in_model": True, "resize": "bilinear, aspect ratio not kept"},
        "output": {"kind": "probabilities", "layer": "predictions", "classes": len(splits.class_names)},
        "class_names": splits.class_names,
        "data": splits.to_manifest(),
        "data_files": _file_stats(splits),  # size and mtime of each image: resume says what changed
        "parent": None,
        "files": {"model": rundir.MODEL_FILE, "labels": rundir.LABELS_FILE, "history": rundir.HISTORY_FILE,
                  "metrics": rundir.METRICS_FILE},
    }


def _labels(items: list[Any]) -> np.ndarray:
    return np.array([i.label for i in items], dtype=np.int32)


def _dataset(splits: Any, name: str, size: int, cfg: TrainConfig, augment: bool) -> Any:
    from edgetl.data import make_dataset

    items = getattr(splits, name)
    if not items:
        return None
    ds = make_dataset(splits.root, items, (size, size), cfg.batch_size, shuffle=(name == "train"),
                      seed=cfg.seed, augment=augment)
    return _shard_by_data(ds)


def _shard_by_data(ds: Any) -> Any:
    # The pipeline starts from a list of paths, not files tf.data can shard: workers shard by element.
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _float32_model(clf: Any, spec: BackboneSpec, cfg: TrainConfig, size: int, mode: str, n_classes: int) -> Any:
    """The trained model rebuilt under the float32 policy: saved and exported files stay float32."""
    from edgetl.model.classifier import build_classifier
    from edgetl.train.distribute import restore_float32_policy

    restore_float32_policy()
    weights = "none" if spec.kind == "keras" else cfg.weights
    base = build_base(spec, weights=weights, alpha=cfg.alpha, image_size=size)
    twin = build_classifier(base, image_size=size, num_classes=n_classes, preprocessing=mode, dropout=cfg.dropout,
                            seed=cfg.seed)
    twin.model.set_weights(clf.model.get_weights())
    return twin.model


def _features(clf: Any, splits: Any, names: list[str], size: int, batch_size: int, reporter: Reporter,
              placement: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Run the frozen base once over the images of these splits: the fast path's whole cost.

    One pass over all splits together: one traced predict function and full batches, instead of
    a trace and a ragged last batch per split.
    """
    import keras

    from edgetl.data import make_dataset

    if not names:
        return {}
    items = [item for name in names for item in getattr(splits, name)]
    extract_batch = _extract_batch(batch_size, placement)
    ds = make_dataset(splits.root, items, (size, size), extract_batch, shuffle=False)
    steps = -(-len(items) // extract_batch)
    reporter.start(f"features of {len(items)} images", steps)

    class _Tick(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch: int, logs: Any = None) -> None:
            reporter.advance(1)

    if placement.name == "mirrored":
        feats = clf.extractor.predict(ds, verbose=0, callbacks=[_Tick()])  # split across the replicas
    else:
        # One compiled function over the batches: about twice the throughput of Keras' predict on a
        # CPU (measured: MobileNetV2-224, 52 vs 28 img/s). Under multi-worker training every worker
        # needs every feature, and this reads the mirrored weights locally.
        import tensorflow as tf

        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
        def extract(images: Any) -> Any:
            return clf.extractor(images, training=False)

        parts = []
        for images, _ in ds:
            parts.append(np.asarray(extract(images), dtype=np.float32))
            reporter.advance(1)
        feats = np.concatenate(parts)
    reporter.finish()
    feats = np.asarray(feats, dtype=np.float32)
    out, start = {}, 0
    for name in names:
        split_items = getattr(splits, name)
        out[name] = feats[start:start + len(split_items)], _labels(split_items)
        start += len(split_items)
    return out


def _extract_batch(batch_size: int, placement: Any) -> int:
    """Batch size of the feature pass: large on accelerators, at most 32 on a CPU.

    On a CPU larger batches are slower per image (MobileNetV2-224 on 2 cores: 300 images in 2.5 s
    at batch 32 and 3.4-3.9 s at 64; BENCHMARKS.md, train), since activations stop fitting in cache
    and the first batch, which includes the kernels' set-up, takes longer.
    """
    if any("GPU" in d.upper() or "TPU" in d.upper() for d in placement.devices):
        return max(batch_size, 64)
    return max(1, min(batch_size, 32))


def _fit(model: Any, train: Any, val: Any, cfg: TrainConfig, lr: float, epochs: int, stage: str,
         history: _History, reporter: Reporter, placement: Any, ckpt: Any, state: Any) -> int:
    """Compile and fit with early stopping on val loss (train loss without a val split); best weights kept.

    Each epoch ends with a checkpoint; `state` (from a checkpoint of this stage) resumes after its epoch.
    """
    import keras

    if epochs == 0:
        return 0
    with placement.strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=bool(cfg.xla))
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
    if isinstance(train, tuple):  # cached features: as tf.data, which every strategy distributes
        train = _feature_dataset(train, cfg.batch_size, shuffle=True, seed=cfg.seed)
        val = _feature_dataset(val, cfg.batch_size, shuffle=False, seed=cfg.seed) if val is not None else None
    if placement.name == "multiworker":
        _local_symbolic_build(model, train)
    model.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks, verbose=0, shuffle=False,
              initial_epoch=resume.epochs_done if resume else 0)
    return history.count(stage)


def _restore_best(model: Any, ckpt: Any, state: Any) -> None:
    best = ckpt.best_weights(state)
    if best is not None:
        model.set_weights(best)


def _resumable_stop_class() -> Any:
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


def _resumable_stop(saved: dict[str, Any] | None, best: list[np.ndarray] | None, **kw: Any) -> Any:
    return _resumable_stop_class()(saved, best, **kw)


def _checkpoint_callback(ckpt: Any, stop: Any, stage: str, history: _History, chief: bool) -> Any:
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


def _local_symbolic_build(model: Any, train: Any) -> None:
    """Work around Keras 3.15 under MultiWorkerMirroredStrategy.

    Before fitting, Keras averages a *distributed* batch across replicas to build optimizer and metric
    variables, and that reduce fails across workers ("Attempt to convert a value (PerReplica...)").
    Building from one local batch creates the same variables without the cross-worker reduce.
    """
    sample = next(iter(train))
    build = model._maybe_symbolic_build
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: build(data_batch=sample)


def _feature_dataset(xy: tuple[np.ndarray, np.ndarray], batch_size: int, shuffle: bool, seed: int) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(xy)
    if shuffle:
        ds = ds.shuffle(len(xy[1]), seed=seed, reshuffle_each_iteration=True)
    return _shard_by_data(ds.batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _steps(train: Any, cfg: TrainConfig) -> int | None:
    if isinstance(train, tuple):
        return -(-len(train[1]) // cfg.batch_size)
    n = train.cardinality().numpy() if hasattr(train, "cardinality") else -1
    return int(n) if n >= 0 else None


class _History:
    """history.csv, one row per epoch, appended and flushed as training goes."""

    def __init__(self, path: Path, keep_rows: int | None = None) -> None:
        """Start a new history, or (resuming) keep the first `keep_rows` rows: the checkpointed epochs."""
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_rows is not None and path.is_file():
            with open(path, newline="") as f:
                self.rows = list(csv.DictReader(f))[:keep_rows]
        # Rewritten whole (atomically): rows of epochs after the last checkpoint are dropped, never duplicated.
        from edgetl.core.fileio import atomic_path

        with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    def count(self, stage: str) -> int:
        return sum(1 for r in self.rows if r["stage"] == stage)

    def callback(self, stage: str, lr: float) -> Any:
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
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, HISTORY_COLUMNS).writerow(row)
            f.flush()
            os.fsync(f.fileno())


def _save_model(model: Any, path: Path) -> None:
    from edgetl.core.fileio import atomic_path

    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
