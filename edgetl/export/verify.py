"""Verification: every exported file opened in its own runtime and measured against the Keras model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import EdgetlError
from edgetl.core.progress import Reporter
from edgetl.export.modes import get_mode
from edgetl.export.report import ExportRow
from edgetl.runtime.measure import Reference, measure
from edgetl.runtime.timing import median_ms

if TYPE_CHECKING:
    from edgetl.export.images import ExportImages

# A float export must give the Keras model's probabilities within this (max abs difference over the
# held-out images). Measured: TFLite float32 and ONNX float32 differ from Keras by < 1e-5.
FLOAT_TOLERANCE = 1e-4
# Metadata every file must read back as it was written.
CHECKED_METADATA = ("class_names", "quantization", "format", "image_size")
_KERAS_BATCH = 64


@dataclass(frozen=True)
class KerasReference:
    """The Keras model on the held-out images: what every file is compared with."""

    reference: Reference
    summary: dict[str, Any]  # format, mode, path, size_mb, accuracy, latency_ms, samples, split (for the report)


def keras_reference(model: Any, images: ExportImages, reporter: Reporter) -> KerasReference:
    """Run the Keras model once over the held-out images: probabilities, accuracy, latency."""
    import tensorflow as tf

    x, y, split = images.held_out(reporter)
    reporter.start("running the Keras model", None)
    fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    probs = np.concatenate([np.asarray(fn(tf.constant(x[i:i + _KERAS_BATCH].astype(np.float32))))
                            for i in range(0, len(x), _KERAS_BATCH)])
    latency = median_ms(lambda: fn(tf.constant(x[:1].astype(np.float32))))
    reporter.finish()
    acc = float((probs.argmax(1) == y).mean()) if y is not None else None
    path = images.run.model_path
    summary = {"format": "keras", "mode": "-", "path": str(path), "size_mb": round(path.stat().st_size / 1e6, 3),
               "accuracy": acc, "latency_ms": latency, "samples": int(len(x)), "split": split}
    return KerasReference(Reference(probs=probs, accuracy=acc), summary)


def verify_file(row: ExportRow, path: Path, meta: dict[str, Any], ref: KerasReference, images: ExportImages,
                max_drop: float | None, threads: int) -> None:
    """Open `path` in its runtime, check its contract, measure it against `ref`, and set row.status."""
    from edgetl.runtime import open_model

    try:
        # TensorFlow's thread pools are fixed once it has run an op (it has: the Keras reference), so a
        # SavedModel is measured with the threads TensorFlow already has.
        runner = open_model(path, threads=None if row.format == "saved_model" else threads)
    except EdgetlError as exc:
        if "flex" in str(exc).lower() or "select tensorflow op" in str(exc).lower():
            # Asked for with --allow-select-ops: stock LiteRT has no Flex delegate, so it cannot be run here.
            row.status = "unverified: needs the Flex delegate, which stock LiteRT lacks"
            return
        row.fail(f"the file does not open in its runtime ({exc})", "verify")
        return
    problems: list[str] = []
    try:
        got = runner.metadata or {}
        for key in CHECKED_METADATA:
            if got.get(key) != meta.get(key):
                problems.append(f"metadata {key} reads back as {got.get(key)!r}, not {meta.get(key)!r}")
        row.input_dtype = runner.input_dtype
        want_dtype = meta.get("input_dtype", "float32")
        if runner.input_dtype != want_dtype:
            problems.append(f"input dtype is {runner.input_dtype}, not {want_dtype}")
        x, y, _ = images.held_out()
        try:
            m = measure(runner, x, y, ref.reference)
        except EdgetlError as exc:  # the outputs do not have the reference's shape
            problems.append(str(exc))
            m = None
        if m is not None:
            row.max_abs_diff, row.agreement = m.max_abs_diff, m.agreement
            row.accuracy, row.drop, row.latency_ms = m.accuracy, m.drop, m.latency_ms
        row.samples = int(len(x))
    finally:
        runner.close()
    float_model = get_mode(row.mode).float_model
    if problems:
        row.fail("; ".join(problems), "verify")
    elif float_model and row.max_abs_diff is not None and row.max_abs_diff > FLOAT_TOLERANCE:
        row.fail(f"float file differs from Keras by {row.max_abs_diff:.2g} (tolerance {FLOAT_TOLERANCE:g})",
                 "float_parity")
    elif max_drop is not None and not float_model and row.drop is not None and row.drop > float(max_drop) + 1e-9:
        row.fail(f"accuracy drop {row.drop:.4f} > --max-drop {float(max_drop):g}", "max_drop")
    else:
        row.status = "ok"
