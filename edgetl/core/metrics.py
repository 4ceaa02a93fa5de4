"""Classification metrics from labels and probabilities (numpy only), and how messages write them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], top_k: int = 5
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, top-k, per-class precision/recall/F1 and the confusion matrix.

    Balanced accuracy is the mean recall and macro-F1 the mean F1 over the classes present in y_true:
    on imbalanced data they show what plain accuracy hides (a small class the model never predicts).

    Args:
        y_true: int labels, shape (n,).
        probs: class probabilities, shape (n, classes).
        class_names: names in label order.
        top_k: k for the top-k accuracy (capped at the number of classes).

    Returns:
        A JSON-ready dict.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs)  # float32 stays float32: no copy of the whole matrix
    n_classes = len(class_names)
    n = int(y_true.shape[0])
    if n == 0:
        return {"samples": 0, "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "top_k": None, "k": 0,
                "per_class": {}, "confusion_matrix": []}
    y_pred = probs.argmax(axis=1)
    k = min(top_k, n_classes)
    in_top_k = int(top_k_hits(probs, y_true, k).sum())
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        tp = int(cm[i, i])
        predicted = int(cm[:, i].sum())
        actual = int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else None
        f1 = 2 * precision * recall / (precision + recall) if recall and precision + recall > 0 else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    macro = macro_averages(per_class)
    return {
        "samples": n,
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": macro["recall"],
        "macro_f1": macro["f1"],
        "top_k": in_top_k / n,
        "k": k,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def top_k_hits(probs: np.ndarray, y_true: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """Per row, whether its true class is among the k most probable (ties in class order, as a stable sort of the
    probabilities would put them).

    The true class's rank is counted, `chunk` rows at a time, instead of sorting every row: a sort of 40,000
    validation images x 100 classes held about 100 MB of float64 and int64 copies at once (BENCHMARKS.md, "train at
    scale").
    """
    out = np.empty(len(y_true), dtype=bool)
    columns = np.arange(probs.shape[1])
    for lo in range(0, len(y_true), chunk):
        p, y = probs[lo:lo + chunk], y_true[lo:lo + chunk]
        mine = p[np.arange(len(y)), y][:, None]
        rank = (p > mine).sum(axis=1) + ((p == mine) & (columns < y[:, None])).sum(axis=1)
        out[lo:lo + chunk] = rank < k
    return out


def macro_averages(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Unweighted means of precision, recall and F1 over the classes present in the data."""
    present = [v for v in per_class.values() if v.get("support")]
    if not present:
        return {"precision": None, "recall": None, "f1": None}
    return {k: float(np.mean([v[k] for v in present])) for k in ("precision", "recall", "f1")}


def format_figure(x: object) -> str:
    """A figure as gate messages, JUnit files and plot titles write it: 4 decimals, None as n/a."""
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.4f}"
    return str(x)
