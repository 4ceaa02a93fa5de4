"""The training job: plan, train and resume a two-stage transfer-learning run (frozen base, then fine-tuning).

Stage one trains the head, on cached features (edgetl.train.features) unless images are augmented;
stage two (optional) unfreezes the top of the base. The run directory is written through
edgetl.rundir: started with its manifest and labels, finished with model, metrics and plots.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl import rundir
from edgetl.core.fileio import Streamed
from edgetl.core.progress import Reporter
from edgetl.data.splits import SPLITS
from edgetl.model.backbones import (
    KERASHUB_PREFIX,
    BackboneSpec,
    backbone_label,
    build_base,
    bundled_weights_path,
    check_alpha,
    check_image_size,
    resolve_backbone,
)
from edgetl.train.config import TrainConfig, as_dict
from edgetl.train.features import Features, extract_features, head_probabilities, split_dataset
from edgetl.train.fit import fit_stage
from edgetl.train.history import History
from edgetl.train.passinput import PassInput, start_pass_input
from edgetl.train.walltime import Clock, describe

if TYPE_CHECKING:
    import keras

    from edgetl.data.splits import DataSplits
    from edgetl.model.classifier import Classifier
    from edgetl.train.distribute import Placement


@dataclass
class TrainResult:
    """What a finished training run reports."""

    run_dir: Path
    class_names: list[str]
    metrics: dict[str, dict[str, Any] | None]  # per split: classification_metrics(...), None when empty
    feature_cache: bool
    epochs_run: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    chief: bool = True  # False on the other workers of a multi-worker run: they wrote nothing


def default_output(cfg: TrainConfig) -> str:
    """runs/<backbone>-<time>, when --output is not given."""
    if cfg.backbone.startswith(KERASHUB_PREFIX):
        name = "kerashub-" + backbone_label("kerashub", cfg.backbone[len(KERASHUB_PREFIX):])
    elif "/" in cfg.backbone or cfg.backbone.endswith(".keras"):
        name = Path(cfg.backbone).stem
    else:
        name = cfg.backbone
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
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package, which is not installed. Install it "
                             "(pip install 'tensorboard>=2.21,<2.22') or drop --tensorboard.")
    if mode == "preset" and not spec.normalization:
        raise UsageError(f"--preprocessing preset takes a KerasHub preset's image converter, and '{spec.name}' has "
                         f"none. Use one of {', '.join(m for m in PREPROCESSING_MODES if m != 'preset')}.")
    if cfg.fine_tune_layers is not None and spec.kind not in ("keras", "kerashub") \
            and not cfg.backbone.endswith(".keras"):
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

    clock = Clock()  # first: the process's age here is the start-up's share
    reporter = reporter or Reporter()
    spec, size, mode = plan(cfg)
    output = cfg.output or default_output(cfg)
    # Check the output before any heavy work, and never after data has been written.
    if Path(output).is_dir() and any(Path(output).iterdir()) and not cfg.force:
        rundir.prepare_output(output, force=False)
    splits = scan_folder(cfg.data, val_split=cfg.val_split, test_split=cfg.test_split, seed=cfg.seed,
                         max_bad_fraction=cfg.max_bad_fraction)  # it warns about each skipped file
    clock.part("scan")
    detail = _photo_detail(splits, size, reporter)
    clock.part("detail")
    placement, clf, ahead = _place_and_build(cfg, spec, size, mode, splits, reporter, read_ahead=True)
    clock.part("build")
    # Only the chief writes the run directory; other workers train in a scratch folder they delete.
    if placement.chief:
        run_path = rundir.prepare_output(output, force=cfg.force)
    else:
        run_path = Path(tempfile.mkdtemp(prefix="edgetl-worker-"))
    try:
        return _train(cfg, spec, size, mode, splits, clf, placement, run_path, reporter, clock, detail=detail,
                      ahead=ahead)
    finally:
        if not placement.chief:
            shutil.rmtree(run_path, ignore_errors=True)
        _restore_policy(placement)


def _photo_detail(splits: DataSplits, size: int, reporter: Reporter) -> dict[str, int | float] | None:
    """The detail the training photos carry (edgetl.data.detail), logged when far below the model's input."""
    from edgetl.data.detail import detail_advice, split_detail

    detail = split_detail(splits, size)
    if detail is None:
        return None
    advice = detail_advice(detail, size)
    if advice:
        reporter.info(advice)
    return detail.to_dict()


def _place_and_build(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, splits: DataSplits,
                     reporter: Reporter, *, read_ahead: bool = False) -> tuple[Placement, Classifier, PassInput | None]:
    """Choose the strategy and precision, then build the classifier in the strategy's scope.

    read_ahead: a fresh run's feature pass will cover every split: its input starts before the build, so the images
    decode while the backbone builds (passinput.start_pass_input), and is returned for extract_features.
    """
    import keras

    from edgetl.model.classifier import build_classifier
    from edgetl.train.distribute import place

    placement = place(cfg.strategy, cfg.mixed_precision, timeout=float(os.environ.get("EDGETL_WORKER_TIMEOUT", 120)))
    reporter.info(placement.describe(cfg.batch_size))
    ahead = None
    if read_ahead and cfg.feature_cache != "off" and not cfg.augment:
        names = [name for name in ("train", "val", "test") if splits.split(name)]
        ahead = start_pass_input(splits, names, size, cfg.batch_size * placement.replicas, placement)
    n_classes = len(splits.class_names)
    keras.utils.set_random_seed(cfg.seed)
    reporter.info(f"building {spec.name} ({cfg.weights} weights) at {size}x{size}")
    with placement.strategy.scope():
        base = build_base(spec, weights=cfg.weights, alpha=cfg.alpha, image_size=size)
        clf = build_classifier(base, image_size=size, num_classes=n_classes, preprocessing=mode,
                               dropout=cfg.dropout, seed=cfg.seed, normalization=spec.normalization)
    return placement, clf, ahead


def _restore_policy(placement: Placement) -> None:
    if placement.mixed_precision:
        from edgetl.train.distribute import restore_float32_policy

        restore_float32_policy()


def _train(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, splits: DataSplits, clf: Classifier,
           placement: Placement, run_path: Path, reporter: Reporter, clock: Clock,
           manifest: dict[str, Any] | None = None, detail: dict[str, int | float] | None = None,
           ahead: PassInput | None = None) -> TrainResult:
    """The training proper, inside a prepared run directory (a resumed one when `manifest` is given).

    `ahead`: the feature pass's input, already decoding (_place_and_build).

    `clock` times each part (edgetl.train.walltime), from scan and build, which the caller timed.
    """
    from edgetl.train import class_weights
    from edgetl.train.checkpoint import Checkpoints, State

    ckpt = Checkpoints(run_path)
    resuming = manifest is not None
    state = ckpt.load() if resuming else None
    counts = np.bincount([i.label for i in splits.split("train")], minlength=len(splits.class_names)).tolist()
    class_weights.warn_imbalance(counts, splits.class_names)
    if resuming:  # the weights the run started with, whatever the defaults are now
        weighting = class_weights.from_manifest(manifest.get("class_weights"), splits.class_names)
    else:
        weighting = class_weights.resolve(cfg.class_weights, counts, splits.class_names)
    if weighting.weights:
        reporter.info(f"class weights {weighting.source}: " + ", ".join(
            f"{n} {w:.3g}" for n, w in zip(splits.class_names, weighting.weights, strict=True)))
    if manifest is None:
        manifest = run_manifest(cfg, spec, size, mode, splits, clf)
        if detail is not None:
            manifest["data"]["detail"] = detail
        manifest["class_weights"] = weighting.to_manifest(splits.class_names)
        rundir.start_run(run_path, manifest, splits.class_names)
    restore_lists = compact_image_lists(manifest, splits)  # written; not held per image while training
    # TensorBoard logs per stage (RUN/logs/head, RUN/logs/fine_tune); the chief alone writes them.
    logs = {stage: run_path / "logs" / stage if cfg.tensorboard and placement.chief else None
            for stage in ("head", "fine_tune")}
    extra = {"class_weight": weighting.keras()}
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * placement.replicas)  # the global batch
    history = History(run_path / rundir.HISTORY_FILE, keep_rows=state.history_rows if state else None)
    if state is None:
        state = State()
    elif state.history_rows:
        reporter.info(f"resuming after {state.history_rows} completed epoch(s), stage {state.stage}")

    use_cache = cfg.feature_cache != "off" and not cfg.augment
    feature_engine: dict[str, Any] = {}
    epochs_run = {}
    clock.part("setup")
    feats: dict[str, Features | None] = {}
    # Features are needed unless a resumed run is already past the head stage of a fine-tuning run.
    if use_cache and (not state.head_done or cfg.fine_tune_layers is None):
        feats = {name: ckpt.load_features(name) if resuming else None for name in ("train", "val", "test")}
        todo = [name for name, f in feats.items() if f is None and splits.split(name)]
        # Written batch by batch into the run's cache (what --resume reads), returned memory-mapped.
        feats.update(extract_features(clf, splits, todo, size, cfg.batch_size, reporter, placement,
                                      engine=cfg.feature_cache, record=feature_engine, cache_dir=ckpt.cache_dir,
                                      ahead=ahead))
        ahead = None
        inner = feature_engine.pop("seconds", {})
        clock.seconds.update({f"features_{k}": v for k, v in inner.items()})
        clock.part("features")
    if ahead is not None:  # started for a pass that did not run
        ahead.release()
    if state.head_done:
        ckpt.restore(clf.model, state)  # the whole classifier as the head stage left it
        epochs_run["head"] = history.count("head")
    elif use_cache:
        epochs_run["head"] = fit_stage(clf.head, feats["train"], feats["val"], cfg, cfg.lr, cfg.epochs, "head",
                                       history, reporter, placement, ckpt, state, log_dir=logs["head"], **extra)
    else:
        data = {name: split_dataset(splits, name, size, cfg, augment=(name == "train" and cfg.augment))
                for name in ("train", "val")}
        epochs_run["head"] = fit_stage(clf.model, data["train"], data["val"], cfg, cfg.lr, cfg.epochs, "head",
                                       history, reporter, placement, ckpt, state, log_dir=logs["head"], **extra)
    clock.part("head")

    if cfg.fine_tune_layers is not None and cfg.fine_tune_epochs > 0:
        from edgetl.model.classifier import unfreeze_top

        if not state.head_done:
            state = State(stage="fine_tune", head_done=True, history_rows=len(history.rows))
            if placement.chief:
                state = ckpt.save(state, clf.model)
        n = unfreeze_top(clf.base, str(cfg.fine_tune_layers))
        reporter.info(f"fine-tuning the top {n} layers of the base at lr {cfg.fine_tune_lr}")
        data = {name: split_dataset(splits, name, size, cfg, augment=(name == "train" and cfg.augment))
                for name in ("train", "val")}
        epochs_run["fine_tune"] = fit_stage(clf.model, data["train"], data["val"], cfg, cfg.fine_tune_lr,
                                            cfg.fine_tune_epochs, "fine_tune", history, reporter, placement, ckpt,
                                            state if state.stage == "fine_tune" and state.epochs_done else None,
                                            log_dir=logs["fine_tune"], **extra)
        clock.part("fine_tune")
        clf.base.trainable = False
        use_features_for_eval = False
    else:
        use_features_for_eval = use_cache

    metrics: dict[str, dict[str, Any] | None] = {}
    for name in ("val", "test"):
        items = splits.split(name)
        if not items:
            metrics[name] = None
            continue
        if use_features_for_eval:
            probs = head_probabilities(clf.head, feats[name])  # read from the cache a batch at a time
        else:
            probs = clf.model.predict(split_dataset(splits, name, size, cfg, augment=False), verbose=0)
        from edgetl.core.metrics import classification_metrics

        metrics[name] = classification_metrics(np.array([i.label for i in items]), probs, splits.class_names)
    clock.part("evaluate")

    model = _float32_model(clf, spec, cfg, size, mode, len(splits.class_names)) if placement.mixed_precision \
        else clf.model
    training = {"feature_cache": use_cache, "feature_engine": feature_engine or None,
                "epochs_run": epochs_run, "strategy": placement.name,
                "replicas": placement.replicas, "global_batch_size": cfg.batch_size,
                "mixed_precision": placement.mixed_precision, "xla": cfg.xla,
                "seconds": clock.finish()}
    restore_lists()
    manifest = rundir.finish_run(run_path, manifest, model=model, metrics=metrics, history_rows=history.rows,
                                 title=spec.name, updates={"training": training})
    ckpt.remove()
    clock.part("save")
    seconds = _record_seconds(run_path, manifest, clock, reporter)
    return TrainResult(run_path, splits.class_names, metrics, use_cache, epochs_run, seconds, placement.chief)


def compact_image_lists(manifest: dict[str, Any], splits: DataSplits) -> Callable[[], None]:
    """Take the manifest's per-image lists out while the run trains; return the function that puts them back.

    The lists (data.train/val/test: [path, label]; data_files: path -> [size, mtime_ns]) cost about 250 bytes an
    image as Python objects (50 MB at 200,000 images) for the whole run, and only the first and last manifest writes
    read them. The split lists are the splits' items again (the manifest was made from them, or they from it), so
    they are dropped and rebuilt; the file stats wait as one int64 array. The manifest keeps its key order, so the
    file reads the same. Lists that do not match the splits (an older run's manifest) are left in place.
    """
    data = manifest["data"]
    order = list(data)
    dropped = [s for s in SPLITS if s in data and len(data[s]) == len(splits.split(s))
               and all(p == it.path and lab == it.label for (p, lab), it in zip(data[s], splits.split(s), strict=True))]
    for s in dropped:
        del data[s]
    files = manifest.get("data_files")
    paths = [it.path for s in SPLITS for it in splits.split(s)]
    stats = None
    if isinstance(files, dict) and list(files) == paths:
        try:
            stats = np.array(list(files.values()), dtype=np.int64).reshape(len(paths), 2)
        except (TypeError, ValueError, OverflowError):  # not [size, mtime] pairs: kept as they are
            stats = None
        else:
            manifest["data_files"] = None  # the key keeps its place
    del paths

    def restore() -> None:
        # As views that write_json writes row by row: the lists are never held again (Streamed).
        rebuilt = splits.to_manifest(streamed=True)
        manifest["data"] = {k: rebuilt[k] if k in dropped else data[k] for k in order}
        if stats is not None:
            manifest["data_files"] = _data_files(splits, stats)

    return restore


def _data_files(splits: DataSplits, stats: np.ndarray | None = None) -> Streamed:
    """The manifest's data_files (path -> [size, mtime_ns]) as a view of one stat array (the files' own, or
    `stats` in split order)."""
    stats = _stat_array(splits) if stats is None else stats
    return Streamed(len(stats), partial(_stat_pairs, splits, stats), pairs=True)


def _stat_pairs(splits: DataSplits, stats: np.ndarray) -> Iterator[tuple[str, list[int]]]:
    items = (it for s in SPLITS for it in splits.split(s))
    return ((it.path, row.tolist()) for it, row in zip(items, stats, strict=True))


def _record_seconds(run_path: Path, manifest: dict[str, Any], clock: Clock, reporter: Reporter) -> dict[str, float]:
    """The run's parts, saving included, into its (already complete) manifest; logged in one line."""
    import logging

    from edgetl.core.fileio import write_json

    seconds = clock.finish()
    # finish_run writes the manifest last, so its own seconds can only go in afterwards: one atomic rewrite.
    manifest["training"]["seconds"] = seconds
    write_json(run_path / rundir.MANIFEST, manifest)
    line = describe(seconds)
    logging.getLogger("edgetl").info(line)
    reporter.info(line)
    return seconds


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

    clock = Clock()
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
    clock.part("scan")
    placement, clf, _ = _place_and_build(cfg, spec, size, mode, splits, reporter)
    clock.part("build")
    try:
        return _train(cfg, spec, size, mode, splits, clf, placement, run.path, reporter, clock, manifest=manifest)
    finally:
        _restore_policy(placement)


def _file_stats(splits: DataSplits) -> dict[str, list[int]]:
    """Each image's [size, mtime_ns] ([-1, -1] when it cannot be read), by path."""
    return dict(_stat_pairs(splits, _stat_array(splits)))


def _stat_array(splits: DataSplits) -> np.ndarray:
    """Each image's size and mtime_ns, in split order, as one (n, 2) int64 array (no Python list per image)."""
    items = [it for s in SPLITS for it in splits.split(s)]
    out = np.full((len(items), 2), -1, dtype=np.int64)
    for i, item in enumerate(items):
        try:
            st = os.stat(os.path.join(splits.root, item.path))
        except OSError:
            continue
        out[i] = st.st_size, st.st_mtime_ns
    return out


def _check_same_data(splits: DataSplits, manifest: dict[str, Any]) -> None:
    """Refuse to resume on changed data, saying what changed."""
    from edgetl.core.errors import DataError
    from edgetl.data import scan_folder

    recorded = manifest.get("data_files", {})
    now = _file_stats(splits)
    try:
        fresh = scan_folder(splits.root, val_split=0.0, test_split=0.0, max_bad_fraction=1.0)
        present = {i.path for s in ("train", "val", "test") for i in fresh.split(s)}
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


def run_manifest(cfg: TrainConfig, spec: BackboneSpec, size: int, mode: str, splits: DataSplits,
                 clf: Classifier) -> dict[str, Any]:
    """The manifest a new run starts with (status running): what export, evaluate and predict read back."""
    return {
        **rundir.run_header(),  # edgetl_run, status running, created, versions, files
        "config": as_dict(cfg),
        "backbone": {"kind": spec.kind, "name": spec.name, "weights": cfg.weights, "alpha": cfg.alpha,
                     "card": spec.card.to_dict() if spec.card else None, "feature_dim": clf.feature_dim},
        "input": {"image_size": [size, size], "channels": 3, "color": "RGB", "layout": "NHWC",
                  "dtype": "float32", "pixel_range": [0, 255], "preprocessing": mode,
                  "preprocessing_in_model": True, "resize": "bilinear, aspect ratio not kept",
                  # the "preset" mode's numbers (a KerasHub preset's image converter), per channel in 0..255 units
                  **({"normalization": spec.normalization} if mode == "preset" else {})},
        "output": {"kind": "probabilities", "layer": "predictions", "classes": len(splits.class_names)},
        "class_names": splits.class_names,
        # The per-image rows as views, written row by row (Streamed): never held as Python lists.
        "data": splits.to_manifest(streamed=True),
        "data_files": _data_files(splits),  # size and mtime of each image: resume says what changed
        "parent": None,
    }


def _float32_model(clf: Classifier, spec: BackboneSpec, cfg: TrainConfig, size: int, mode: str,
                   n_classes: int) -> keras.Model:
    """The trained model rebuilt under the float32 policy: saved and exported files stay float32."""
    from edgetl.model.classifier import build_classifier
    from edgetl.train.distribute import restore_float32_policy

    restore_float32_policy()
    weights = "none" if spec.kind == "keras" else cfg.weights
    base = build_base(spec, weights=weights, alpha=cfg.alpha, image_size=size)
    twin = build_classifier(base, image_size=size, num_classes=n_classes, preprocessing=mode, dropout=cfg.dropout,
                            seed=cfg.seed, normalization=spec.normalization)
    twin.model.set_weights(clf.model.get_weights())
    return twin.model
