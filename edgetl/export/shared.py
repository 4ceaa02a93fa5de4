"""What every file of one export shares, made once on first use: the frozen passes, the SavedModel, the
calibrated TFLite models (the calibration itself in a child process, beside the other files)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ExportError
from edgetl.export.images import ExportImages, representative
from edgetl.export.modes import get_mode
from edgetl.export.plan import ExportOptions, Plan
from edgetl.export.report import ExportRow, Phases
from edgetl.export.verify import KerasReference

if TYPE_CHECKING:
    import keras
    import numpy as np

    from edgetl.export.calibration import BackgroundCalibration
    from edgetl.rundir import Run

log = logging.getLogger("edgetl")


@dataclass
class Job:
    """What every file of one export shares: the run, the plan, the images and the reference."""

    run: Run
    opts: ExportOptions
    plan: Plan
    images: ExportImages
    threads: int
    phases: Phases
    model: keras.Model | None = None
    calib: np.ndarray | None = None  # uint8 pixels; each consumer converts one image at a time
    ref: KerasReference | None = None
    float_onnx: Path | None = None  # the float ONNX file once written: ONNX int8 quantizes it
    warnings: list[str] = field(default_factory=list)  # for the report, from the files' checks
    saved: Path | None = None  # the SavedModel, written once when the saved_model format is asked for
    work: Path | None = None
    # TFLite and ONNX files are converted from the loaded model's frozen forward pass (free batch; batch 1
    # for int8-full): no SavedModel to write and read back for them.
    frozen: dict[int | None, Any] = field(default_factory=dict)
    calibrated: dict[int | None, bytes] = field(default_factory=dict)  # calibrate_tflite models, by batch
    graphs: dict[int | None, bytes] = field(default_factory=dict)  # the same, calibrated on one image only
    background: BackgroundCalibration | None = None  # the calibration running in a child process
    background_batch: int | None = None  # the batch kind it calibrates
    calibration_started: bool = False  # start_calibration has run (it runs once)
    calibrated_where: str | None = None  # "child process" or "this process", for the report
    # Files verified while the child ran, their batch-1 latency still to time (the child takes a core).
    pending_latency: list[tuple[ExportRow, Path]] = field(default_factory=list)


def saved_model_of(job: Job) -> Path:
    """The run's SavedModel (free batch), written on first use by the saved_model format."""
    from edgetl.export.saved_model import save_serving

    if job.saved is None:
        assert job.model is not None and job.work is not None
        with job.phases.time("savedmodel"):
            job.saved = save_serving(job.model, job.work / "saved_model")
    return job.saved


def frozen_pass(job: Job, batch: int | None) -> Any:
    """The loaded model's forward pass with its variables frozen, batch free or fixed: what TFLite and ONNX convert."""
    from edgetl.export.saved_model import frozen_forward

    if batch not in job.frozen:
        assert job.model is not None
        with job.phases.time("freeze", "batch 1" if batch else "free batch"):
            job.frozen[batch] = frozen_forward(job.model, batch=batch)
    return job.frozen[batch]


def calibrated_model(job: Job, batch: int | None) -> bytes:
    """The float TFLite model with calibration ranges, once per batch kind: every integer mode quantizes it."""
    from edgetl.export.calibration import calibrate_in_process
    from edgetl.export.tflite import with_ranges_of

    if batch not in job.calibrated:
        assert job.calib is not None
        label = "tflite batch 1" if batch else "tflite free batch"
        if job.background is not None and job.background_batch == batch:
            job.calibrated[batch] = _background_result(job, label)
            return job.calibrated[batch]
        graph = calibration_graph(job, batch)
        if batch is not None and job.calibrated.get(None) is not None:
            # The free-batch model's ranges serve the batch-1 graph (with_ranges_of); calibrate only if they do not fit.
            with job.phases.time("calibration ranges", label):
                ranged = with_ranges_of(graph, job.calibrated[None])
            if ranged is not None:
                job.calibrated[batch] = ranged
                return ranged
            log.info("the batch-1 graph has other tensors than the free-batch one: calibrating it too")
        with job.phases.time("calibration", label):
            job.calibrated[batch] = calibrate_in_process(graph, representative(job.calib))
        job.calibrated_where = job.calibrated_where or "this process"
    return job.calibrated[batch]


def calibration_graph(job: Job, batch: int | None) -> bytes:
    """The float TFLite model of a batch kind calibrated on one image: the converter's graph with its calibrated
    tensors, which the full calibration (here or in the child process) fills in."""
    from edgetl.export.tflite import calibrate_tflite

    if batch not in job.graphs:
        assert job.calib is not None
        source = frozen_pass(job, batch)
        with job.phases.time("calibration graph", "tflite batch 1" if batch else "tflite free batch"):
            job.graphs[batch] = calibrate_tflite(source, representative(job.calib[:1]))
    return job.graphs[batch]


def shares_calibration(job: Job, fmt: str, mode: str) -> bool:
    """Whether this file quantizes the job's shared calibrated model (see _tflite_source)."""
    if fmt != "tflite" or not get_mode(mode).calibrated or job.opts.allow_select_ops or job.calib is None:
        return False
    return mode == "int16x8" or job.run.qat_saved_model() is None


def start_calibration(job: Job) -> None:
    """Start the shared calibration in a child process, so that it runs beside the files that do not need it.

    Once per job (later calls return at once). On any failure here the files' own steps calibrate in this
    process (and report the same error, if any).
    """
    from edgetl.export.calibration import BackgroundCalibration

    if job.calibration_started:
        return
    job.calibration_started = True
    batches = {1 if mode == "int8-full" else None
               for fmt, mode in job.plan.pairs if shares_calibration(job, fmt, mode)}
    if not batches or job.calib is None or job.work is None:
        return
    batch = None if None in batches else 1  # int8-full alone calibrates its batch-1 graph; else it borrows ranges
    try:
        graph = calibration_graph(job, batch)
        job.background = BackgroundCalibration(graph, job.calib, job.work / "calibration")
        job.background_batch = batch
    except (ExportError, OSError) as exc:
        log.info("calibrating in this process instead of a child process: %s", exc)
        return
    if batch is None and 1 in batches:
        try:
            calibration_graph(job, 1)  # converted while the child calibrates
        except ExportError as exc:
            # The child goes on: int8-full converts its batch-1 graph again in its own step and reports this there.
            log.debug("the batch-1 graph for int8-full did not convert yet: %s", exc)


def _background_result(job: Job, label: str) -> bytes:
    """Wait for the child's calibration (timed as "calibration"); calibrate here if it failed."""
    from edgetl.export.calibration import calibrate_in_process

    background = job.background
    assert background is not None and job.calib is not None
    job.background = None
    with job.phases.time("calibration", label):
        try:
            data = background.result()
            job.calibrated_where = "child process"
        except ExportError as exc:
            log.warning("%s; calibrating in this process", exc)
            data = calibrate_in_process(job.graphs[job.background_batch], representative(job.calib))
            job.calibrated_where = "this process"
    if background.seconds is not None:
        job.phases.add("calibration process", background.seconds, label, background=True)
    return data


def stop_calibration(job: Job) -> None:
    """Stop a child calibration no file waited for (their conversions failed first, or the export did)."""
    if job.background is not None:
        job.background.cancel()
        job.background = None
