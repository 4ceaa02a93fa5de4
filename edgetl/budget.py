"""int8 within an accuracy budget: post-training int8 first, then the worst layers in float, then int16x8.

`search_int8` converts the run's model with full-integer post-training quantization and measures
it on the held-out images. When it loses more than `max_drop`, LiteRT's quantization debugger
(tf.lite.experimental.QuantizationDebugger) measures each quantized tensor's error (RMSE divided
by its quantization step); the worst are kept in float (denylisted) in growing numbers, and then
int16 activations with int8 weights are tried. Every candidate is measured the same way; the
first that meets the budget (smallest first) is chosen.
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import UsageError
from edgetl.progress import Reporter

log = logging.getLogger("edgetl")

DENYLIST_STEPS = (1, 3, 8)  # how many of the worst tensors to keep in float, in turn


@dataclass
class BudgetResult:
    """Candidates measured (name, mode, float_layers, accuracy, drop, size_mb, latency_ms, meets) and the choice."""

    max_drop: float
    reference: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] | None = None
    worst_layers: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "reference": self.reference, "rows": self.rows, "chosen": self.chosen,
                "worst_layers": self.worst_layers, "path": str(self.path) if self.path else None}


def search_int8(run_dir: Any, *, max_drop: float, calibration_samples: int = 200, io_type: str = "uint8",
                output: Any = None, threads: int | None = None, try_int16x8: bool = True,
                reporter: Reporter | None = None) -> BudgetResult:
    """Find the most integer TFLite file of a run that loses at most `max_drop` accuracy.

    Args:
        run_dir: a trained run.
        max_drop: allowed accuracy drop from the Keras model on the held-out images (0.01 = 1 point).
        calibration_samples: training images for calibration.
        io_type: input/output type of the full-integer candidate ("uint8" or "int8"); candidates with
            float layers keep float input and output.
        output: folder where the chosen file is written (None: nothing written).
        threads: CPU threads for measurement.
        try_int16x8: also try int16 activations with int8 weights.
        reporter: progress events.

    Returns:
        The BudgetResult; `chosen` is None when no candidate met the budget.

    Raises:
        UsageError: max_drop out of range; DataError: the run's images are gone.
    """
    import numpy as np

    from edgetl.export import _balanced_sample, _latency
    from edgetl.rundir import load_run

    if not 0 <= float(max_drop) <= 1:
        raise UsageError(f"--max-drop {max_drop} is out of range. Use an accuracy fraction 0..1 (0.01 = 1 point).")
    if io_type not in ("uint8", "int8"):
        raise UsageError(f"unknown --io-type '{io_type}'. Allowed: uint8, int8.")
    reporter = reporter or Reporter()
    run = load_run(run_dir)
    splits = run.splits()
    from edgetl.data import load_images

    size = (run.image_size, run.image_size)
    held_items = splits.test or splits.val
    if not held_items:
        raise UsageError(f"run '{run.path}' has no test or val images; the budget needs held-out accuracy. "
                         "Train with --test-split or --val-split.")
    x = load_images(splits.root, held_items, size)
    y = np.array([i.label for i in held_items])
    calib = load_images(splits.root, _balanced_sample(splits.train, calibration_samples, seed=0), size)
    calib = calib.astype(np.float32)
    calib[0, 0, 0, :] = 0.0  # the input range calibrates to exactly 0..255 (see edgetl.export)
    calib[0, 0, 1, :] = 255.0

    def rep() -> Any:
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    from edgetl.export.saved_model import save_serving
    from edgetl.runtime import open_model

    work = Path(tempfile.mkdtemp(prefix="edgetl-budget-"))
    try:
        reporter.start("loading the model", None)
        model = run.load_model()
        saved = save_serving(model, work / "saved_model")
        ref_probs = np.asarray(model.predict(x.astype(np.float32), verbose=0))
        reporter.finish()
        ref_acc = float((ref_probs.argmax(1) == y).mean())
        result = BudgetResult(max_drop=float(max_drop),
                              reference={"accuracy": ref_acc, "samples": int(len(y)),
                                         "split": "test" if splits.test else "val"})

        def measure(name: str, mode: str, data: bytes, float_layers: list[str]) -> dict[str, Any]:
            path = work / f"{len(result.rows)}.tflite"
            path.write_bytes(data)
            runner = open_model(path, threads=threads, class_names=run.class_names)
            try:
                probs = runner.predict(x)
                lat = _latency(lambda: runner.predict(x[:1]))
            finally:
                runner.close()
            acc = float((probs.argmax(1) == y).mean())
            row = {"name": name, "mode": mode, "float_layers": float_layers, "accuracy": round(acc, 4),
                   "drop": round(ref_acc - acc, 4), "size_mb": round(len(data) / 1e6, 3), "latency_ms": lat,
                   "agreement": round(float((probs.argmax(1) == ref_probs.argmax(1)).mean()), 4)}
            row["meets"] = row["drop"] <= float(max_drop) + 1e-9
            row["_data"] = data
            result.rows.append(row)
            reporter.info(f"{name}: accuracy {acc:.4f}, drop {row['drop']:+.4f}, {row['size_mb']:.3f} MB"
                          f"{' (meets the budget)' if row['meets'] else ''}")
            return row

        from edgetl.export.tflite import convert_tflite

        reporter.start("post-training int8-full", None)
        first = measure(f"PTQ int8-full ({io_type} I/O)", "int8-full",
                        convert_tflite(saved, "int8-full", representative=rep, io_type=io_type), [])
        reporter.finish()
        if not first["meets"]:
            reporter.start("finding the layers int8 hurts most", None)
            result.worst_layers = _worst_tensors(saved, rep, calib)
            reporter.finish()
            names = [w["tensor_name"] for w in result.worst_layers]
            for k in DENYLIST_STEPS:
                if k > len(names):
                    break
                reporter.start(f"int8 with {k} layer(s) in float", None)
                data = _selective(saved, rep, calib, names[:k])
                reporter.finish()
                if data is not None and measure(f"int8, {k} worst layer(s) float", "int8", data, names[:k])["meets"]:
                    break
            if try_int16x8 and not any(r["meets"] for r in result.rows):
                reporter.start("int16x8", None)
                measure("int16x8", "int16x8", convert_tflite(saved, "int16x8", representative=rep), [])
                reporter.finish()
        chosen = next((r for r in result.rows if r["meets"]), None)
        if chosen is not None:
            result.chosen = {k: v for k, v in chosen.items() if k != "_data"}
            if output is not None:
                result.path = _write_chosen(run, chosen, Path(output), io_type)
        for r in result.rows:
            r.pop("_data", None)
        return result
    finally:
        reporter.finish()
        shutil.rmtree(work, ignore_errors=True)


def _debugger(saved: Path, rep: Any, calib: Any, denylist: list[str] | None = None) -> Any:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep

    def debug_data() -> Any:
        for i in range(min(len(calib), 32)):
            yield [calib[i:i + 1]]

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist) if denylist else None
    return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_data,
                                                     debug_options=options)


def _worst_tensors(saved: Path, rep: Any, calib: Any, top: int = 10) -> list[dict[str, Any]]:
    """The quantized tensors with the largest RMSE in units of their quantization step, worst first."""
    import csv

    from edgetl.export import quiet_native_stderr

    with quiet_native_stderr():
        dbg = _debugger(saved, rep, calib)
        dbg.run()
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            scale = float(r["scale"])
            mse = float(r["mean_squared_error"])
        except (KeyError, ValueError):
            continue
        if scale > 0 and math.isfinite(mse):
            rows.append({"tensor_name": r["tensor_name"], "op_name": r.get("op_name"),
                         "rmse_per_step": round(math.sqrt(mse) / scale, 4)})
    rows.sort(key=lambda d: -d["rmse_per_step"])
    return rows[:top]


def _selective(saved: Path, rep: Any, calib: Any, denylist: list[str]) -> bytes | None:
    """int8 with the named tensors' ops in float (float input and output), or None if it cannot be built."""
    from edgetl.export import quiet_native_stderr

    try:
        with quiet_native_stderr():
            dbg = _debugger(saved, rep, calib, denylist)
            return bytes(dbg.get_nondebug_quantized_model())
    except Exception as exc:  # the debugger refuses some graphs; the search goes on with int16x8
        log.warning("selective quantization with %s in float failed: %s", denylist, str(exc).splitlines()[0][:200])
        return None


def _write_chosen(run: Any, row: dict[str, Any], folder: Path, io_type: str) -> Path:
    from edgetl.export import file_name
    from edgetl.export.metadata import build_metadata, write_tflite_metadata
    from edgetl.fileio import write_bytes

    mode = row["mode"]
    io = io_type if mode == "int8-full" else None
    meta = build_metadata(run, fmt="tflite", quantization=mode, io_type=io)
    meta["budget"] = {"float_layers": row["float_layers"], "drop": row["drop"]}
    name = file_name(run, "tflite", mode, io)
    if row["float_layers"]:
        name = name.replace(".tflite", f"-{len(row['float_layers'])}float.tflite")
    path = folder / name
    write_bytes(path, write_tflite_metadata(row["_data"], meta))
    return path


def table(result: BudgetResult) -> tuple[list[str], list[list[str]]]:
    """Columns and rows for clikit.print_table: one row per candidate, the chosen one marked."""
    cols = ["candidate", "accuracy", "drop", "MB", "ms", "budget"]
    rows = [["keras float (reference)", f"{result.reference['accuracy']:.4f}", "-", "-", "-", "-"]]
    for r in result.rows:
        mark = "chosen" if result.chosen and r["name"] == result.chosen["name"] else ("meets" if r["meets"] else
                                                                                       "over")
        rows.append([r["name"], f"{r['accuracy']:.4f}", f"{r['drop']:+.4f}", f"{r['size_mb']:.3f}",
                     f"{r['latency_ms']:.2f}", mark])
    return cols, rows
