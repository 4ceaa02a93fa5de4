"""Evaluate any artifact on labelled images: accuracy, top-k, per-class figures, mistakes, the plot.

The model is opened through edgetl.runtime, so a run directory, a .keras file, a SavedModel, a
.tflite and a .onnx file are all measured the same way: images decoded by edgetl.data at the
image size the model's own metadata names, probabilities out, edgetl.core.metrics on top.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import DataError, ModelError, UsageError
from edgetl.core.metrics import classification_metrics, format_figure, macro_averages
from edgetl.core.progress import Reporter

if TYPE_CHECKING:
    from edgetl.data import Item
    from edgetl.runtime import Runner

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32  # images per runtime call
DEFAULT_MAX_BAD_FRACTION = 0.05  # unreadable image files tolerated, as a fraction of all
_LOAD_CHUNK = 256  # images decoded at a time: bounded memory on large evaluation folders


def resolve_data(runner: Runner, data: str | os.PathLike[str] | None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> tuple[str, list[Item], list[str], str]:
    """The images to evaluate on: a folder given by the user, or a run's own test split.

    Returns:
        (root, items, class folders found, source) where source is "folder", "run test split" or
        "run val split".

    Raises:
        UsageError: no data given and the model is not a run directory.
        DataError: the folder is missing, empty, or holds classes the model does not know.
    """
    from edgetl.data import scan_eval_folder

    if data is not None:
        items, found = scan_eval_folder(data, runner.class_names, max_bad_fraction=max_bad_fraction)
        return os.fspath(data), items, found, "folder"
    path = Path(runner.path)
    if not (path.is_dir() and (path / "manifest.json").is_file()):
        raise UsageError(f"no --data given for '{path}'. Pass --data DIR (one subfolder per class); only a run "
                         "directory can be evaluated on its own test split.")
    from edgetl.rundir import load_run

    splits = load_run(path).splits()
    source, items = ("run test split", splits.test) if splits.test else ("run val split", splits.val)
    if not items:
        raise DataError(f"run '{path}' recorded no test or val images. Pass --data DIR.")
    if not Path(splits.root).is_dir():
        raise DataError(f"the data folder of run '{path}' ('{splits.root}') is gone. Pass --data DIR.")
    if splits.class_names != runner.class_names:
        raise DataError(f"the data split of run '{path}' has other classes than its model. Pass --data DIR.")
    found = sorted({splits.class_names[it.label] for it in items})
    return splits.root, list(items), found, source


def predict_items(runners: Sequence[Runner], root: str, items: Sequence[Item], *,
                  batch_size: int = DEFAULT_BATCH_SIZE, reporter: Reporter | None = None) -> list[np.ndarray]:
    """Run every runner on the same images, decoding each chunk once per image size.

    Returns:
        One (N, classes) float32 array per runner.
    """
    from edgetl.data import load_images

    reporter = reporter or Reporter()
    outs: list[list[np.ndarray]] = [[] for _ in runners]
    reporter.start("evaluating", len(items))
    try:
        for start in range(0, len(items), _LOAD_CHUNK):
            chunk = items[start:start + _LOAD_CHUNK]
            by_size: dict[int, np.ndarray] = {}
            for i, r in enumerate(runners):
                if r.image_size not in by_size:
                    by_size[r.image_size] = load_images(root, chunk, (r.image_size, r.image_size))
                outs[i].append(r.predict(by_size[r.image_size], batch_size=batch_size))
            reporter.advance(len(chunk))
    finally:
        reporter.finish()
    return [np.concatenate(o) if o else np.zeros((0, len(r.class_names)), np.float32)
            for o, r in zip(outs, runners, strict=True)]


def evaluate(runner: Runner, data: str | os.PathLike[str] | None = None, *, top_k: int = DEFAULT_TOP_K,
             errors: int = 0, batch_size: int = DEFAULT_BATCH_SIZE, reference: Runner | None = None,
             max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, reporter: Reporter | None = None) -> dict[str, Any]:
    """Measure a model on labelled images.

    Args:
        runner: an edgetl.runtime Runner.
        data: a folder with one subfolder per class (a subset of the model's classes is fine), or a
            split-folders layout (its test/ is used); None: a run directory's own test split.
        top_k: k of the top-k accuracy.
        errors: how many misclassified images to list (most confident mistakes first).
        batch_size: images per runtime call.
        reference: another Runner (e.g. the Keras model) run on the same images, for agreement and drop.
        max_bad_fraction: the largest fraction of unreadable images tolerated.
        reporter: receives progress.

    Returns:
        A JSON-ready dict: model, data, accuracy, top_k, k, per_class, macro, confusion_matrix,
        class_names, errors, reference, seconds.

    Raises:
        UsageError: bad option values.
        DataError: the data cannot be used (unknown classes are named).
        ModelError: the model or reference cannot run, or they disagree on classes.
    """
    if top_k < 1:
        raise UsageError(f"--top-k {top_k} is out of range. Use 1 or more.")
    if errors < 0:
        raise UsageError(f"--errors {errors} is out of range. Use 0 or more.")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is out of range. Use 1 or more.")
    if reference is not None and list(reference.class_names) != list(runner.class_names):
        raise ModelError(f"the reference '{reference.path}' has other classes ({', '.join(reference.class_names)}) "
                         f"than '{runner.path}' ({', '.join(runner.class_names)}). Compare models of the same run.")
    t0 = time.perf_counter()
    root, items, found, source = resolve_data(runner, data, max_bad_fraction)
    runners = [runner] + ([reference] if reference is not None else [])
    outs = predict_items(runners, root, items, batch_size=batch_size, reporter=reporter)
    probs = outs[0]
    y = np.array([it.label for it in items], dtype=np.int64)
    names = list(runner.class_names)
    m = classification_metrics(y, probs, names, top_k=top_k)
    result: dict[str, Any] = {
        "model": model_summary(runner),
        "data": {"root": str(root), "source": source, "images": len(items), "classes": found,
                 "fingerprint": data_fingerprint(root, items, names)},
        "class_names": names,
        **m,
        "macro": macro_averages(m["per_class"]),
        "errors": list_errors(root, items, probs, names, errors),
        "reference": None,
    }
    if reference is not None:
        ref = outs[1]
        rm = classification_metrics(y, ref, names, top_k=top_k)
        result["reference"] = {
            "model": model_summary(reference),
            "accuracy": rm["accuracy"],
            "top_k": rm["top_k"],
            "agreement": float((ref.argmax(1) == probs.argmax(1)).mean()) if len(y) else None,
            "drop": (rm["accuracy"] - m["accuracy"]) if len(y) else None,
            "max_abs_diff": float(np.abs(ref - probs).max()) if len(y) else None,
        }
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def model_summary(runner: Runner) -> dict[str, Any]:
    """What the reports say about a model: path, kind, quantization, size, image size, dtype, classes."""
    return {"path": str(runner.path), "kind": runner.kind, "quantization": runner.quantization,
            "size_bytes": runner.size_bytes, "image_size": runner.image_size, "input_dtype": runner.input_dtype,
            "classes": len(runner.class_names)}


def data_fingerprint(root: str | os.PathLike[str], items: Sequence[Item], class_names: Sequence[str]) -> str:
    """sha256 over (path, class name, file size) of the images evaluated.

    Tells whether two evaluations saw the same images. Sizes, not modification times: a CI
    checkout rewrites every mtime but keeps the bytes. Contents are not hashed (that would read
    every file twice); two different images of the same name and size are not told apart.
    """
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.path):
        try:
            size = os.stat(os.path.join(root, it.path)).st_size
        except OSError:
            size = -1
        h.update(f"{it.path}\0{class_names[it.label]}\0{size}\n".encode())
    return h.hexdigest()


def list_errors(root: str, items: Sequence[Item], probs: np.ndarray, class_names: Sequence[str], n: int
                ) -> list[dict[str, Any]]:
    """The n misclassified images the model was most confident about."""
    if n <= 0 or len(items) == 0:
        return []
    pred = probs.argmax(1)
    wrong = [i for i in range(len(items)) if pred[i] != items[i].label]
    wrong.sort(key=lambda i: -float(probs[i, pred[i]]))
    out = []
    for i in wrong[:n]:
        it = items[i]
        out.append({"path": os.path.join(root, it.path), "true": class_names[it.label],
                    "predicted": class_names[int(pred[i])], "confidence": float(probs[i, pred[i]]),
                    "true_probability": float(probs[i, it.label])})
    return out


def write_plots(result: dict[str, Any], directory: str | os.PathLike[str]) -> list[str]:
    """The confusion matrix (and per-class recall) as PNGs in `directory`; returns the paths written."""
    from edgetl.core.plots import plot_confusion

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--plots '{d}' is a file. Pass a folder.")
    title = f"Confusion matrix: {Path(result['model']['path']).name} (accuracy {format_figure(result.get('accuracy'))})"
    paths = []
    created = not d.exists()
    cm_path = d / "confusion_matrix.png"
    try:
        plot_confusion(result["confusion_matrix"], result["class_names"], cm_path, title=title)
    except BaseException:
        # A full disk or an interrupt must not leave behind an empty folder that this call made.
        if created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    paths.append(str(cm_path))
    return paths
