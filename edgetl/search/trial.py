"""One candidate at one fidelity: its frozen-base features, a head trained on them, its validation accuracy,
and (once per candidate) the target's file converted, its size and its batch-1 latency measured here.

Everything is edgetl's own machinery: the base and classifier (edgetl.model), the feature pass and the head's
fit (edgetl.train), a run directory (edgetl.rundir), the export (edgetl.export) and the runtimes' timer
(edgetl.runtime). What this module adds is the sample it runs them on and the figures it keeps.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.progress import Reporter
from edgetl.rundir import Run
from edgetl.search.candidates import Candidate, Weights, digest
from edgetl.search.features import FeatureStore

if TYPE_CHECKING:
    from edgetl.data.splits import DataSplits, Item
    from edgetl.model.classifier import Classifier
    from edgetl.search.config import SearchConfig
    from edgetl.train.config import TrainConfig
    from edgetl.train.conversion import AnySizeForward
    from edgetl.train.distribute import Placement

CANDIDATES_DIR = "candidates"
# A head fitted on a small sample runs at least this many optimizer steps (more epochs on fewer images), so
# that small samples compare candidates' features, not how far an under-trained head got: `edgetl train`
# on 3,000 images runs about 940 steps in its 10 epochs. Early stopping on val loss ends it sooner.
MIN_HEAD_STEPS = 300
# Calibration images of the target's file: its size and latency do not depend on them (the search does not
# measure the file's accuracy), so few are enough.
CALIBRATION_SAMPLES = 32


class Bars(Reporter):
    """The search's reporter for the train job's steps: their progress bars, not their lines (a line per epoch
    and per feature pass, for every candidate, would bury the search's own)."""

    def __init__(self, outer: Reporter) -> None:
        self.outer = outer

    def start(self, task: str, total: int | None) -> None:
        self.outer.start(task, total)

    def advance(self, units: int = 1) -> None:
        self.outer.advance(units)

    def finish(self) -> None:
        self.outer.finish()


@dataclass
class Built:
    """A candidate's classifier kept between rounds, with its head's variables as built (weights and dropout seed)."""

    clf: Classifier
    spec: Any
    mode: str
    head_state: list[np.ndarray]
    base_key: str | None = None  # the shared base it is built on (Shared.bases), if any


@dataclass
class Base:
    """A backbone's frozen base built for any size: the search's candidates of one backbone, width and weights file
    build their classifiers on it at every size. The head's variables as the first of them was built go to the
    others: a head's initial values do not depend on the size (the base draws as many random values at any size)."""

    base: Any
    head_state: list[np.ndarray]
    forward: AnySizeForward | None = None  # its trace and conversion for any size, made at the first sample round


@dataclass
class Shared:
    """What every candidate of one search uses."""

    cfg: SearchConfig
    train_cfg: TrainConfig  # the training options: splits, seed, head (as `edgetl train` would use them)
    splits: DataSplits
    folder: Path
    placement: Placement
    reporter: Reporter
    threads: int
    # Each candidate still in the search, built once: a later round computes its new images' features and trains a
    # head from the same initial state without building the base again (0.6-0.9 s a candidate and round). The
    # rounds drop the candidates that do not go on (keep_built).
    built: dict[str, Built] = field(default_factory=dict)
    # The bases shared across sizes (shared_base_key): a Keras build is 0.6-0.9 s, most of a small round's fixed cost.
    bases: dict[str, Base] = field(default_factory=dict)

    def keep_built(self, keys: set[str]) -> None:
        """Let go of the classifiers of every candidate not in keys, and of the bases none of the others is on."""
        self.built = {k: b for k, b in self.built.items() if k in keys}
        on = {b.base_key for b in self.built.values()}
        self.bases = {k: b for k, b in self.bases.items() if k in on}


@dataclass(frozen=True)
class Fidelity:
    """The images one round trains and validates each candidate's head on (class-balanced samples, or with
    `whole` the entire training and validation splits)."""

    round: int
    per_class: int
    train: list[Item]
    val: list[Item]
    whole: bool = False


def feature_name(c: Candidate, weights: Weights) -> str:
    """The feature file of a candidate: its slug and what its features depend on."""
    return f"{c.slug}-{digest([c.key, weights.identity])}"


def evaluate(c: Candidate, weights: Weights, fid: Fidelity, shared: Shared,
             file_figures: dict[str, Any] | None) -> dict[str, Any]:
    """Train the candidate's head on the round's sample and measure it; convert and time its file when
    `file_figures` (an earlier round's) is None.

    Returns:
        The figures (JSON-ready): accuracy and its standard error, images used, latency_ms, size_mb,
        ram_kb, file, and seconds per part (build, features, head, run, export, latency).
    """
    import keras

    from edgetl.core.native import release_free_memory

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    tcfg = replace(shared.train_cfg, backbone=c.backbone, alpha=c.alpha, image_size=c.image_size,
                   weights=weights.value)
    clf, spec, mode = _built(c, tcfg, shared)
    seconds["build"] = time.perf_counter() - t0
    store = FeatureStore(shared.folder, feature_name(c, weights))
    engine = feature_engine(tcfg.feature_cache, fid)
    store.fill(clf, shared.splits, fid.train + fid.val, tcfg.batch_size, Bars(shared.reporter), shared.placement,
               seconds, engine=engine, any_size=_any_size(c, spec, mode, shared) if engine == "tflite" else None)
    train_xy, val_xy = store.get(fid.train), store.get(fid.val)
    steps = -(-len(fid.train) // tcfg.batch_size)
    tcfg = replace(tcfg, epochs=max(tcfg.epochs, math.ceil(MIN_HEAD_STEPS / steps)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgetl-search-") as work:
        probs, epochs = _fit_head(Path(work), clf, tcfg, train_xy, val_xy, shared)
    seconds["head"] = time.perf_counter() - t0
    if file_figures is None:
        t0 = time.perf_counter()
        run = candidate_run(shared.folder / CANDIDATES_DIR / c.slug, c, tcfg, spec, mode, clf, fid, shared)
        file_figures = measure_file(run, shared.cfg.target, shared.threads, len(fid.train))
        file_seconds = file_figures.pop("seconds")
        seconds["latency"] = file_seconds["latency"]
        seconds["export"] = time.perf_counter() - t0 - seconds["latency"]
    accuracy = float((probs.argmax(1) == val_xy[1]).mean())
    keras.backend.clear_session()  # the next candidate builds on an empty graph (kept classifiers still run)
    release_free_memory()
    return {
        "key": c.key, "backbone": c.backbone, "alpha": c.alpha, "image_size": c.image_size,
        "weights": Path(weights.value).name if weights.is_file else weights.value,
        "round": fid.round, "per_class": None if fid.whole else fid.per_class,
        "train_images": len(fid.train), "val_images": len(fid.val), "head_epochs": epochs,
        "accuracy": round(accuracy, 4), "accuracy_stderr": round(stderr(accuracy, len(fid.val)), 4),
        **{k: file_figures.get(k) for k in ("latency_ms", "size_mb", "ram_kb", "file", "mode")},
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }


def feature_engine(feature_cache: str, fid: Fidelity) -> str:
    """The engine of a round's feature pass (edgetl.train.engine's ENGINES) under `--feature-cache`.

    On a sample, "auto" converts the base (on a CPU; the pass still checks it and goes back to TensorFlow when
    TFLite is not faster): the cost model weighs a conversion against the sample's images alone, but the candidate's
    later rounds, and `--train`, load it from the cache. On the flowers, MobileNetV2 0.35 at 96 and 128 stayed on
    TensorFlow for 640 images (about 1.0 s of base each round, and a 0.4 s trace) where its conversion took 0.3 s.
    The whole splits keep "auto": the engine `edgetl train` picks on the same images.
    """
    from edgetl.train.engine import ENGINES

    engine = feature_cache if feature_cache in ENGINES else "auto"  # the search needs features: "off" is "auto"
    if engine == "auto" and not fid.whole:
        return "tflite"
    return engine


def stderr(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on n images (binomial): its uncertainty from n alone."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n) if n else math.inf


def _built(c: Candidate, tcfg: TrainConfig, shared: Shared) -> tuple[Classifier, Any, str]:
    """The candidate's classifier: kept from an earlier round with its head reset to its initial variables (the
    same head training as a fresh build, to the bit), or built and kept."""
    kept = shared.built.get(c.key)
    if kept is not None:
        _reset_head(kept.clf, kept.head_state, tcfg.seed)
        return kept.clf, kept.spec, kept.mode
    clf, spec, mode = _build(c, tcfg, shared)
    shared.built[c.key] = Built(clf, spec, mode, [np.array(v) for v in clf.head.variables],
                                shared_base_key(c, spec, tcfg.weights))
    return clf, spec, mode


def shared_base_key(c: Candidate, spec: Any, weights: str) -> str | None:
    """The key of the base a candidate shares with the other sizes of its backbone and width, or None (built alone).

    Keras Applications only (other backbones are built for one size), not with "imagenet" weights (Keras downloads
    MobileNet's per input size, and a base built for any size would load the 224-pixel file), and at multiples of
    32 pixels only: MobileNetV2/V3 and EfficientNet pad each stride-2 stage by its input's parity (Keras'
    correct_pad), which a base built for any size takes as even. Their 5 stride-2 stages all see even sizes when
    the size is a multiple of 32; at 48 the last sees 3, and the features differ.
    """
    if spec.kind != "keras" or weights == "imagenet" or c.image_size % 32:
        return None
    return digest([c.backbone, c.alpha, weights])


def _any_size(c: Candidate, spec: Any, mode: str, shared: Shared) -> AnySizeForward | None:
    """The trace and conversion the candidate's feature pass shares with the other sizes on its base, or None.

    Sample rounds only (feature_engine's "tflite"): there TensorFlow computes only the probe's images, through the
    graph traced for any size. The whole splits trace their own, as `edgetl train` does, so that every image's
    features are the ones training computes."""
    kept = shared.built.get(c.key)
    base = shared.bases.get(kept.base_key) if kept is not None and kept.base_key is not None else None
    if base is None:
        return None
    if base.forward is None:
        from edgetl.model.classifier import build_classifier
        from edgetl.train.conversion import AnySizeForward

        with shared.placement.strategy.scope():
            any_clf = build_classifier(base.base, image_size=None, num_classes=len(shared.splits.class_names),
                                       preprocessing=mode, dropout=0.0, normalization=spec.normalization)
        base.forward = AnySizeForward(any_clf.extractor)
    return base.forward


def _reset_head(clf: Classifier, head_state: list[np.ndarray], seed: int) -> None:
    import keras

    for var, value in zip(clf.head.variables, head_state, strict=True):
        var.assign(value)
    keras.utils.set_random_seed(seed)  # as a build leaves it: the head's data order is seeded from it


def _build(c: Candidate, tcfg: TrainConfig, shared: Shared) -> tuple[Classifier, Any, str]:
    """The classifier `edgetl train` builds for the candidate (its head's initial values included), on the base its
    backbone and width share across sizes when there is one (built here, for any size, on first use)."""
    import keras

    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier

    spec = resolve_backbone(c.backbone)
    mode = spec.default_preprocessing
    key = shared_base_key(c, spec, tcfg.weights)
    kept = shared.bases.get(key) if key is not None else None
    keras.utils.set_random_seed(tcfg.seed)
    with shared.placement.strategy.scope():
        base = kept.base if kept is not None else build_base(
            spec, weights=tcfg.weights, alpha=c.alpha, image_size=None if key is not None else c.image_size)
        clf = build_classifier(base, image_size=c.image_size, num_classes=len(shared.splits.class_names),
                               preprocessing=mode, dropout=tcfg.dropout, seed=tcfg.seed,
                               normalization=spec.normalization)
    if kept is not None:
        _reset_head(clf, kept.head_state, tcfg.seed)
    elif key is not None:
        shared.bases[key] = Base(base, [np.array(v) for v in clf.head.variables])
    return clf, spec, mode


def _fit_head(folder: Path, clf: Classifier, tcfg: TrainConfig, train_xy: Any, val_xy: Any,
              shared: Shared) -> tuple[np.ndarray, int]:
    """The train job's head stage on cached features (early stopping on val loss, best weights kept), without
    its files: a candidate's head is never resumed, so neither a checkpoint nor a durable history row is written
    per epoch (see scratch_fit)."""
    from edgetl.train.fit import fit_stage

    history, ckpt = scratch_fit(folder)
    epochs = fit_stage(clf.head, train_xy, val_xy, tcfg, tcfg.lr, tcfg.epochs, "head", history,
                       Bars(shared.reporter), shared.placement, ckpt, None)
    ckpt.remove()
    probs = clf.head.predict(val_xy[0], batch_size=256, verbose=0)
    return np.asarray(probs), epochs


def scratch_fit(folder: Path) -> tuple[Any, Any]:
    """A History and Checkpoints for a fit that is never resumed: rows kept in memory, no checkpoint written.

    The train job makes every epoch durable (the weights and optimizer state, the best weights, state.json and
    a history row, each fsync'd) so that --resume can continue; a search candidate's head runs at least
    MIN_HEAD_STEPS steps, 60 epochs on round 1's sample, and its folder is deleted after the fit, so those writes
    were pure cost (BENCHMARKS.md, "train: fixed costs"). Early stopping keeps its best weights in memory.
    """
    from edgetl.train.checkpoint import Checkpoints, State
    from edgetl.train.history import History

    class Rows(History):
        def __init__(self, path: Path) -> None:  # no history.csv
            self.path, self.rows = path, []

        def append(self, row: dict[str, Any]) -> None:
            self.rows.append(row)

    class NoCheckpoints(Checkpoints):
        def save(self, state: State, model: Any = None, best: list[np.ndarray] | None = None) -> State:
            return state

    return Rows(folder / "history.csv"), NoCheckpoints(folder)


class LoadedRun(Run):
    """A run whose model is the one in memory: the search exports each candidate's classifier as `edgetl export`
    would export its run, without saving the model and loading it back (about 3 s a candidate)."""

    def __init__(self, path: Path, manifest: dict[str, Any], model: Any) -> None:
        super().__init__(path, manifest)
        self.model = model

    def load_model(self, safe_mode: bool = True) -> Any:
        return self.model


def candidate_run(folder: Path, c: Candidate, tcfg: TrainConfig, spec: Any, mode: str, clf: Classifier,
                  fid: Fidelity, shared: Shared) -> LoadedRun:
    """The candidate as a run of the round's sample (its manifest as the train job writes it), in memory."""
    from edgetl.data.splits import DataSplits
    from edgetl.train.job import run_manifest

    if folder.exists():  # the search's own folder: an earlier attempt's files
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    splits = DataSplits(root=shared.splits.root, class_names=shared.splits.class_names, train=list(fid.train),
                        val=list(fid.val))
    manifest = run_manifest(replace(tcfg, output=str(folder)), spec, c.image_size, mode, splits, clf)
    return LoadedRun(folder, manifest, clf.model)


def measure_file(run: Run, target: str, threads: int, calibration_pool: int) -> dict[str, Any]:
    """The target's file of a run: exported as `edgetl export --target` makes it, its size, and its batch-1
    latency in its runtime on this machine (edgetl.runtime's timer, as export verification times files).

    The file's accuracy is not measured (the search compares candidates on their float heads).
    """
    from edgetl.export import export_run
    from edgetl.runtime import median_ms, open_model

    report = export_run(run, target=target, verify=False, output=run.path, force=True, threads=threads,
                        calibration_samples=max(1, min(CALIBRATION_SAMPLES, calibration_pool)),
                        bias_correction=False)
    t0 = time.perf_counter()
    row = report.rows[0]
    path = Path(row.path)
    runner = open_model(path, threads=threads)
    try:
        size = runner.image_size
        image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
        latency = median_ms(lambda: runner.predict(image))
    finally:
        runner.close()
    return {"latency_ms": latency, "size_mb": row.size_mb, "ram_kb": None, "file": str(path),
            "mode": f"{row.format} {row.mode}", "seconds": {"latency": time.perf_counter() - t0}}
