"""The export job: plan the files, stage each one, verify it in its runtime, move it into place.

It imports no format module and no TensorFlow at load time: `edgetl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.core.errors import DataError, EdgetlError, ExportError, GateFailure, ModelError, RunExistsError, UsageError
from edgetl.core.progress import Reporter
from edgetl.data.sampling import balanced_sample
from edgetl.runtime.timing import median_ms

log = logging.getLogger("edgetl")


# ----------------------------------------------------------------------------------------------
# export_run: a run directory -> verified files, one report

EXPORT_DIR = "export"
REPORT_FILE = "export_report.json"
LABELS_FILE = "labels.txt"
DEFAULT_CALIBRATION_SAMPLES = 300
# A float export must give the Keras model's probabilities within this (max abs difference over the
# held-out images). Measured: TFLite float32 and ONNX float32 differ from Keras by < 1e-5.
FLOAT_TOLERANCE = 1e-4
_STAGING = ".edgetl-staging-"
_EXT = {"tflite": ".tflite", "onnx": ".onnx", "saved_model": ""}

COLUMNS = ("format", "mode", "path", "size_mb", "accuracy", "drop", "agreement", "max_abs_diff", "latency_ms",
           "status")


@dataclass
class ExportReport:
    """What an export produced: one row per file, the Keras reference, and where the JSON went.

    rows: dicts with format, mode, path, size_mb, accuracy, drop, agreement, max_abs_diff, latency_ms,
        status ("ok", "unverified", or "failed: why") and more (io_type, input_dtype, seconds, ...).
    """

    run_dir: Path
    output: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    verify: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if str(r.get("status", "")).startswith("failed")]

    def to_dict(self) -> dict[str, Any]:
        return {"edgetl_export": 1, "run": str(self.run_dir), "output": str(self.output), "verify": self.verify,
                "reference": self.reference, "rows": self.rows, "warnings": self.warnings}


@dataclass
class _Plan:
    pairs: list[tuple[str, str]]
    io_type: str | None
    paths: dict[tuple[str, str], Path]
    output: Path


def resolve_request(formats: Any, quantize: Any, target: str | None, io_type: str | None
                    ) -> tuple[list[str], list[str], str | None]:
    """Formats, modes and io type after --target (which may not be mixed with --format/--quantize)."""
    from edgetl.export.modes import TARGETS

    fmts = [formats] if isinstance(formats, str) else list(formats or [])
    mds = [quantize] if isinstance(quantize, str) else list(quantize or [])
    if target is None:
        return fmts or ["tflite"], mds or ["none"], io_type
    if target not in TARGETS:
        from edgetl.core.errors import unknown_choice

        raise unknown_choice("--target", target, TARGETS)
    if (fmts and fmts != ["tflite"]) or (mds and mds != ["none"]) or io_type is not None:
        raise UsageError(f"--target {target} picks the format, mode and io type itself; drop --format, --quantize "
                         "and --io-type, or drop --target.")
    t = TARGETS[target]
    return list(t["formats"]), list(t["quantize"]), t["io_type"]


def file_stem(run: Any) -> str:
    """backbone[_aALPHA]-SIZE: what tells a run's files apart in a listing."""
    bb = run.manifest.get("backbone") or {}
    name = str(bb.get("name") or "model")
    if bb.get("kind") != "keras":
        name = Path(name.rstrip("/")).stem or "model"
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-.") or "model"
    if bb.get("alpha") is not None:
        name += f"_a{float(bb['alpha']):g}"
    return f"{name}-{run.image_size}"


def file_name(run: Any, fmt: str, mode: str, io_type: str | None) -> str:
    """The file (or folder) name of one export: backbone, size, quantization, format."""
    from edgetl.export.modes import MODES

    tag = MODES[mode].file_tag
    if mode == "int8-full" and io_type:
        tag += f"-{io_type}"
    if fmt == "saved_model":
        return f"{file_stem(run)}-saved_model"
    return f"{file_stem(run)}-{tag}{_EXT[fmt]}"


def _plan(run: Any, formats: list[str], modes: list[str], output: Any, io_type: str | None, opset: int,
          allow_select_ops: bool, calibration_samples: int, max_drop: float | None, verify: bool,
          threads: int | None, force: bool) -> _Plan:
    """Every option checked, every path named, before TensorFlow is loaded."""
    from edgetl.export.modes import check_io_type, plan_pairs
    from edgetl.export.onnx import check_opset

    pairs = plan_pairs(formats, modes)
    io = check_io_type(io_type, modes, formats)
    if "onnx" in formats:
        check_opset(opset)
    if allow_select_ops and "tflite" not in formats:
        raise UsageError("--allow-select-ops applies only to --format tflite. Drop it.")
    if isinstance(calibration_samples, bool) or not isinstance(calibration_samples, int) \
            or not 1 <= calibration_samples <= 100_000:
        raise UsageError(f"--calibration-samples {calibration_samples} is out of range. Use 1..100000 "
                         f"(default {DEFAULT_CALIBRATION_SAMPLES}).")
    if max_drop is not None:
        if not verify:
            raise UsageError("--max-drop needs verification to measure the drop; drop --no-verify or --max-drop.")
        if not 0 <= float(max_drop) <= 1:
            raise UsageError(f"--max-drop {max_drop} is out of range. Use an accuracy fraction 0..1 "
                             "(0.01 = 1 point).")
    if threads is not None and (isinstance(threads, bool) or not 1 <= int(threads) <= 1024):
        raise UsageError(f"--threads {threads} is out of range. Use 1 or more.")
    out = Path(output) if output is not None else run.path / EXPORT_DIR
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"output '{out}' is a file, not a folder. Choose another --output.")
    paths = {(f, m): out / file_name(run, f, m, io if m == "int8-full" else None) for f, m in pairs}
    if not force:
        taken = [p for p in paths.values() if p.exists()]
        labels = out / LABELS_FILE
        if labels.is_file():
            try:
                same = [s.strip() for s in labels.read_text(encoding="utf-8").splitlines() if s.strip()] \
                    == run.class_names
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                taken.append(labels)
        if taken:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise RunExistsError(f"'{taken[0]}'{more} already exists. Pass --force to replace, or choose another "
                                 "--output.")
    return _Plan(pairs=pairs, io_type=io, paths=paths, output=out)


def export_run(run_dir: Any, *, formats: Any = ("tflite",), quantize: Any = ("none",), output: Any = None,
               calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, io_type: str | None = None, opset: int = 17,
               allow_select_ops: bool = False, max_drop: float | None = None, verify: bool = True,
               threads: int | None = None, target: str | None = None, force: bool = False,
               reporter: Reporter | None = None) -> ExportReport:
    """Export a trained run to TFLite, ONNX and/or SavedModel, quantized as asked, and verify each file.

    Each (format, mode) pair that exists is written (see edgetl.export.modes.plan_pairs), named
    backbone-size-mode.ext in `output` (default RUN_DIR/export), with the edgetl metadata inside
    and labels.txt beside. With verify, each file is opened in its own runtime (LiteRT, ONNX
    Runtime, TensorFlow) and run on the run's held-out images against the Keras model.

    Args:
        run_dir: the run directory written by `edgetl train`.
        formats: "tflite", "onnx", "saved_model" (one or several).
        quantize: modes (edgetl.export.modes.MODES), one or several; each applies to the formats it exists for.
        output: folder for the files (default RUN_DIR/export).
        calibration_samples: training images used to calibrate int8/int16 modes.
        io_type: "uint8" (default) or "int8" input/output of TFLite int8-full.
        opset: ONNX opset.
        allow_select_ops: allow TensorFlow (Flex) ops in TFLite files.
        max_drop: fail a file whose accuracy is lower than Keras' by more than this fraction.
        verify: open and measure each file; a float file must match Keras within FLOAT_TOLERANCE.
        threads: CPU threads for verification and latency (default: up to 4).
        target: "cpu", "gpu", "edgetpu", "npu" or "mcu": picks format, mode and io type.
        force: replace existing export files.
        reporter: progress events.

    Returns:
        The ExportReport (also written as export_report.json in `output`).

    Raises:
        UsageError, ModelError, DataError, RunExistsError: bad options, run or data (nothing written).
        ExportError: a conversion failed, or a float file did not match Keras; GateFailure: a file
            lost more accuracy than max_drop. Both carry the report as `.report`; files that passed
            are kept, failing ones are not written.
    """
    from edgetl.rundir import load_run

    reporter = reporter or Reporter()
    fmts, mds, io_req = resolve_request(formats, quantize, target, io_type)
    run = load_run(run_dir)
    plan = _plan(run, fmts, mds, output, io_req, opset, allow_select_ops, calibration_samples, max_drop, verify,
                 threads, force)
    needs_calibration = any(_mode(m).calibrated for _, m in plan.pairs)
    report = ExportReport(run_dir=run.path, output=plan.output)
    images = _Images(run, calibration_samples if needs_calibration else 0, verify, report)
    images.check()  # missing data fails here, before the slow part

    _load_tensorflow()
    threads_eff = threads if threads is not None else _default_threads()
    report.verify = {"enabled": verify, "threads": threads_eff, "batch_for_latency": 1,
                     "float_tolerance": FLOAT_TOLERANCE, "max_drop": max_drop}
    plan.output.mkdir(parents=True, exist_ok=True)
    _clean_staging(plan.output)
    work = Path(tempfile.mkdtemp(prefix="edgetl-export-"))
    try:
        reporter.start("loading the model", None)
        model = run.load_model()
        shape = tuple(model.input_shape[1:3])
        if shape != (run.image_size, run.image_size):
            raise ModelError(f"run '{run.path}': its model takes {shape[0]}x{shape[1]} images but its manifest says "
                             f"{run.image_size}. The run is damaged; train it again.")
        from edgetl.export.saved_model import save_serving

        reporter.start("writing a SavedModel", None)
        saved = save_serving(model, work / "saved_model")
        # Integer-only targets (Edge TPU compiler, NNAPI/NPU delegates, TFLite Micro) need static
        # shapes: int8-full files are converted from a signature with the batch fixed at 1.
        saved_b1 = save_serving(model, work / "saved_model_b1", batch=1) \
            if any(m == "int8-full" for _, m in plan.pairs) else None
        reporter.finish()
        calib = images.calibration(reporter) if needs_calibration else None
        ref = _reference(model, images, threads_eff, reporter) if verify else None
        if ref is not None:
            report.reference = {k: v for k, v in ref.items() if k != "probs"}
        del model
        float_onnx: Path | None = None
        for fmt, mode in plan.pairs:
            final = plan.paths[(fmt, mode)]
            io = plan.io_type if mode == "int8-full" else None
            reporter.start(f"exporting {fmt} {mode}", None)
            source = saved_b1 if (fmt == "tflite" and mode == "int8-full" and saved_b1 is not None) else saved
            row = _export_one(run, fmt, mode, io, final, source, calib, ref, images, plan, opset, allow_select_ops,
                              max_drop, verify, threads_eff, work, float_onnx, report)
            reporter.finish()
            if fmt == "onnx" and mode == "none" and row["status"] in ("ok", "unverified"):
                float_onnx = final
            report.rows.append(row)
            reporter.info(_row_line(row))
        _write_beside(run, plan.output, report)
    finally:
        reporter.finish()
        shutil.rmtree(work, ignore_errors=True)
    failed = report.failed
    if failed:
        what = "; ".join(f"{r['format']} {r['mode']}: {r['status'][len('failed: '):]}" for r in failed)
        gate_only = all(r.get("failure") == "max_drop" for r in failed)
        err: EdgetlError = GateFailure(f"{len(failed)} of {len(report.rows)} exports failed ({what}).") if gate_only \
            else ExportError(f"{len(failed)} of {len(report.rows)} exports failed ({what}).")
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _mode(name: str) -> Any:
    from edgetl.export.modes import get_mode

    return get_mode(name)


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _load_tensorflow() -> None:
    if "tensorflow" in sys.modules:
        return
    try:
        from edgetl.core.tf import load_tensorflow

        load_tensorflow()
    except ImportError:  # pragma: no cover - clikit ships with edgetl
        import tensorflow  # noqa: F401


def _clean_staging(folder: Path) -> None:
    """Remove staging files an export killed hard (SIGKILL, power loss) left behind."""
    for p in folder.glob(f"{_STAGING}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


class _Images:
    """Calibration images (training split) and held-out images (test, else val), decoded as in training."""

    def __init__(self, run: Any, calibration_samples: int, verify: bool, report: ExportReport) -> None:
        self.run = run
        self.want_calibration = calibration_samples
        self.verify = verify
        self.report = report
        self.splits = run.splits()
        self.size = (run.image_size, run.image_size)
        self._held: tuple[Any, Any, str] | None = None

    def check(self) -> None:
        root = Path(self.splits.root)
        needs = []
        if self.want_calibration:
            needs.append("calibration")
        if self.verify:
            needs.append("verification")
        if not needs:
            return
        if not root.is_dir():
            hint = " or pass --no-verify" if self.verify and not self.want_calibration else ""
            raise DataError(f"the run's data folder '{root}' is gone: {' and '.join(needs)} need its images. Put it "
                            f"back at that path{hint}.")
        if self.want_calibration and not self.splits.train:
            raise DataError("no calibration images: the run's training split is empty. Train the run again.")
        if self.splits.fingerprint() != (self.run.manifest.get("data") or {}).get("fingerprint"):
            self._warn(f"the images in '{root}' changed since training (added, removed or rewritten files); "
                       "calibration and verification use the files as they are now")

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.report.warnings.append(message)

    def _load(self, items: list[Any], what: str, reporter: Reporter) -> tuple[Any, list[Any]]:
        """Decode `items`, skipping (with a warning) files that no longer decode."""
        import numpy as np

        from edgetl.data import load_image, load_images

        reporter.start(f"reading {what} images", len(items))
        try:
            arr = load_images(self.splits.root, items, self.size,
                              on_progress=lambda done, total: reporter.advance(1))
            return arr, list(items)
        except DataError:
            pass
        finally:
            reporter.finish()
        good, arrays, bad = [], [], 0
        for it in items:
            try:
                arrays.append(load_image(os.path.join(self.splits.root, it.path), self.size))
                good.append(it)
            except DataError:
                bad += 1
        self._warn(f"{bad} of {len(items)} {what} images cannot be read any more; using the other {len(good)}")
        if not arrays:
            return np.zeros((0, *self.size, 3), dtype=np.uint8), []
        return np.stack(arrays), good

    def calibration(self, reporter: Reporter) -> Any:
        """(N, H, W, 3) float32, pixels 0..255: a class-balanced, seeded sample of the training split."""
        import numpy as np

        items = balanced_sample(self.splits.train, self.want_calibration, seed=0)
        if len(items) < self.want_calibration:
            self._warn(f"only {len(items)} training images for calibration (asked for {self.want_calibration}); "
                       "using all of them")
        arr, good = self._load(items, "calibration", reporter)
        if not good:
            raise DataError(f"no calibration images: none of the run's training images in '{self.splits.root}' "
                            "can be read. Put the data back or export without int8/int16 modes.")
        x = arr.astype(np.float32)
        # One pixel black and one white in the first image: the input range calibrates to exactly 0..255,
        # so uint8 input quantization is the identity (scale 1, zero point 0) and camera frames go in as
        # they are. Two pixels of one image do not move any other tensor's range measurably.
        x[0, 0, 0, :] = 0.0
        x[0, 0, 1, :] = 255.0
        self.report.verify["calibration_samples"] = len(good)
        return x

    def held_out(self, reporter: Reporter) -> tuple[Any, Any, str]:
        """(images uint8, labels or None, split name) for verification."""
        import numpy as np

        if self._held is not None:
            return self._held
        split = "test" if self.splits.test else "val" if self.splits.val else None
        if split is None:
            self._warn("the run has no test or val images: verification compares with Keras on training images and "
                       "reports no accuracy")
            items = balanced_sample(self.splits.train, 64, seed=1)
            arr, good = self._load(items, "verification", reporter)
            self._held = (arr, None, "train (no held-out split)")
        else:
            items = list(getattr(self.splits, split))
            arr, good = self._load(items, f"{split} split", reporter)
            self._held = (arr, np.array([it.label for it in good], dtype=np.int64), split)
        if len(self._held[0]) == 0:
            raise DataError(f"no images to verify with: none of the run's {split or 'training'} images in "
                            f"'{self.splits.root}' can be read. Put the data back or pass --no-verify.")
        return self._held



def _reference(model: Any, images: _Images, threads: int, reporter: Reporter) -> dict[str, Any]:
    """The Keras model on the held-out images: probabilities, accuracy, latency."""
    import numpy as np
    import tensorflow as tf

    x, y, split = images.held_out(reporter)
    reporter.start("running the Keras model", None)
    fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    probs = np.concatenate([np.asarray(fn(tf.constant(x[i:i + 64].astype(np.float32))))
                            for i in range(0, len(x), 64)])
    latency = median_ms(lambda: fn(tf.constant(x[:1].astype(np.float32))))
    reporter.finish()
    acc = float((probs.argmax(1) == y).mean()) if y is not None else None
    return {"format": "keras", "mode": "-", "path": str(images.run.model_path),
            "size_mb": round(images.run.model_path.stat().st_size / 1e6, 3), "accuracy": acc,
            "latency_ms": latency, "samples": int(len(x)), "split": split, "probs": probs}



def _staging_path(final: Path) -> Path:
    return final.parent / f"{_STAGING}{os.getpid()}-{final.name}"


def _export_one(run: Any, fmt: str, mode: str, io: str | None, final: Path, saved: Path, calib: Any,
                ref: dict[str, Any] | None, images: _Images, plan: _Plan, opset: int, allow_select_ops: bool,
                max_drop: float | None, verify: bool, threads: int, work: Path, float_onnx: Path | None,
                report: ExportReport) -> dict[str, Any]:
    """Write one file to a staging name, verify it, and move it into place only when it passes."""
    from edgetl.export.metadata import build_metadata

    row: dict[str, Any] = {"format": fmt, "mode": mode, "io_type": io, "path": str(final), "size_mb": None,
                           "accuracy": None, "drop": None, "agreement": None, "max_abs_diff": None,
                           "latency_ms": None, "status": "", "input_dtype": io or "float32", "written": False}
    meta = build_metadata(run, fmt=fmt, quantization=mode, io_type=io)
    meta["batch"] = 1 if (fmt == "tflite" and mode == "int8-full") else None  # None: any batch size
    if fmt == "onnx":
        meta["opset"] = opset
    staging = _staging_path(final)
    t0 = time.perf_counter()
    try:
        _write(fmt, mode, io, staging, _source(run, fmt, mode, saved, meta), calib, meta, opset, allow_select_ops,
               float_onnx)
        row["export_seconds"] = round(time.perf_counter() - t0, 2)
        row["size_mb"] = round(_size(staging) / 1e6, 3)
        if verify:
            _verify(row, staging, meta, ref, images, mode, max_drop, threads)
        else:
            row["status"] = "unverified"
        if row["status"].startswith("failed"):
            row["status"] = row["status"].replace(str(staging), str(final))
            return row
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(staging, final)
        row["written"] = True
    except (UsageError, DataError):
        raise
    except ExportError as exc:
        row["status"] = f"failed: {exc}"
        row["failure"] = "export"
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():
            with contextlib.suppress(OSError):
                staging.unlink()
    return row


def _source(run: Any, fmt: str, mode: str, saved: Path, meta: dict[str, Any]) -> Path:
    """The SavedModel to convert: a QAT run's own for int8 TFLite (its learned ranges), else the run's."""
    if fmt == "tflite" and mode in ("int8", "int8-full"):
        qat = run.qat_saved_model()
        if qat is not None:
            meta["qat"] = True
            meta["batch"] = None  # the QAT SavedModel keeps a free batch dimension
            return qat
    return saved


def _write(fmt: str, mode: str, io: str | None, path: Path, saved: Path, calib: Any, meta: dict[str, Any],
           opset: int, allow_select_ops: bool, float_onnx: Path | None) -> None:
    if fmt == "tflite":
        from edgetl.export.tflite import export_tflite

        rep = _representative(calib) if calib is not None and _mode(mode).calibrated else None
        export_tflite(saved, path, mode, meta=meta, representative=rep, io_type=io,
                      allow_select_ops=allow_select_ops)
    elif fmt == "onnx":
        from edgetl.export.onnx import export_onnx

        export_onnx(saved, path, mode, meta=meta, opset=opset,
                    calibration=calib if mode == "int8" else None,
                    float_model=float_onnx if mode != "none" else None)
    else:
        from edgetl.export.saved_model import export_saved_model

        export_saved_model(saved, path, meta=meta)


def _representative(calib: Any) -> Any:
    def gen() -> Any:
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    return gen


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _verify(row: dict[str, Any], path: Path, meta: dict[str, Any], ref: dict[str, Any] | None, images: _Images,
            mode: str, max_drop: float | None, threads: int) -> None:
    """Open `path` in its runtime, check its contract, and measure it against the Keras reference."""
    import numpy as np

    from edgetl.runtime import open_model

    problems: list[str] = []
    try:
        # TensorFlow's thread pools are fixed once it has run an op (it has: the Keras reference), so a
        # SavedModel is measured with the threads TensorFlow already has.
        runner = open_model(path, threads=None if row["format"] == "saved_model" else threads)
    except EdgetlError as exc:
        if "flex" in str(exc).lower() or "select tensorflow op" in str(exc).lower():
            # Asked for with --allow-select-ops: stock LiteRT has no Flex delegate, so it cannot be run here.
            row["status"] = "unverified: needs the Flex delegate, which stock LiteRT lacks"
            return
        row["status"] = f"failed: the file does not open in its runtime ({exc})"
        row["failure"] = "verify"
        return
    try:
        got = runner.metadata or {}
        for key in ("class_names", "quantization", "format", "image_size"):
            if got.get(key) != meta.get(key):
                problems.append(f"metadata {key} reads back as {got.get(key)!r}, not {meta.get(key)!r}")
        row["input_dtype"] = runner.input_dtype
        want_dtype = meta.get("input_dtype", "float32")
        if runner.input_dtype != want_dtype:
            problems.append(f"input dtype is {runner.input_dtype}, not {want_dtype}")
        x, y, split = images.held_out(Reporter())
        probs = runner.predict(x)
        if probs.shape != ref["probs"].shape:
            problems.append(f"outputs have shape {probs.shape}, Keras {ref['probs'].shape}")
        else:
            row["max_abs_diff"] = round(float(np.abs(probs - ref["probs"]).max()), 7)
            row["agreement"] = round(float((probs.argmax(1) == ref["probs"].argmax(1)).mean()), 4)
            if y is not None:
                row["accuracy"] = round(float((probs.argmax(1) == y).mean()), 4)
                row["drop"] = round(ref["accuracy"] - row["accuracy"], 4)
        row["samples"] = int(len(x))
        row["latency_ms"] = median_ms(lambda: runner.predict(x[:1]))
    finally:
        runner.close()
    if problems:
        row["status"] = "failed: " + "; ".join(problems)
        row["failure"] = "verify"
    elif _mode(mode).float_model and row["max_abs_diff"] is not None and row["max_abs_diff"] > FLOAT_TOLERANCE:
        row["status"] = (f"failed: float file differs from Keras by {row['max_abs_diff']:.2g} "
                         f"(tolerance {FLOAT_TOLERANCE:g})")
        row["failure"] = "float_parity"
    elif max_drop is not None and not _mode(mode).float_model and row["drop"] is not None \
            and row["drop"] > float(max_drop) + 1e-9:
        row["status"] = f"failed: accuracy drop {row['drop']:.4f} > --max-drop {float(max_drop):g}"
        row["failure"] = "max_drop"
    else:
        row["status"] = "ok"


def _row_line(row: dict[str, Any]) -> str:
    size = f"{row['size_mb']:.2f} MB" if row.get("size_mb") is not None else "-"
    return f"{row['format']} {row['mode']}: {row['status']} ({size}) -> {row['path']}"


def _write_beside(run: Any, folder: Path, report: ExportReport) -> None:
    """labels.txt and export_report.json beside the files; the report keeps rows of files written before."""
    from edgetl.core.fileio import write_json, write_text

    write_text(folder / LABELS_FILE, "\n".join(run.class_names) + "\n")
    path = folder / REPORT_FILE
    old_rows: list[dict[str, Any]] = []
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            new_paths = {r["path"] for r in report.rows}
            if old.get("run") == str(report.run_dir):  # rows of another run's export are not ours to keep
                old_rows = [r for r in old.get("rows", []) if isinstance(r, dict) and r.get("path") not in new_paths
                            and Path(str(r.get("path"))).exists()
                            and not str(r.get("status", "")).startswith("failed")]
        except (OSError, ValueError, AttributeError):
            old_rows = []
    doc = report.to_dict()
    doc["rows"] = old_rows + report.rows
    doc["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(path, doc)
    report.json_path = path
