"""The export job: plan the files, stage each one, verify it in its runtime, move it into place.

It asks the format table (edgetl.export.formats) what each format needs, how to write it and which checks it
gets; it never tests a format's name. No TensorFlow at load time: `edgetl --help` stays fast.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import DataError, EdgetlError, ExportError, GateFailure, ModelError, UsageError
from edgetl.core.native import release_free_memory
from edgetl.core.progress import Reporter
from edgetl.export.checks import after_write
from edgetl.export.formats import CALIBRATION, FLOAT_ONNX, FROZEN, SAVED_MODEL, WriteRequest, get_format
from edgetl.export.images import ExportImages
from edgetl.export.modes import get_mode
from edgetl.export.plan import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_OPSET,
    DEFAULT_VERIFY_SECONDS,
    ExportOptions,
    make_plan,
)
from edgetl.export.reference import FLOAT_TOLERANCE, reference_pass
from edgetl.export.report import GATE_FAILURES, ExportReport, ExportRow, write_beside
from edgetl.export.shared import Job, float_tflite, frozen_pass, plans_float_tflite
from edgetl.export.verify import verify_file

if TYPE_CHECKING:

    from edgetl.rundir import Run

log = logging.getLogger("edgetl")

STAGING_PREFIX = ".edgetl-staging-"


def export_run(run_dir: str | os.PathLike[str] | Run, *, formats: Any = (), quantize: Any = (),
               output: str | os.PathLike[str] | None = None,
               calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, io_type: str | None = None,
               opset: int = DEFAULT_OPSET, allow_select_ops: bool = False, max_drop: float | None = None,
               verify: bool = True, verify_seconds: float | None = DEFAULT_VERIFY_SECONDS, threads: int | None = None,
               target: str | None = None, force: bool = False, strict: bool = False,
               bias_correction: bool = True, max_ram_kb: float | None = None, max_flash_kb: float | None = None,
               format_options: dict[str, Any] | None = None,
               accuracy_control: bool = False,
               reporter: Reporter | None = None) -> ExportReport:
    """Export a trained run to TFLite, ONNX and/or SavedModel, quantized as asked, and verify each file.

    Each (format, mode) pair that exists is written (see edgetl.export.formats.plan_pairs), named
    backbone-size-mode.ext in `output` (default RUN_DIR/export), with the edgetl metadata inside
    and labels.txt beside. With verify, each file is opened in its own runtime (LiteRT, ONNX
    Runtime, TensorFlow) and run on the run's held-out images against the Keras model.
    The arguments are the fields of ExportOptions, documented there.

    Returns:
        The ExportReport (also written as export_report.json in `output`).

    Raises:
        UsageError, ModelError, DataError, RunExistsError: bad options, run or data (nothing written).
        ExportError: a conversion failed, or a float file did not match Keras; GateFailure: a file
            lost more accuracy than max_drop, or a microcontroller file needs more RAM or flash than
            max_ram_kb / max_flash_kb (edgetl.export.tflm_check). Both carry the report as `.report`; files that passed
            are kept, failing ones are not written.
    """
    from edgetl.rundir import Run, load_run

    opts = ExportOptions(formats=tuple(_as_list(formats)), quantize=tuple(_as_list(quantize)),
                         output=Path(output) if output is not None else None,
                         calibration_samples=calibration_samples, io_type=io_type, opset=opset,
                         allow_select_ops=allow_select_ops, max_drop=max_drop, verify=verify,
                         verify_seconds=verify_seconds, threads=threads, target=target, force=force, strict=strict,
                         bias_correction=bias_correction, max_ram_kb=max_ram_kb, max_flash_kb=max_flash_kb,
                         format_options=dict(format_options or {}),
                         accuracy_control=accuracy_control)
    return run_export(run_dir if isinstance(run_dir, Run) else load_run(run_dir), opts, reporter)


def run_export(run: Run, opts: ExportOptions, reporter: Reporter | None = None) -> ExportReport:
    """export_run with its options as one ExportOptions."""
    from edgetl.core.tf import load_tensorflow

    reporter = reporter or Reporter()
    plan = make_plan(run, opts)
    needs_calibration = any(get_mode(m).calibrated and CALIBRATION in get_format(f).needs for f, m in plan.pairs)
    report = ExportReport(run_dir=run.path, output=plan.output)
    images = ExportImages(run, opts.calibration_samples if needs_calibration else 0, opts.verify, report.warnings)
    images.check()  # missing data fails here, before the slow part

    t0 = time.perf_counter()
    with report.phases.time("load"):
        load_tensorflow()
    job = Job(run, opts, plan, images, opts.threads if opts.threads is not None else default_threads(),
               report.phases)
    report.verify = {"enabled": opts.verify, "threads": job.threads, "batch_for_latency": 1,
                     "float_tolerance": FLOAT_TOLERANCE, "max_drop": opts.max_drop,
                     "seconds_per_file": opts.verify_seconds}
    created = not plan.output.exists()
    plan.output.mkdir(parents=True, exist_ok=True)
    clean_staging(plan.output)
    job.work = Path(tempfile.mkdtemp(prefix="edgetl-export-"))
    try:
        try:
            _prepare(job, needs_calibration, report, reporter)
        except BaseException:
            if created:  # a damaged model or an interrupt before the first file: leave no empty folder behind
                with contextlib.suppress(OSError):
                    plan.output.rmdir()
            raise
        release_free_memory()
        for fmt, mode in _conversion_order(plan.pairs):
            reporter.start(f"exporting {fmt} {mode}", None)
            row = _export_one(job, fmt, mode)
            reporter.finish()
            if get_format(fmt).gives_float_onnx and get_mode(mode).float_model and row.status in ("ok", "unverified"):
                job.exported_onnx = plan.paths[(fmt, mode)]
            report.rows.append(row)
            release_free_memory()
            reporter.info(row.line())
        if job.calibration is not None:
            report.verify["calibration"] = job.calibration
        report.rows.sort(key=lambda r: plan.pairs.index((r.format, r.mode)))  # the report keeps the asked order
        report.warnings.extend(job.warnings)
        with report.phases.time("write report"):
            report.seconds = round(time.perf_counter() - t0, 2)
            write_beside(run.class_names, plan.output, report)
            _write_cards(run, plan.output, report)
        _log_phases(report, reporter)
    finally:
        reporter.finish()
        shutil.rmtree(job.work, ignore_errors=True)
    failed = report.failed
    if failed:
        what = "; ".join(f"{r.format} {r.mode}: {r.status[len('failed: '):]}" for r in failed)
        message = f"{len(failed)} of {len(report.rows)} exports failed ({what})."
        if all(r.failure in GATE_FAILURES for r in failed):
            raise GateFailure(message, report=report)
        raise ExportError(message, report=report)
    return report


def _conversion_order(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Formats converted first (Format.convert_first: ONNX, ORT), then the rest, each group in the asked order.

    tf2onnx is the export's largest memory step (+460 MB on MobileNetV2 at 224); run first, the memory
    it frees is reused by the TFLite steps after it. Run after them, it stacks on top: every mode of
    the flowers run peaked at 2,403 MB in the asked order and 2,144 MB in this one (BENCHMARKS.md).
    """
    return sorted(pairs, key=lambda pair: 0 if get_format(pair[0]).convert_first else 1)


def _prepare(job: Job, needs_calibration: bool, report: ExportReport, reporter: Reporter) -> None:
    """The work every file shares, done once: the model, calibration images, the Keras reference."""
    import numpy
    run = job.run
    reporter.start("loading the model", None)
    with job.phases.time("load model"):
        model = run.load_model()
    shape = tuple(model.input_shape[1:3])
    if shape != (run.image_size, run.image_size):
        raise ModelError(f"run '{run.path}': its model takes {shape[0]}x{shape[1]} images but its manifest says "
                         f"{run.image_size}. The run is damaged; train it again.")
    job.model = model
    reporter.finish()
    if needs_calibration:
        with job.phases.time("calibration images"):
            job.calib = job.images.calibration(reporter, numpy.uint8)
        report.verify["calibration_samples"] = job.images.calibration_used
    if job.opts.verify:
        with job.phases.time("held-out images"):
            job.images.held_out(reporter)
        # The reference may run in LiteRT on the float TFLite graph (edgetl.export.reference): what it needs
        # is made first, as its own phases, when the export makes it anyway.
        converts = any(FROZEN in get_format(fmt).needs for fmt in job.plan.formats)
        shared = plans_float_tflite(job)
        if converts:
            frozen_pass(job, None)
        if shared:
            with job.phases.time("convert", "tflite float32 graph"):
                float_tflite(job)
        with job.phases.time("keras reference"):
            job.ref = reference_pass(model, job.images, reporter,
                                     float_tflite=(lambda: float_tflite(job)) if converts else None,
                                     shared=shared, threads=job.threads)
        report.reference = dict(job.ref.summary)


def _log_phases(report: ExportReport, reporter: Reporter) -> None:
    """The per-phase seconds table, on the progress output and in the log."""
    lines = report.phases.table()
    log.info("export phases (wall and CPU seconds):\n%s", "\n".join(lines))
    reporter.info("export phases (wall and CPU seconds):")
    for line in lines:
        reporter.info("  " + line)


def _write_cards(run: Run, folder: Path, report: ExportReport) -> None:
    """The run's model card with the export table: beside the files, and as the run's own README.md."""
    import json
    import logging

    from edgetl.card import write_card
    from edgetl.rundir import METRICS_FILE

    try:
        rows = json.loads(report.json_path.read_text(encoding="utf-8"))["rows"] if report.json_path else []
        metrics = json.loads((run.path / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        rows, metrics = [r.to_dict() for r in report.rows], None
    rows = [r for r in rows if not str(r.get("status", "")).startswith("failed")]
    # The copy beside the files ships with them: it names their folder, not this machine's path to it.
    write_card(folder, run.manifest, metrics, exports=rows, export_dir=folder.name)
    if folder.resolve() != run.path.resolve():
        try:
            write_card(run.path, run.manifest, metrics, exports=rows,
                       export_dir=os.path.relpath(folder.resolve(), run.path.resolve()))
        except EdgetlError as exc:  # a read-only run folder keeps its card; the export's copy is complete
            logging.getLogger("edgetl").warning("the run's README.md was not updated: %s", exc)


def default_threads() -> int:
    """Threads for verification and latency when not given: the machine's cores, up to 4."""
    return max(1, min(4, os.cpu_count() or 1))


def clean_staging(folder: Path) -> None:
    """Remove staging files an export killed hard (SIGKILL, power loss) left behind."""
    for p in folder.glob(f"{STAGING_PREFIX}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def staging_path(final: Path) -> Path:
    """Where a file is written before it passes: beside its final place, so the move is atomic."""
    return final.parent / f"{STAGING_PREFIX}{os.getpid()}-{final.name}"


def _export_one(job: Job, fmt: str, mode: str) -> ExportRow:
    """Write one file to a staging name, verify it, check it, and move it into place only when it passes."""
    from edgetl.export.metadata import build_metadata

    spec = get_format(fmt)
    final = job.plan.paths[(fmt, mode)]
    io = job.plan.io_type if get_mode(mode).integer_io and "io_type" in spec.options else None
    row = ExportRow(format=fmt, mode=mode, io_type=io, path=str(final), input_dtype=io or "float32")
    meta = build_metadata(job.run, fmt=fmt, quantization=mode, io_type=io)
    meta["batch"] = 1 if mode in spec.batch_one else None  # None: any batch size
    for option in spec.meta_options:
        meta[option] = getattr(job.opts, option)
    staging = staging_path(final)
    name = f"{fmt} {mode}"
    try:
        # The shared inputs (a frozen pass, a calibrated model) are made on first use and timed as their own phases.
        if spec.prepare is None:
            _make_needs(job, spec.needs)
            source = None
        else:  # a format with its own preparation makes what it needs, batch and calibration as its mode wants
            source = spec.prepare(job, mode, meta)
        t0, c0 = time.perf_counter(), time.process_time()
        row.extra.update(spec.write(job, WriteRequest(path=staging, mode=mode, io_type=io, meta=meta, source=source)))
        row.export_seconds = round(time.perf_counter() - t0, 2)
        job.phases.add("convert", row.export_seconds, name, cpu=time.process_time() - c0)
        row.size_mb = round(sum(_size(f) for f in _with_companions(staging, spec.companions)) / 1e6, 3)
        if job.opts.verify and job.ref is not None:
            with job.phases.time("verify", name):
                # The float TFLite graph the reference ran in LiteRT (float_tflite) is shared, not run twice.
                verify_file(row, staging, meta, job.ref, job.images, job.opts.max_drop, job.threads,
                            job.opts.verify_seconds, reference_graph=mode in spec.reference_graph)
        else:
            row.status = "unverified"
        for check in after_write(fmt, job.opts.target):
            if row.failed:
                break
            assert check.run is not None
            check.run(job, row, staging)
        if row.failed:
            row.status = row.status.replace(str(staging), str(final))
            return row
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        for src, dst in zip(_with_companions(staging, spec.companions), _with_companions(final, spec.companions),
                            strict=True):
            os.replace(src, dst)  # the companions first: the main file appears with its companions in place
        row.written = True
    except (UsageError, DataError):
        raise
    except ExportError as exc:
        row.fail(str(exc), "export")
    finally:
        for leftover in _with_companions(staging, spec.companions):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover.exists():
                with contextlib.suppress(OSError):
                    leftover.unlink()
    return row


def _make_needs(job: Job, needs: frozenset[str]) -> None:
    """Make what a format needs before its conversion is timed (each is made once per export, timed as its phase).

    The calibration images (CALIBRATION) are made by _prepare when a planned mode is calibrated."""
    if FROZEN in needs:
        frozen_pass(job, None)
    if FLOAT_ONNX in needs:
        job.float_onnx()
    if SAVED_MODEL in needs:
        job.saved_model()


def _with_companions(path: Path, companions: tuple[str, ...]) -> list[Path]:
    """The files one export writes: its companions (same stem, their suffixes: an OpenVINO .bin), then `path`."""
    return [path.with_suffix(s) for s in companions] + [path]


def _size(p: Path) -> int:
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])
