"""Evaluate any artifact on labelled images; baselines, CI gate checks and JUnit XML.

The model is opened through edgetl.runtime, so a run directory, a .keras file, a SavedModel, a
.tflite and a .onnx file are all measured the same way: images decoded by edgetl.data at the
image size the model's own metadata names, probabilities out, edgetl.core.metrics on top.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__
from edgetl.core.errors import DataError, ModelError, UsageError
from edgetl.core.progress import Reporter

log = logging.getLogger("edgetl")

BASELINE_SCHEMA = 1
_LOAD_CHUNK = 256  # images decoded at a time: bounded memory on large evaluation folders
_EPS = 1e-9  # figures equal to a threshold pass, whatever the float rounding


@dataclass
class Check:
    """One gate check: what was measured, against what, and whether it passed."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Evaluation


def resolve_data(runner: Any, data: str | os.PathLike[str] | None, max_bad_fraction: float = 0.05
                 ) -> tuple[str, list[Any], list[str], str]:
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


def predict_items(runners: Sequence[Any], root: str, items: Sequence[Any], *, batch_size: int = 32,
                  reporter: Reporter | None = None) -> list[np.ndarray]:
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


def evaluate(runner: Any, data: str | os.PathLike[str] | None = None, *, top_k: int = 5, errors: int = 0,
             batch_size: int = 32, reference: Any = None, max_bad_fraction: float = 0.05,
             reporter: Reporter | None = None) -> dict[str, Any]:
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
    from edgetl.core.metrics import classification_metrics

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


def model_summary(runner: Any) -> dict[str, Any]:
    """What the reports say about a model: path, kind, quantization, size, image size, dtype, classes."""
    return {"path": str(runner.path), "kind": runner.kind, "quantization": runner.quantization,
            "size_bytes": runner.size_bytes, "image_size": runner.image_size, "input_dtype": runner.input_dtype,
            "classes": len(runner.class_names)}


def macro_averages(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Unweighted means of precision, recall and F1 over the classes present in the data."""
    present = [v for v in per_class.values() if v.get("support")]
    if not present:
        return {"precision": None, "recall": None, "f1": None}
    return {k: float(np.mean([v[k] for v in present])) for k in ("precision", "recall", "f1")}


def data_fingerprint(root: str | os.PathLike[str], items: Sequence[Any], class_names: Sequence[str]) -> str:
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


def list_errors(root: str, items: Sequence[Any], probs: np.ndarray, class_names: Sequence[str], n: int
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


# ----------------------------------------------------------------------------------------------
# Baselines


def make_baseline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a later evaluation is compared with (--save-baseline)."""
    return {
        "edgetl_baseline": BASELINE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgetl_version": __version__,
        "model": result["model"],
        "data": result["data"],
        "samples": result["samples"],
        "accuracy": result["accuracy"],
        "top_k": result["top_k"],
        "k": result["k"],
        "per_class": {name: {"recall": v["recall"], "precision": v["precision"], "f1": v["f1"],
                             "support": v["support"]} for name, v in result["per_class"].items()},
    }


def save_baseline(result: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the baseline of `result` to `path` atomically; returns what was written."""
    from edgetl.core.fileio import write_json

    base = make_baseline(result)
    write_json(path, base)
    return base


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline written by --save-baseline.

    Raises:
        UsageError: the file is missing, not JSON, or not an edgetl baseline.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"baseline file '{p}' does not exist. Write one with --save-baseline FILE.") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"baseline file '{p}' cannot be read ({exc.__class__.__name__}). "
                         "Write it again with --save-baseline FILE.") from None
    if not isinstance(data, dict) or not isinstance(data.get("accuracy"), (int, float)):
        raise UsageError(f"'{p}' is not an edgetl baseline (no accuracy figure). Write one with --save-baseline FILE.")
    if data.get("edgetl_baseline", BASELINE_SCHEMA) != BASELINE_SCHEMA:
        raise UsageError(f"baseline '{p}' has schema {data.get('edgetl_baseline')}; this edgetl reads "
                         f"{BASELINE_SCHEMA}. Write it again with --save-baseline FILE.")
    return data


# ----------------------------------------------------------------------------------------------
# The gate


def check_fraction(name: str, value: float | None) -> None:
    """Raise UsageError unless value is None or within 0..1."""
    if value is not None and (math.isnan(value) or not 0.0 <= value <= 1.0):
        raise UsageError(f"{name} {value} is out of range. Use a fraction between 0 and 1 (e.g. 0.9).")


def gate(result: dict[str, Any], *, min_accuracy: float | None = None, max_drop: float | None = None,
         baseline: dict[str, Any] | None = None, min_class_recall: float | None = None,
         min_agreement: float | None = None) -> list[Check]:
    """The checks the options ask for, each passed or failed.

    Args:
        result: an `evaluate` result.
        min_accuracy: the lowest accuracy allowed.
        max_drop: the largest accuracy drop allowed against the baseline and the reference (each
            that is present gets its own check).
        baseline: a loaded baseline.
        min_class_recall: the lowest recall allowed for each class present in the data.
        min_agreement: the lowest top-1 agreement with the reference.

    Returns:
        The checks, in a stable order.

    Raises:
        UsageError: out-of-range thresholds, or a comparison with nothing to compare with.
    """
    for name, v in (("--min-accuracy", min_accuracy), ("--max-drop", max_drop),
                    ("--min-class-recall", min_class_recall), ("--min-agreement", min_agreement)):
        check_fraction(name, v)
    ref = result.get("reference")
    if max_drop is not None and baseline is None and ref is None:
        raise UsageError("--max-drop needs something to compare with. Add --baseline FILE or --reference MODEL.")
    if min_agreement is not None and ref is None:
        raise UsageError("--min-agreement needs --reference MODEL (e.g. the run's Keras model).")
    acc = result.get("accuracy")
    checks: list[Check] = []
    if min_accuracy is not None:
        ok = acc is not None and acc >= min_accuracy - _EPS
        checks.append(Check("min_accuracy", ok, acc, min_accuracy,
                            f"accuracy {_f(acc)} {'>=' if ok else '<'} minimum {_f(min_accuracy)}"))
    if max_drop is not None and baseline is not None:
        base = float(baseline["accuracy"])
        drop = base - acc if acc is not None else None
        ok = drop is not None and drop <= max_drop + _EPS
        checks.append(Check("max_drop_vs_baseline", ok, drop, max_drop,
                            f"accuracy {_f(acc)} vs baseline {_f(base)}: drop {_f(drop)} "
                            f"{'<=' if ok else '>'} allowed {_f(max_drop)}"))
    if max_drop is not None and ref is not None:
        drop = ref.get("drop")
        ok = drop is not None and drop <= max_drop + _EPS
        checks.append(Check("max_drop_vs_reference", ok, drop, max_drop,
                            f"accuracy {_f(acc)} vs reference {_f(ref.get('accuracy'))}: drop {_f(drop)} "
                            f"{'<=' if ok else '>'} allowed {_f(max_drop)}"))
    if min_agreement is not None and ref is not None:
        agr = ref.get("agreement")
        ok = agr is not None and agr >= min_agreement - _EPS
        checks.append(Check("min_agreement", ok, agr, min_agreement,
                            f"top-1 agreement with the reference {_f(agr)} {'>=' if ok else '<'} minimum "
                            f"{_f(min_agreement)}"))
    if min_class_recall is not None:
        for name, v in result.get("per_class", {}).items():
            if not v.get("support"):
                continue  # a class absent from the data has no recall to gate
            rec = v.get("recall")
            ok = rec is not None and rec >= min_class_recall - _EPS
            checks.append(Check(f"min_class_recall[{name}]", ok, rec, min_class_recall,
                                f"recall of '{name}' {_f(rec)} {'>=' if ok else '<'} minimum {_f(min_class_recall)} "
                                f"({v.get('support')} images)"))
    return checks


def baseline_warnings(result: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Why a comparison with this baseline may mislead (other images, other classes)."""
    out = []
    bdata = baseline.get("data") or {}
    if bdata.get("fingerprint") and bdata.get("fingerprint") != result["data"].get("fingerprint"):
        out.append(f"the baseline was measured on other images ({baseline.get('samples')} images, now "
                   f"{result.get('samples')}); the comparison may mislead")
    return out


def gate_summary(checks: Sequence[Check]) -> str:
    """One line naming the failed checks, for the error message of a failed gate."""
    failed = [c for c in checks if not c.passed]
    return f"accuracy gate failed ({len(failed)} of {len(checks)} checks): " + "; ".join(c.message for c in failed)


# ----------------------------------------------------------------------------------------------
# JUnit XML


def junit_xml(result: dict[str, Any], checks: Sequence[Check], suite: str = "edgetl evaluate") -> str:
    """JUnit XML: one testcase per check, failures carrying the figures (a passing case when there are none)."""
    model = result.get("model", {})
    name = Path(str(model.get("path", "model"))).name or "model"
    failures = sum(1 for c in checks if not c.passed)
    cases = list(checks) or [Check("evaluate", True, result.get("accuracy"), None,
                                   f"accuracy {_f(result.get('accuracy'))} (no gate asked for)")]
    ts = ET.Element("testsuites", name="edgetl", tests=str(len(cases)), failures=str(failures), errors="0",
                    time=f"{float(result.get('seconds') or 0):.3f}")
    s = ET.SubElement(ts, "testsuite", name=f"{suite}: {name}", tests=str(len(cases)), failures=str(failures),
                      errors="0", skipped="0", time=f"{float(result.get('seconds') or 0):.3f}",
                      timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      hostname=socket.gethostname() or platform.node())
    props = ET.SubElement(s, "properties")
    prop_values = {"model": model.get("path"), "kind": model.get("kind"), "quantization": model.get("quantization"),
                   "data": (result.get("data") or {}).get("root"), "images": result.get("samples"),
                   "accuracy": result.get("accuracy"), "top_k": result.get("top_k"), "k": result.get("k"),
                   "edgetl_version": __version__}
    if result.get("reference"):
        prop_values["reference"] = result["reference"]["model"]["path"]
        prop_values["reference_accuracy"] = result["reference"]["accuracy"]
        prop_values["agreement"] = result["reference"]["agreement"]
    for k, v in prop_values.items():
        ET.SubElement(props, "property", name=k, value="" if v is None else str(v))
    for c in cases:
        tc = ET.SubElement(s, "testcase", classname=f"edgetl.gate.{_xml_safe_name(name)}", name=c.name, time="0")
        if not c.passed:
            f = ET.SubElement(tc, "failure", message=c.message, type="AccuracyRegression")
            f.text = f"{c.message}\nvalue: {_f(c.value)}\nthreshold: {_f(c.threshold)}\nmodel: {model.get('path')}\n"
        else:
            ET.SubElement(tc, "system-out").text = c.message
    ET.indent(ts)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n"


def write_junit(path: str | os.PathLike[str], result: dict[str, Any], checks: Sequence[Check]) -> None:
    """Write junit_xml(...) atomically."""
    from edgetl.core.fileio import write_text

    write_text(path, junit_xml(result, checks))


def write_plots(result: dict[str, Any], directory: str | os.PathLike[str]) -> list[str]:
    """The confusion matrix (and per-class recall) as PNGs in `directory`; returns the paths written."""
    from edgetl.core.plots import plot_confusion

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"--plots '{d}' is a file. Pass a folder.")
    title = f"Confusion matrix: {Path(result['model']['path']).name} (accuracy {_f(result.get('accuracy'))})"
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


def _xml_safe_name(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


def _f(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)


__all__ = ["Check", "baseline_warnings", "check_fraction", "data_fingerprint", "evaluate", "gate",
           "gate_summary", "junit_xml", "list_errors", "load_baseline", "make_baseline", "predict_items",
           "resolve_data", "save_baseline", "write_junit", "write_plots"]
