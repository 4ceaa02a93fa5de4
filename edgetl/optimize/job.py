"""`edgetl optimize`: fine-tune a trained run with quantization-aware training (QAT) or pruning, as a new run.

The run's Keras 3 classifier is rebuilt in tf_keras (twin.py), since tensorflow-model-optimization
works on Keras 2 models only; tfmot wraps it for QAT (qat.py) or pruning (prune.py); it is fine-tuned
on the run's training split; then the weights go back into the Keras 3 classifier, so the new run is
a run like any other (model.keras in safe mode), written through edgetl.rundir as train's are. A QAT
run also keeps its fake-quantized SavedModel (rundir.QAT_SAVED_MODEL) for int8 exports.

tf_keras and tfmot are imported only inside functions (tfmot.load_tfmot), so Keras 3 code keeps
working in the same process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import rundir
from edgetl.core.errors import DataError, ModelError, UsageError
from edgetl.core.progress import Reporter
from edgetl.optimize.compare import compare_runs
from edgetl.optimize.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK,
    DEFAULT_SCHEDULE,
    DEFAULT_SPARSITY,
    OptimizeOptions,
)
from edgetl.optimize.prune import kernel_sparsity, prune_for_training, pruning_end_step
from edgetl.optimize.qat import (
    calibration_images,
    init_ranges,
    qat_weights_to_twin,
    quantize_for_training,
    save_qat_model,
)
from edgetl.optimize.tfmot import load_tfmot, require_tfmot
from edgetl.optimize.twin import TWIN_TOLERANCE, build_twin, check_source, copy_weights, max_output_diff, probe_images

if TYPE_CHECKING:
    import keras

    from edgetl.data import DataSplits
    from edgetl.rundir import Run

REPORT_FILE = "optimize_report.json"
_EXPORT_NOTE = ("int8 and int8-full TFLite convert from saved_model with the ranges learned in training "
                "(edgetl.optimize.qat_tflite); other modes use model.keras")


@dataclass
class OptimizeResult:
    """What `optimize_run` produced.

    metrics: val/test metrics of the float classifier (model.keras) of the new run.
    qat_metrics: test (else val) accuracy of the fake-quantized tf_keras model, for QAT.
    sparsity: achieved fraction of zero weights in prunable kernels (pruning; also measured for QAT).
    table: rows of the comparison (float, PTQ int8, QAT int8, pruned) when compare was on.
    """

    run_dir: Path
    parent: Path
    method: str
    metrics: dict[str, Any]
    qat_metrics: dict[str, Any] | None = None
    sparsity: float | None = None
    epochs_run: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    report_path: Path | None = None


def optimize_run(run_dir: str | os.PathLike[str], *, method: str, epochs: int | None = None,
                 output: str | os.PathLike[str] | None, lr: float | None = None,
                 sparsity: float = DEFAULT_SPARSITY, schedule: str = DEFAULT_SCHEDULE, block: int = DEFAULT_BLOCK,
                 batch_size: int = DEFAULT_BATCH_SIZE, force: bool = False, compare: bool = False,
                 threads: int | None = None, reporter: Reporter | None = None) -> OptimizeResult:
    """Fine-tune a trained run with QAT or pruning and write the result as a new run directory.

    Args:
        run_dir: the trained run (edgetl train --output).
        method, epochs, lr, sparsity, schedule, block, batch_size: see OptimizeOptions (epochs and lr
            default per method: DEFAULT_EPOCHS, DEFAULT_LR).
        output: the new run directory.
        force: replace `output` if it holds a run.
        compare: also export float, PTQ int8-full and the optimized model to TFLite and measure them
            (the table of optimize_report.json); slower.
        threads: CPU threads for the comparison's latency.
        reporter: progress events.

    Returns:
        The OptimizeResult.

    Raises:
        UsageError: bad options; ModelError: the run cannot be rebuilt or optimized; RunExistsError:
            `output` holds files and force is off; DataError: the run's images are gone.
    """
    reporter = reporter or Reporter()
    opts = OptimizeOptions(method=method, epochs=epochs, lr=lr, sparsity=sparsity, schedule=schedule, block=block,
                           batch_size=batch_size)
    opts.check()
    require_tfmot(f"edgetl optimize --method {opts.method}")
    src = rundir.load_run(run_dir)
    check_source(src)
    out = _check_output(src, output, force)
    splits = _check_data(src)

    t0 = time.perf_counter()
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import keras

    seed = int((src.manifest.get("config") or {}).get("seed", 42))
    keras.utils.set_random_seed(seed)
    tfk, tfmot = load_tfmot()
    tfk.utils.set_random_seed(seed)
    model3, twin, diff = _rebuild(src, splits, tfk, reporter)
    trainable, rows, seconds = _fine_tune(twin, splits, src.image_size, opts, seed, tfk, tfmot, reporter, t0)
    if opts.method == "prune":
        copy_weights(tfmot.sparsity.keras.strip_pruning(trainable), model3)
    else:
        qat_weights_to_twin(trainable, twin)
        copy_weights(twin, model3)  # the float Keras 3 classifier now holds the fine-tuned weights

    t1 = time.perf_counter()
    metrics, qat_metrics = _evaluate(model3, trainable if opts.method == "qat" else None, splits, src.image_size,
                                     opts.batch_size)
    seconds["evaluate"] = round(time.perf_counter() - t1, 2)

    path = rundir.prepare_output(out, force=force)
    manifest = _new_manifest(src, opts)
    rundir.start_run(path, manifest, src.class_names)
    rundir.write_history(path / rundir.HISTORY_FILE, rows)
    sparsity_now = kernel_sparsity(model3)
    opt: dict[str, Any] = {"method": opts.method, "sparsity": round(sparsity_now, 4), "twin_max_diff": diff}
    if opts.method == "qat":
        save_qat_model(trainable, path / rundir.QAT_SAVED_MODEL, src.image_size)
        opt.update({"saved_model": rundir.QAT_SAVED_MODEL, "qat_metrics": qat_metrics, "export": _EXPORT_NOTE})
    else:
        opt.update({"target_sparsity": float(opts.sparsity), "block": int(opts.block)})
    seconds["total"] = round(time.perf_counter() - t0, 2)
    training = {"stage": opts.method, "epochs_run": {opts.method: len(rows)}, "feature_cache": False,
                "global_batch_size": opts.batch_size, "lr": opts.learning_rate, "seconds": seconds}
    manifest = rundir.finish_run(path, manifest, model=model3, metrics=metrics, history_rows=rows,
                                 title=f"{src.manifest['backbone']['name']} {opts.method}",
                                 updates={"training": training, "optimize": opt})

    result = OptimizeResult(run_dir=path, parent=src.path, method=opts.method, metrics=metrics,
                            qat_metrics=qat_metrics, sparsity=sparsity_now, epochs_run=len(rows), seconds=seconds)
    if compare:
        result.table = compare_runs(src.path, path, threads=threads, reporter=reporter)
    from edgetl.core.fileio import write_json

    result.report_path = path / REPORT_FILE
    write_json(result.report_path, {"edgetl_optimize": 1, "parent": str(src.path), "run": str(path),
                                    "method": opts.method, "sparsity": round(sparsity_now, 4),
                                    "qat_metrics": qat_metrics, "metrics": manifest["metrics"], "seconds": seconds,
                                    "table": result.table})
    return result


def _check_output(src: Run, output: str | os.PathLike[str] | None, force: bool) -> Path:
    """The new run's folder, refused before any work when it is missing, the source, or taken."""
    if output is None:
        raise UsageError("--output is required: the optimized model is written as a new run directory.")
    out = Path(output)
    if out.resolve() == src.path.resolve():
        raise UsageError(f"--output '{out}' is the source run. Choose a new folder.")
    if out.is_dir() and any(out.iterdir()) and not force:
        rundir.prepare_output(out, force=False)
    return out


def _check_data(src: Run) -> DataSplits:
    """The run's data splits, once its images are there to fine-tune on."""
    splits = src.splits()
    if not Path(splits.root).is_dir():
        raise DataError(f"the run's data folder '{splits.root}' is gone: fine-tuning needs its images. Put it back "
                        "at that path.")
    if not splits.train:
        raise DataError(f"run '{src.path}' has no training images to fine-tune on. Train it again with data.")
    return splits


def _rebuild(src: Run, splits: DataSplits, tfk: Any, reporter: Reporter) -> tuple[keras.Model, Any, float]:
    """(the run's Keras 3 classifier, its tf_keras twin, their largest output difference), checked equal."""
    reporter.start("rebuilding the model in tf_keras", None)
    model3 = src.load_model()
    twin = build_twin(src, model3, tfk)
    diff = max_output_diff(model3, twin, probe_images(splits, src.image_size))
    reporter.finish()
    if diff > TWIN_TOLERANCE:
        raise ModelError(f"the tf_keras rebuild of '{src.path}' differs from its model by {diff:.2g} (tolerance "
                         f"{TWIN_TOLERANCE:g}); optimizing it would not be the same model. Report this.")
    reporter.info(f"tf_keras rebuild matches the run's model (max difference {diff:.2g})")
    return model3, twin, diff


def _fine_tune(twin: Any, splits: DataSplits, size: int, opts: OptimizeOptions, seed: int, tfk: Any, tfmot: Any,
               reporter: Reporter, t0: float) -> tuple[Any, list[dict[str, Any]], dict[str, float]]:
    """Wrap the twin for QAT or pruning and fit it: (the trained tfmot model, history rows, seconds)."""
    from edgetl.data import make_dataset

    epochs, lr = opts.train_epochs, opts.learning_rate
    train_ds = make_dataset(splits.root, splits.train, (size, size), opts.batch_size, shuffle=True, seed=seed,
                            cache=True)
    val_ds = make_dataset(splits.root, splits.val, (size, size), opts.batch_size, cache=True) if splits.val else None
    steps = -(-len(splits.train) // opts.batch_size)
    callbacks: list[Any] = []
    if opts.method == "qat":
        reporter.start("inserting fake-quantization nodes", None)
        trainable = quantize_for_training(twin, tfk, tfmot)
        init_ranges(trainable, twin, calibration_images(splits, size))
        reporter.finish()
    else:
        trainable = prune_for_training(twin, tfk, tfmot, sparsity=opts.sparsity, schedule=opts.schedule,
                                       end_step=pruning_end_step(steps, epochs, opts.schedule), block=opts.block)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    trainable.compile(optimizer=tfk.optimizers.Adam(learning_rate=lr), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    rows: list[dict[str, Any]] = []
    callbacks.append(_history_callback(tfk, rows, opts.method, lr, epochs, steps, reporter))
    t1 = time.perf_counter()
    trainable.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0)
    return trainable, rows, {"build": round(t1 - t0, 2), "train": round(time.perf_counter() - t1, 2)}


def _evaluate(model3: keras.Model, qat_model: Any, splits: DataSplits, size: int, batch_size: int
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The float classifier's metrics on val and test (as train reports them); the fake-quantized one's accuracy."""
    import numpy as np

    from edgetl.core.metrics import classification_metrics
    from edgetl.data import make_dataset

    metrics: dict[str, Any] = {}
    qat_metrics: dict[str, Any] | None = None
    for name in ("val", "test"):
        items = getattr(splits, name)
        if not items:
            metrics[name] = None
            continue
        ds = make_dataset(splits.root, items, (size, size), batch_size)
        labels = np.array([i.label for i in items])
        probs = model3.predict(ds, verbose=0)
        metrics[name] = classification_metrics(labels, probs, splits.class_names)
        if qat_model is not None:
            qprobs = qat_model.predict(ds, verbose=0)
            qat_metrics = {"split": name, "accuracy": float((qprobs.argmax(1) == labels).mean())}
    return metrics, qat_metrics


def _history_callback(tfk: Any, rows: list[dict[str, Any]], stage: str, lr: float, epochs: int, steps: int,
                      reporter: Reporter) -> Any:
    """A tf_keras callback that reports progress and appends one history.csv row per epoch to `rows`."""

    class _Rows(tfk.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.t = time.perf_counter()
            reporter.start(f"{stage} epoch {epoch + 1}/{epochs}", steps)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            reporter.advance(1)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            logs = logs or {}
            reporter.finish()
            row: dict[str, Any] = {"stage": stage, "epoch": len(rows) + 1, "lr": lr,
                                   "seconds": round(time.perf_counter() - self.t, 3)}
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                row[key] = round(float(logs[key]), 6) if key in logs else ""
            rows.append(row)
            reporter.epoch(stage, epoch + 1, epochs, {k: float(v) for k, v in logs.items()})

    return _Rows()


def _new_manifest(src: Run, opts: OptimizeOptions) -> dict[str, Any]:
    """The new run's manifest, status running: the parent's data, backbone and input, a fresh header, the parent."""
    m = {k: v for k, v in src.manifest.items() if k not in ("training", "metrics", "finished", "optimize")}
    m.update(rundir.run_header())
    m["parent"] = {"run": str(src.path.resolve()), "method": opts.method, "options": opts.manifest_options()}
    return m
