"""TFLite calibration: each calibrated tensor's range (min, max) over the calibration images, measured in LiteRT.

tf.lite's Calibrator runs the float model through TensorFlow's logging interpreter, one image per call on
one thread: 300 images at 224 px took 44 s on this machine. It also logs each op's inputs a second time
after the op has run, so where the interpreter runs an op in place (an ADD or SUB writing over its input's
buffer) the input's range takes in the output's: in MobileNetV2 every residual block's projection output
got its sum's range, up to 1.9x wider, which costs those tensors resolution once quantized.

Here the same float model runs in LiteRT (XNNPACK, every thread, a few images per call) with each
calibrated tensor made an output, and each range is that tensor's own min and max over the images: 4 s
for the same 300 images. The ranges go into the graph the converter calibrated on one image (its tensors,
names and order), so the converter's quantizers read them as their own
(edgetl.export.formats.tflite.quantize_calibrated).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import ExportError, first_line
from edgetl.core.native import quiet_native_stderr
from edgetl.export.flatbuffer import read_model, write_model
from edgetl.export.images import MEAN_IMAGES
from edgetl.export.tflite_bias import kernel_inputs

if TYPE_CHECKING:
    from ai_edge_litert.schema_py_generated import ModelT

    from edgetl.core.progress import Reporter

log = logging.getLogger("edgetl")

MAX_BATCH = 4  # images per call: XNNPACK's best on 2 cores (2.3 s for 300 images, against 2.8 at 1 and 5.4 at 8)
BATCH_BYTES = 256 << 20  # fewer per call when the calibrated tensors of 4 images would take more than this


class CalibrationUnsupported(ExportError):
    """LiteRT cannot measure this model's ranges (several subgraphs, a tensor it cannot output): use tf.lite's."""


def calibrated_tensors(model: ModelT) -> list[int]:
    """The indices of the tensors the converter calibrates (those with a range in its one-image calibration).

    Raises:
        CalibrationUnsupported: not one subgraph, or a calibrated tensor that is not float32.
    """
    from ai_edge_litert.schema_py_generated import TensorType

    if len(model.subgraphs or []) != 1:
        raise CalibrationUnsupported(f"the model has {len(model.subgraphs or [])} subgraphs")
    tensors = model.subgraphs[0].tensors or []
    found = [i for i, t in enumerate(tensors) if t.quantization is not None and t.quantization.min is not None]
    if not found:
        raise CalibrationUnsupported("the model has no calibrated tensors")
    odd = [tensors[i].name for i in found if tensors[i].type != TensorType.FLOAT32]
    if odd:
        raise CalibrationUnsupported(f"calibrated tensor {odd[0]!r} is not float32")
    return found


@dataclass
class Statistics:
    """What one pass over the calibration images measured."""

    ranges: dict[int, tuple[float, float]]  # each calibrated tensor's (min, max), by index
    means: dict[str, np.ndarray] = field(default_factory=dict)  # asked-for tensors averaged over the images, by name


def collect_ranges(graph: bytes, images: np.ndarray, threads: int | None,
                   reporter: Reporter | None = None) -> dict[int, tuple[float, float]]:
    """Each calibrated tensor of `graph` (the converter's, calibrated on one image): its (min, max) over `images`.

    `images`: (N, H, W, 3), any dtype, fed as float32 as the calibrator feeds them.

    Raises:
        CalibrationUnsupported: LiteRT cannot run the graph with its calibrated tensors as outputs.
    """
    return collect_statistics(graph, images, threads, reporter).ranges


def collect_statistics(graph: bytes, images: np.ndarray, threads: int | None, reporter: Reporter | None = None,
                       means_of: Mapping[int, str] | None = None) -> Statistics:
    """collect_ranges, and in the same pass the tensors `means_of` names averaged over the images (batch axis;
    the first MEAN_IMAGES of them).

    The means are what bias correction needs (edgetl.export.tflite_bias); a tensor that is neither
    calibrated nor the input has no mean.

    Raises:
        CalibrationUnsupported: LiteRT cannot run the graph with its calibrated tensors as outputs.
    """
    from ai_edge_litert.interpreter import Interpreter

    model = read_model(graph)
    wanted = calibrated_tensors(model)
    subgraph = model.subgraphs[0]
    inputs = [int(i) for i in subgraph.inputs]
    if len(inputs) != 1:
        raise CalibrationUnsupported(f"the model has {len(inputs)} inputs")
    outputs = [i for i in wanted if i not in inputs]  # an input is not an output: its range comes from the images
    subgraph.outputs = outputs
    per_image = sum(4 * int(np.prod([max(int(d), 1) for d in _dims(subgraph.tensors[i].shape)][1:]))
                    for i in outputs)
    batch = int(max(1, min(MAX_BATCH, BATCH_BYTES // max(per_image, 1))))
    source = subgraph.tensors[inputs[0]]
    signature = _dims(source.shapeSignature if source.shapeSignature is not None else source.shape)
    if not signature or signature[0] != -1:  # a fixed batch (int8-full's graph): its reshapes assume it
        batch = max(1, int(signature[0])) if signature else 1
    try:
        with quiet_native_stderr():
            interpreter = Interpreter(model_content=write_model(model), num_threads=threads)
    except Exception as exc:  # LiteRT raises RuntimeError/ValueError on graphs it cannot build
        raise CalibrationUnsupported(f"LiteRT cannot run the graph: {first_line(exc)}") from None
    details = interpreter.get_output_details()
    if sorted(int(d["index"]) for d in details) != sorted(outputs):
        raise CalibrationUnsupported("LiteRT renumbered the graph's outputs")
    views = [(int(d["index"]), interpreter.tensor(int(d["index"]))) for d in details]
    low = {i: np.inf for i in wanted}
    high = {i: -np.inf for i in wanted}
    means_of = {i: n for i, n in (means_of or {}).items() if i in inputs or i in outputs}
    sums: dict[int, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    if reporter is not None:
        reporter.start("calibrating", len(images))
    try:
        for start in range(0, len(images), batch):
            x = np.asarray(images[start:start + batch], dtype=np.float32)
            if x.shape != shape:
                interpreter.resize_tensor_input(inputs[0], list(x.shape))
                interpreter.allocate_tensors()
                shape = x.shape
            interpreter.set_tensor(inputs[0], x)
            interpreter.invoke()
            for i in inputs:
                if i in low:
                    low[i], high[i] = min(low[i], float(x.min())), max(high[i], float(x.max()))
                if i in means_of and start < MEAN_IMAGES:
                    _add(sums, i, x[:MEAN_IMAGES - start])
            for i, view in views:
                _extend(view, i, low, high)
                if i in means_of and start < MEAN_IMAGES:
                    _add(sums, i, view()[:MEAN_IMAGES - start])
            if reporter is not None:
                reporter.advance(len(x))
    except (RuntimeError, ValueError) as exc:
        raise CalibrationUnsupported(f"LiteRT failed on the calibration images: {first_line(exc)}") from None
    finally:
        if reporter is not None:
            reporter.finish()
    if not len(images):
        raise ExportError("no calibration images to calibrate with.")
    return Statistics({i: (low[i], high[i]) for i in wanted},
                      {means_of[i]: (total / min(len(images), MEAN_IMAGES)).astype(np.float32)
                       for i, total in sums.items()})


def _add(sums: dict[int, np.ndarray], index: int, values: np.ndarray) -> None:
    """Add a batch of one tensor's values to its running sum over images.

    The batch (a few images) is summed in float32, 4x faster than in float64 and exact enough; the running
    sum over hundreds of images is float64."""
    batch = values.sum(axis=0)
    if index in sums:
        sums[index] += batch
    else:
        sums[index] = batch.astype(np.float64)


def _dims(shape: np.ndarray | list[int] | None) -> list[int]:
    return [int(d) for d in shape] if shape is not None else []


def _extend(view: Callable[[], np.ndarray], index: int, low: dict[int, float], high: dict[int, float]) -> None:
    """Widen one tensor's range by its values now (a view of LiteRT's buffer, released before the next call)."""
    values = view()
    low[index] = min(low[index], float(values.min()))
    high[index] = max(high[index], float(values.max()))


def with_ranges(graph: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """`graph` with each tensor's calibration range replaced by `ranges[index]`; everything else as it was."""
    model = read_model(graph)
    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        quantization = tensors[index].quantization
        quantization.min, quantization.max = [low], [high]
    return write_model(model)


def calibrate(graph: bytes, images: np.ndarray, threads: int | None, reporter: Reporter | None = None) -> bytes:
    """`graph` with its calibrated tensors' ranges over `images`: what every integer TFLite mode quantizes.

    Raises:
        CalibrationUnsupported: LiteRT cannot measure this graph (calibrate_with_tensorflow can).
    """
    return with_ranges(graph, collect_ranges(graph, images, threads, reporter))


@dataclass
class Calibrated:
    """A float graph calibrated for every integer mode, and what the same pass measured."""

    data: bytes  # the graph with each calibrated tensor's range
    means: dict[str, np.ndarray]  # each kernel op's mean input, by tensor name (bias correction); empty: none
    engine: dict[str, Any]  # {"engine": "litert", "threads": N} or {"engine": "tensorflow", "reason": ...}


def calibrate_graph(graph: bytes, images: np.ndarray, threads: int | None, *, means: bool) -> Calibrated:
    """Ranges measured in LiteRT, with the kernels' mean inputs bias correction needs when `means`;
    tf.lite's Calibrator where LiteRT cannot (no means then, and the log says so). What `edgetl export` and
    `--auto` both calibrate with."""
    from edgetl.export.images import representative

    try:
        stats = collect_statistics(graph, images, threads, means_of=kernel_inputs(graph) if means else None)
        return Calibrated(with_ranges(graph, stats.ranges), stats.means, {"engine": "litert", "threads": threads})
    except CalibrationUnsupported as exc:
        log.info("calibrating with tf.lite's Calibrator: %s", exc)
        if means:
            log.info("no bias correction: it needs the kernels' mean inputs from LiteRT's calibration pass")
        return Calibrated(calibrate_with_tensorflow(graph, representative(images)), {},
                          {"engine": "tensorflow", "reason": str(exc)})


def calibrate_with_tensorflow(model: bytes, representative: Callable[[], Iterable[list[np.ndarray]]]) -> bytes:
    """The same through tf.lite's Calibrator (slower; its ranges of in-place ops' inputs are wider, see above).

    Raises:
        ExportError: the calibrator failed (its message, on one line).
    """
    from tensorflow.lite.python.optimize import calibrator

    try:
        with quiet_native_stderr():
            return bytes(calibrator.Calibrator(model).calibrate(representative))
    except Exception as exc:
        raise ExportError(f"TFLite calibration failed: {first_line(exc)}. Try --quantize dynamic or float16.") from None
