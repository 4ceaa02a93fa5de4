"""`optimize --compare`: the parent's float and PTQ int8 TFLite files beside the optimized run's, in one table.

Every file is measured by runtime.measure on the same held-out images, against the parent's float
TFLite file: accuracy, drop and agreement mean what they mean in export verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.progress import Reporter
from edgetl.optimize.prune import gzip_size
from edgetl.optimize.qat import qat_tflite
from edgetl.rundir import Run, load_run

if TYPE_CHECKING:
    import numpy as np

    from edgetl.runtime.measure import Measurement, Reference

COMPARE_DIR = "compare"
# Without a test or val split, files are compared on this many training images (no accuracy), as export does.
UNLABELLED_SAMPLES = 64


def compare_runs(parent: str | Path, optimized: str | Path, *, threads: int | None = None,
                 reporter: Reporter | None = None) -> list[dict[str, Any]]:
    """Float, PTQ int8-full (parent) and the optimized model as TFLite, measured on the held-out images.

    Rows: name, accuracy, drop (from the parent's float TFLite), agreement (top-1 equal to it),
    max_abs_diff, samples, size_mb, gzip_mb, gzip_ratio (to the float file's gzip size),
    latency_ms (batch 1, median), path. Files go to OPTIMIZED/compare/.

    Raises:
        ModelError: a run cannot be read; ExportError: a file cannot be written.
    """
    from edgetl.export import export_run

    reporter = reporter or Reporter()
    opt = load_run(optimized)
    folder = opt.path / COMPARE_DIR
    base = export_run(parent, formats=("tflite",), quantize=("none", "int8-full"), output=folder / "parent",
                      verify=False, threads=threads, force=True, reporter=reporter)
    # The thread count export chose (up to 4 by default): every file is timed with it.
    threads = base.verify.get("threads", threads)
    by_mode = {r["mode"]: Path(r["path"]) for r in base.rows}
    files = [("float", by_mode["none"]), ("PTQ int8", by_mode["int8-full"])]
    if (opt.manifest.get("optimize") or {}).get("method") == "qat":
        files.append(("QAT int8", _write_qat_file(opt, folder, reporter)))
    else:
        rep = export_run(opt.path, formats=("tflite",), quantize=("none", "int8-full"), output=folder / "pruned",
                         verify=False, threads=threads, force=True, reporter=reporter)
        pm = {r["mode"]: Path(r["path"]) for r in rep.rows}
        files += [("pruned", pm["none"]), ("pruned int8", pm["int8-full"])]

    images, labels = held_out(opt)
    rows: list[dict[str, Any]] = []
    reference: Reference | None = None
    for name, path in files:
        reporter.start(f"measuring {name}", None)
        m, reference = _measure(path, images, labels, reference, threads)
        reporter.finish()
        rows.append(_table_row(name, path, m))
    # What pruning is for: the compressed download against the float file's.
    for r in rows:
        r["gzip_ratio"] = round(r["gzip_mb"] / rows[0]["gzip_mb"], 3) if rows[0]["gzip_mb"] else None
    return rows


def held_out(run: Run) -> tuple[np.ndarray, np.ndarray | None]:
    """(images uint8, labels) of the run's test split, else val; else training images without labels."""
    import numpy as np

    from edgetl.data import load_images
    from edgetl.data.sampling import balanced_sample

    splits = run.splits()
    items = splits.test or splits.val
    labelled = bool(items)
    if not labelled:
        items = balanced_sample(splits.train, UNLABELLED_SAMPLES, seed=1)
    x = load_images(splits.root, items, (run.image_size, run.image_size))
    return x, (np.array([i.label for i in items]) if labelled else None)


def _write_qat_file(opt: Run, folder: Path, reporter: Reporter) -> Path:
    """The QAT run's int8-full uint8 TFLite file, converted with the ranges learned in training."""
    from edgetl.core.fileio import write_bytes
    from edgetl.export.metadata import build_metadata

    path = folder / "qat-int8-full-uint8.tflite"
    meta = build_metadata(opt, fmt="tflite", quantization="int8-full", io_type="uint8")
    reporter.start("converting the QAT model", None)
    write_bytes(path, qat_tflite(opt, "int8-full", io_type="uint8", meta=meta))
    reporter.finish()
    return path


def _measure(path: Path, images: np.ndarray, labels: np.ndarray | None, reference: Reference | None,
             threads: int | None) -> tuple[Measurement, Reference]:
    """The file measured against `reference`; the first file (reference None) becomes the reference."""
    from edgetl.runtime import open_model
    from edgetl.runtime.measure import Reference, compare, measure

    runner = open_model(path, threads=threads)
    try:
        m = measure(runner, images, labels, reference)
    finally:
        runner.close()
    if reference is None:
        reference = Reference(probs=m.probs, accuracy=m.accuracy)
        m = compare(m.probs, labels, reference, m.latency_ms)  # the float row: drop 0, agreement 1
    return m, reference


def _table_row(name: str, path: Path, m: Measurement) -> dict[str, Any]:
    return {"name": name, "accuracy": m.accuracy, "drop": m.drop, "agreement": m.agreement,
            "max_abs_diff": m.max_abs_diff, "samples": m.samples, "size_mb": round(path.stat().st_size / 1e6, 3),
            "gzip_mb": round(gzip_size(path) / 1e6, 3), "latency_ms": m.latency_ms, "path": str(path)}
