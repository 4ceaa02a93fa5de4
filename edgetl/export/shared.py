"""What every file of one export shares, made once on first use: the frozen passes, the SavedModel, the float
ONNX file, the calibrated TFLite models. The Job is the context every format's writer asks
(edgetl.export.formats.base.ExportContext)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import ExportError
from edgetl.export.formats import get_format
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
    # The export's own float ONNX file once written and passed (a format with gives_float_onnx): the ONNX files
    # of other modes quantize it.
    exported_onnx: Path | None = None
    made_onnx: Path | None = None  # the float ONNX file made aside (float_onnx) when the export writes none
    warnings: list[str] = field(default_factory=list)  # for the report, from the files' checks
    saved: Path | None = None  # the SavedModel, written once when the saved_model format is asked for
    work: Path | None = None
    # TFLite and ONNX files are converted from the loaded model's frozen forward pass (free batch; batch 1
    # for int8-full): no SavedModel to write and read back for them.
    frozen_passes: dict[int | None, Any] = field(default_factory=dict)
    calibrated: dict[int | None, bytes] = field(default_factory=dict)  # calibrate_tflite models, by batch
    graphs: dict[int | None, bytes] = field(default_factory=dict)  # the same, calibrated on one image only
    calibration: dict[str, Any] | None = None  # how the shared calibration ran, for the report
    # Each kernel op's mean input over the calibration images, by tensor name (bias correction); None: not measured.
    means: dict[str, np.ndarray] | None = None
    # The free-batch frozen pass as float32 TFLite (no metadata): the `tflite none` file and the reference's
    # LiteRT pass. b"" once its conversion failed (the `tflite none` file then reports why).
    float_flatbuffer: bytes | None = None

    # -- the ExportContext every format's writer asks (edgetl.export.formats.base) ---------------------------
    def frozen(self, batch: int | None) -> Any:
        """The model's forward pass with its variables frozen, batch free (None) or fixed."""
        return frozen_pass(self, batch)

    def saved_model(self) -> Path:
        """The run's SavedModel folder (free batch)."""
        return saved_model_of(self)

    def float_onnx(self) -> Path:
        """The float32 ONNX file of the run: the export's `onnx none` file once written, else one made aside."""
        return float_onnx(self)

    def exported_float_onnx(self) -> Path | None:
        """The export's own float ONNX file once written and passed, else None."""
        return self.exported_onnx

    def float_tflite(self) -> bytes | None:
        """The free-batch float32 TFLite flatbuffer, shared with the reference pass; None if it cannot be made."""
        return float_tflite(self)

    def scratch(self, name: str) -> Path:
        """A path in the export's work folder, removed when the export ends."""
        assert self.work is not None
        return self.work / name

    def shares_calibration(self, fmt: str, mode: str) -> bool:
        """Whether the `fmt` `mode` file quantizes the shared calibrated TFLite model."""
        return shares_calibration(self, fmt, mode)

    def calibrated_model(self, batch: int | None) -> bytes:
        """The float TFLite model with calibration ranges, batch free (None) or fixed."""
        return calibrated_model(self, batch)

    def quantize_shared(self, mode: str, io_type: str | None, calibrated: bytes) -> tuple[bytes, list[str]]:
        """A calibrated TFLite mode quantized from the shared calibrated model, bias-corrected when asked."""
        return quantize_shared(self, mode, io_type, calibrated)


def saved_model_of(job: Job) -> Path:
    """The run's SavedModel (free batch), written on first use by the saved_model format."""
    from edgetl.export.formats.saved_model import save_serving

    if job.saved is None:
        assert job.model is not None and job.work is not None
        with job.phases.time("savedmodel"):
            job.saved = save_serving(job.model, job.work / "saved_model")
    return job.saved


def frozen_pass(job: Job, batch: int | None) -> Any:
    """The loaded model's forward pass with its variables frozen, batch free or fixed: what TFLite and ONNX convert."""
    from edgetl.export.formats.saved_model import frozen_forward

    if batch not in job.frozen_passes:
        assert job.model is not None
        with job.phases.time("freeze", "batch 1" if batch else "free batch"):
            job.frozen_passes[batch] = frozen_forward(job.model, batch=batch)
    return job.frozen_passes[batch]


def float_onnx(job: Job) -> Path:
    """The float32 ONNX file of the run: the export's own once written, else converted once into the work folder."""
    from edgetl.export.formats.onnx import export_onnx

    if job.exported_onnx is not None:
        return job.exported_onnx
    if job.made_onnx is None:
        assert job.work is not None
        source = frozen_pass(job, None)
        with job.phases.time("convert", "onnx float32 (shared)"):
            job.made_onnx = export_onnx(source, job.work / "float32.onnx", "none", opset=job.opts.opset)
    return job.made_onnx


def float_tflite(job: Job) -> bytes | None:
    """The free-batch frozen pass converted to float32 TFLite once (None when it cannot be converted)."""
    from edgetl.export.formats.tflite import convert_tflite

    if job.float_flatbuffer is None:
        source = frozen_pass(job, None)
        try:
            job.float_flatbuffer = convert_tflite(source, "none", allow_select_ops=job.opts.allow_select_ops)
        except ExportError as exc:
            log.debug("no float TFLite graph: %s", exc)
            job.float_flatbuffer = b""
    return job.float_flatbuffer or None


def plans_float_tflite(job: Job) -> bool:
    """Whether a file that is the float TFLite graph is planned (`tflite none`: converted from the frozen pass, so
    float_tflite is shared with the reference)."""
    return any(m in get_format(f).reference_graph for f, m in job.plan.pairs)


def calibrated_model(job: Job, batch: int | None) -> bytes:
    """The float TFLite model with calibration ranges, once per batch kind: every integer mode quantizes it."""
    from edgetl.export.formats.tflite import with_ranges_of

    if batch not in job.calibrated:
        assert job.calib is not None
        label = "tflite batch 1" if batch else "tflite free batch"
        if batch is not None and None not in job.calibrated and any(
                mode not in get_format(fmt).batch_one and shares_calibration(job, fmt, mode)
                for fmt, mode in job.plan.pairs):
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
    from edgetl.export.formats.tflite import quantize_calibrated
    from edgetl.export.tflite_bias import correct_bias

    data = quantize_calibrated(calibrated, mode, io_type)
    if not job.opts.bias_correction or not job.means:
        return data, []
    return correct_bias(data, calibrated, job.means)


def calibration_graph(job: Job, batch: int | None) -> bytes:
    """The float TFLite model of a batch kind calibrated on one image: the converter's graph with its calibrated
    tensors, which the full calibration fills in."""
    from edgetl.export.formats.tflite import calibrate_tflite

    if batch not in job.graphs:
        assert job.calib is not None
        source = frozen_pass(job, batch)
        with job.phases.time("calibration graph", "tflite batch 1" if batch else "tflite free batch"):
            job.graphs[batch] = calibrate_tflite(source, representative(job.calib[:1]))
    return job.graphs[batch]


def shares_calibration(job: Job, fmt: str, mode: str) -> bool:
    """Whether this file quantizes the job's shared calibrated model (edgetl.export.formats.tflite.prepare)."""
    if not get_format(fmt).shared_calibration or not get_mode(mode).calibrated or job.opts.allow_select_ops \
            or job.calib is None:
        return False
    return mode == "int16x8" or job.run.qat_saved_model() is None
