"""What every file of one export shares, made once on first use: the frozen passes, the SavedModel, the
calibrated TFLite models."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ExportError
from edgetl.export.images import ExportImages, representative
from edgetl.export.modes import get_mode
from edgetl.export.plan import ExportOptions, Plan
from edgetl.export.reference import KerasReference
from edgetl.export.report import Phases

if TYPE_CHECKING:
    import keras
    import numpy as np

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
    calibration: dict[str, Any] | None = None  # how the shared calibration ran, for the report
    # Each kernel op's mean input over the calibration images, by tensor name (bias correction); None: not measured.
    means: dict[str, np.ndarray] | None = None
    # The free-batch frozen pass as float32 TFLite (no metadata): the `tflite none` file and the reference's
    # LiteRT pass. b"" once its conversion failed (the `tflite none` file then reports why).
    float_tflite: bytes | None = None


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


def float_tflite(job: Job) -> bytes | None:
    """The free-batch frozen pass converted to float32 TFLite once (None when it cannot be converted)."""
    from edgetl.export.tflite import convert_tflite

    if job.float_tflite is None:
        source = frozen_pass(job, None)
        try:
            job.float_tflite = convert_tflite(source, "none", allow_select_ops=job.opts.allow_select_ops)
        except ExportError as exc:
            log.debug("no float TFLite graph: %s", exc)
            job.float_tflite = b""
    return job.float_tflite or None


def plans_float_tflite(job: Job) -> bool:
    """Whether a `tflite none` file is planned (converted from the frozen pass, so float_tflite is shared)."""
    return ("tflite", "none") in job.plan.pairs


def calibrated_model(job: Job, batch: int | None) -> bytes:
    """The float TFLite model with calibration ranges, once per batch kind: every integer mode quantizes it."""
    from edgetl.export.tflite import with_ranges_of

    if batch not in job.calibrated:
        assert job.calib is not None
        label = "tflite batch 1" if batch else "tflite free batch"
        if batch is not None and None not in job.calibrated and any(
                mode != "int8-full" and shares_calibration(job, fmt, mode) for fmt, mode in job.plan.pairs):
            calibrated_model(job, None)  # a free-batch file comes later: calibrate once, for both
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
            job.calibrated[batch] = _calibrate(job, graph)
    return job.calibrated[batch]


def _calibrate(job: Job, graph: bytes) -> bytes:
    """The shared calibration (edgetl.export.calibration.calibrate_graph), with the means bias correction needs."""
    from edgetl.export.calibration import calibrate_graph

    assert job.calib is not None
    t0 = time.perf_counter()
    result = calibrate_graph(graph, job.calib, job.threads, means=job.opts.bias_correction)
    if job.means is None and result.means:
        job.means = result.means
    data, engine = result.data, result.engine
    job.calibration = job.calibration or {**engine, "images": len(job.calib),
                                          "seconds": round(time.perf_counter() - t0, 2)}
    return data


def quantize_shared(job: Job, mode: str, io_type: str | None, calibrated: bytes) -> tuple[bytes, list[str]]:
    """A calibrated TFLite mode quantized from the shared calibrated model, bias-corrected when asked and measured.

    Returns:
        The file's flatbuffer (no metadata) and the output names of the kernel ops whose bias was corrected.
    """
    from edgetl.export.tflite import quantize_calibrated
    from edgetl.export.tflite_bias import correct_bias

    data = quantize_calibrated(calibrated, mode, io_type)
    if not job.opts.bias_correction or not job.means:
        return data, []
    return correct_bias(data, calibrated, job.means)


def calibration_graph(job: Job, batch: int | None) -> bytes:
    """The float TFLite model of a batch kind calibrated on one image: the converter's graph with its calibrated
    tensors, which the full calibration fills in."""
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
