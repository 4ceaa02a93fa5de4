"""int8 within an accuracy budget: post-training int8 first, then the worst layers in float, then int16x8.

`search_int8` converts the run's model with full-integer post-training quantization and measures
it on the held-out images. As in `edgetl export`, the model is calibrated once in LiteRT and every
candidate is bias-corrected in the file (edgetl.export.tflite_bias: the mean shift each int8 kernel's
rounding causes taken off its bias; on real photos int8's top-1 agreement with float went from 79 to 94%
with MobileNetV2 0.35 at 96 and from 84 to 91% at 1.0, 224). When it loses more
than `max_drop`, LiteRT's quantization debugger
(tf.lite.experimental.QuantizationDebugger) measures each quantized tensor's error per channel,
relative to the channel's own signal (see `channel_noise_to_signal`); the worst tensors are kept in
float in growing numbers (the ops that write them and the ops that read them are denylisted, so the
tensor itself never goes through int8), and then int16 activations with int8 weights are tried.
Every candidate is measured the same way; the first that meets the budget (smallest first) is chosen.
"""

from __future__ import annotations

import io
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import UsageError, first_line
from edgetl.core.progress import Reporter
from edgetl.core.records import Record

if TYPE_CHECKING:
    from edgetl.rundir import Run

log = logging.getLogger("edgetl")

DENYLIST_STEPS = (1, 3, 8)  # how many of the worst tensors to keep in float, in turn


@dataclass
class Candidate(Record):
    """One file the search measured: how it was made, how it measured, whether it meets the budget."""

    name: str
    mode: str
    float_layers: list[str]
    accuracy: float | None
    drop: float | None
    agreement: float | None
    size_mb: float
    latency_ms: float | None
    meets: bool
    data: bytes = field(default=b"", repr=False, metadata={"hidden": True})  # the flatbuffer, not in reports


@dataclass
class BudgetResult:
    """Candidates measured, in the order tried, and the choice (None when none met the budget)."""

    max_drop: float
    reference: dict[str, Any]
    rows: list[Candidate] = field(default_factory=list)
    chosen: dict[str, Any] | None = None
    worst_layers: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    bias_corrected: list[str] = field(default_factory=list)  # kernel ops corrected in the first candidate

    def to_dict(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "reference": self.reference, "rows": [r.to_dict() for r in self.rows],
                "chosen": self.chosen, "worst_layers": self.worst_layers, "path": str(self.path) if self.path else None,
                "bias_corrected": self.bias_corrected}


def search_int8(run_dir: str | os.PathLike[str], *, max_drop: float, calibration_samples: int = 200,
                io_type: str = "uint8", output: str | os.PathLike[str] | None = None, threads: int | None = None,
                try_int16x8: bool = True, bias_correction: bool = True,
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
        bias_correction: take each int8 kernel's mean shift off its bias in every candidate (False: the
            quantizer's own files).
        reporter: progress events.

    Returns:
        The BudgetResult; `chosen` is None when no candidate met the budget.

    Raises:
        UsageError: max_drop out of range; DataError: the run's images are gone.
    """
    from edgetl.core.tf import load_tensorflow
    from edgetl.export.formats.saved_model import save_serving
    from edgetl.export.formats.tflite import Quantizer
    from edgetl.export.images import ExportImages, representative
    from edgetl.export.modes import IO_TYPES
    from edgetl.export.reference import keras_reference
    from edgetl.rundir import load_run
    from edgetl.runtime import open_model
    from edgetl.runtime.measure import measure

    if not 0 <= float(max_drop) <= 1:
        raise UsageError(f"--max-drop {max_drop} is out of range. Use an accuracy fraction 0..1 (0.01 = 1 point).")
    if io_type not in IO_TYPES:
        raise UsageError(f"unknown --io-type '{io_type}'. Allowed: {', '.join(IO_TYPES)}.")
    reporter = reporter or Reporter()
    run = load_run(run_dir)
    splits = run.splits()
    if not (splits.test or splits.val):
        raise UsageError(f"run '{run.path}' has no test or val images; the budget needs held-out accuracy. "
                         "Train with --test-split or --val-split.")
    images = ExportImages(run, calibration_samples, verify=True)
    images.check()
    load_tensorflow()
    x, y, split = images.held_out(reporter)
    calib = images.calibration(reporter)
    rep = representative(calib)

    work = Path(tempfile.mkdtemp(prefix="edgetl-budget-"))
    try:
        reporter.start("loading the model", None)
        model = run.load_model()
        reporter.finish()
        ref = keras_reference(model, images, reporter).reference
        result = BudgetResult(max_drop=float(max_drop),
                              reference={"accuracy": ref.accuracy, "samples": int(len(x)), "split": split})
        saved = save_serving(model, work / "saved_model")
        reporter.start("calibrating", None)
        quantizer = Quantizer(str(saved), calib, threads, bias_correction)
        reporter.finish()

        def try_candidate(name: str, mode: str, data: bytes, float_layers: list[str]) -> Candidate:
            path = work / f"{len(result.rows)}.tflite"
            path.write_bytes(data)
            with open_model(path, threads=threads, class_names=run.class_names) as runner:
                m = measure(runner, x, y, ref)
            row = Candidate(name=name, mode=mode, float_layers=float_layers, accuracy=m.accuracy, drop=m.drop,
                            agreement=m.agreement, size_mb=round(len(data) / 1e6, 3), latency_ms=m.latency_ms,
                            meets=m.drop is not None and m.drop <= float(max_drop) + 1e-9, data=data)
            result.rows.append(row)
            reporter.info(f"{name}: accuracy {m.accuracy:.4f}, drop {m.drop:+.4f}, {row.size_mb:.3f} MB"
                          f"{' (meets the budget)' if row.meets else ''}")
            return row

        reporter.start("post-training int8-full", None)
        data, result.bias_corrected = quantizer.quantize("int8-full", io_type)
        first = try_candidate(f"PTQ int8-full ({io_type} I/O)", "int8-full", data, [])
        reporter.finish()
        if not first.meets:
            reporter.start("finding the layers int8 hurts most", None)
            result.worst_layers = _worst_tensors(saved, rep, calib)
            reporter.finish()
            for k in DENYLIST_STEPS:
                if k > len(result.worst_layers):
                    break
                nodes = _float_nodes(result.worst_layers[:k])
                reporter.start(f"int8 with {k} layer(s) in float", None)
                data = _selective(saved, rep, calib, nodes)
                data = quantizer.correct(data)[0] if data is not None else None
                reporter.finish()
                if data is not None and try_candidate(f"int8, {k} worst layer(s) float", "int8", data, nodes).meets:
                    break
            if try_int16x8 and not any(r.meets for r in result.rows):
                reporter.start("int16x8", None)
                try_candidate("int16x8", "int16x8", quantizer.quantize("int16x8", None)[0], [])
                reporter.finish()
        chosen = next((r for r in result.rows if r.meets), None)
        if chosen is not None:
            result.chosen = chosen.to_dict()
            if output is not None:
                result.path = _write_chosen(run, chosen, Path(output), io_type)
        for r in result.rows:
            r.data = b""  # the candidates' flatbuffers are not kept
        return result
    finally:
        reporter.finish()
        shutil.rmtree(work, ignore_errors=True)


def _debugger(saved: Path, rep: Any, calib: Any, options: Any = None) -> Any:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = rep

    def debug_data() -> Any:
        for i in range(min(len(calib), 32)):
            yield [calib[i:i + 1]]

    return tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_data,
                                                     debug_options=options)


def channel_noise_to_signal(float_values: Any, quant_values: Any, scale: float, zero_point: int) -> float:
    """Mean over channels (last axis) of the int8 tensor's RMS error divided by the float channel's RMS value.

    A QuantizationDebugger layer_direct_compare_metric. The debugger's own error in units of the
    quantization step (RMSE / scale) is about 0.29 for every tensor whose values round cleanly, however
    coarse that step is: it cannot see a per-tensor scale stretched by a few outlier channels, which
    leaves every other channel with a step as large as its values (they quantize to the zero point).
    Relative to each channel's own signal that loss reads as about 1, against a few hundredths for a
    well-quantized tensor.

    Args:
        float_values: the float op's output for the same (quantized) inputs.
        quant_values: the quantized op's output, integer.
        scale: the quantized tensor's scale.
        zero_point: its zero point.

    Returns:
        The mean ratio over channels that carry any signal; NaN if none does.
    """
    import numpy as np

    f = np.asarray(float_values, np.float64)
    if f.ndim == 0:
        f = f.reshape(1, 1)
    q = (np.asarray(quant_values, np.float64).reshape(f.shape) - zero_point) * scale
    f = f.reshape(-1, f.shape[-1])
    q = q.reshape(-1, f.shape[-1])
    signal = np.sqrt((f * f).mean(axis=0))
    error = np.sqrt(((q - f) ** 2).mean(axis=0))
    live = signal > 0  # a channel that is always zero (a dead ReLU) has nothing to lose
    return float((error[live] / signal[live]).mean()) if live.any() else float("nan")


def _worst_tensors(saved: Path, rep: Any, calib: Any, top: int = 10) -> list[dict[str, Any]]:
    """The quantized tensors int8 hurts most (largest channel_noise_to_signal first), with the ops that read them."""
    import csv

    import tensorflow as tf

    from edgetl.core.native import quiet_native_stderr

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"channel_nsr": channel_noise_to_signal})
    with quiet_native_stderr(), warnings.catch_warnings():
        # An all-dead tensor gives NaN on every sample: the debugger's nanmean warns, the row is ranked last.
        warnings.simplefilter("ignore", RuntimeWarning)
        dbg = _debugger(saved, rep, calib, options)
        dbg.run()
    readers = _readers(dbg.calibrated_model)
    buf = io.StringIO()
    dbg.layer_statistics_dump(buf)
    rows = []
    for r in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            scale = float(r["scale"])
            mse = float(r["mean_squared_error"])
            nsr = float(r["channel_nsr"])
        except (KeyError, ValueError):
            continue
        if scale > 0 and math.isfinite(mse):
            name = r["tensor_name"]
            rows.append({"tensor_name": name, "op_name": r.get("op_name"),
                         "channel_nsr": round(nsr, 4) if math.isfinite(nsr) else None,
                         "rmse_per_step": round(math.sqrt(mse) / scale, 4), "readers": readers.get(name, [])})
    rows.sort(key=lambda d: (-(d["channel_nsr"] or 0.0), -d["rmse_per_step"]))
    return rows[:top]


def _readers(model: bytes) -> dict[str, list[str]]:
    """Tensor name -> output names of the ops that read it, from a TFLite flatbuffer (first subgraph)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    names = [(graph.Tensors(t).Name() or b"").decode("utf-8", "replace") for t in range(graph.TensorsLength())]
    out: dict[str, list[str]] = {}
    for j in range(graph.OperatorsLength()):
        op = graph.Operators(j)
        outputs = [names[t] for t in op.OutputsAsNumpy() if t >= 0] if op.OutputsLength() else []
        for t in (op.InputsAsNumpy() if op.InputsLength() else []):
            if t < 0:  # -1 marks an optional input that is absent
                continue
            seen = out.setdefault(names[t], [])
            seen += [n for n in outputs if n not in seen]
    return out


def _float_nodes(worst: list[dict[str, Any]]) -> list[str]:
    """The denylist that keeps each of `worst` in float: the op that writes it and every op that reads it.

    Denylisting only the writer is not enough: its float output is quantized again, with the same
    calibrated scale, for an int8 reader, so the tensor loses exactly what it lost before.
    """
    nodes: list[str] = []
    for w in worst:
        for name in [w["tensor_name"], *w.get("readers", [])]:
            if name not in nodes:
                nodes.append(name)
    return nodes


def _selective(saved: Path, rep: Any, calib: Any, denylist: list[str]) -> bytes | None:
    """int8 with the named tensors' ops in float (float input and output), or None if it cannot be built."""
    import tensorflow as tf

    from edgetl.core.native import quiet_native_stderr

    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    try:
        with quiet_native_stderr():
            return bytes(_debugger(saved, rep, calib, options).get_nondebug_quantized_model())
    except Exception as exc:  # the debugger refuses some graphs; the search goes on with int16x8
        log.warning("selective quantization with %s in float failed: %s", denylist, first_line(exc, 200))
        return None


def _write_chosen(run: Run, row: Candidate, folder: Path, io_type: str) -> Path:
    from edgetl.core.fileio import write_bytes
    from edgetl.export.metadata import build_metadata
    from edgetl.export.plan import file_name
    from edgetl.export.standard_metadata import embed_tflite_metadata

    io = io_type if row.mode == "int8-full" else None
    meta = build_metadata(run, fmt="tflite", quantization=row.mode, io_type=io)
    meta["budget"] = {"float_layers": row.float_layers, "drop": row.drop}
    name = file_name(run, "tflite", row.mode, io)
    if row.float_layers:
        name = name.replace(".tflite", f"-{len(row.float_layers)}float.tflite")
    path = folder / name
    write_bytes(path, embed_tflite_metadata(row.data, meta))
    return path


def table(result: BudgetResult) -> tuple[list[str], list[list[str]]]:
    """Columns and rows for clikit.print_table: one row per candidate, the chosen one marked."""
    cols = ["candidate", "accuracy", "drop", "MB", "ms", "budget"]
    rows = [["keras float (reference)", f"{result.reference['accuracy']:.4f}", "-", "-", "-", "-"]]
    for r in result.rows:
        mark = "chosen" if result.chosen and r.name == result.chosen["name"] else ("meets" if r.meets else "over")
        rows.append([r.name, f"{r.accuracy:.4f}", f"{r.drop:+.4f}", f"{r.size_mb:.3f}", f"{r.latency_ms:.2f}", mark])
    return cols, rows
