"""What a format is (its record) and what its writer may ask the export for (the context).

A format module holds its writer and its `FORMAT` record; edgetl.export.formats lists the records in one table.
The export job (edgetl.export.job) reads the record and never tests a format's name: a new format is its
record and its module. Nothing here imports TensorFlow or a format module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np

    from edgetl.rundir import Run

# What a format may need made before its file is converted (Format.needs). Each is made once per export, on
# first use, and timed as its own phase, so a file's "convert" time is its own conversion only.
FROZEN = "frozen"  # the loaded model's free-batch forward pass, variables frozen (TFLite, tf2onnx convert it)
FLOAT_ONNX = "float_onnx"  # the float32 ONNX file of the run (the `onnx none` file when planned, else made aside)
SAVED_MODEL = "saved_model"  # the run's SavedModel (free batch)
CALIBRATION = "calibration"  # the calibration images (made whenever a planned mode is calibrated)
NEEDS = (FROZEN, FLOAT_ONNX, SAVED_MODEL, CALIBRATION)


class ExportContext(Protocol):
    """What a writer may ask the export for (edgetl.export.shared.Job implements it).

    Shared inputs are made on first use and cached for every file of the export; a format lists those it
    needs in `Format.needs` so they are made (and timed) before its conversion.
    """

    run: Run
    opts: Any  # edgetl.export.plan.ExportOptions
    threads: int
    calib: np.ndarray | None  # the calibration images, uint8 NHWC; None when no planned mode is calibrated
    images: Any  # edgetl.export.images.ExportImages: held_out() gives the verification images and labels

    def frozen(self, batch: int | None) -> Any:
        """The model's forward pass with its variables frozen, batch free (None) or fixed."""

    def saved_model(self) -> Path:
        """The run's SavedModel folder (free batch)."""

    def float_onnx(self) -> Path:
        """The float32 ONNX file of the run: the export's `onnx none` file once written, else one made aside."""

    def exported_float_onnx(self) -> Path | None:
        """The export's own `onnx none` file once written and passed, else None (nothing is made)."""

    def float_tflite(self) -> bytes | None:
        """The free-batch float32 TFLite flatbuffer (no metadata), shared with the reference; None if it fails."""

    def scratch(self, name: str) -> Path:
        """A path in the export's work folder (removed when the export ends) for a format's intermediate files."""

    # TFLite's shared calibration (edgetl.export.shared): one calibration pass for every integer TFLite file.
    def shares_calibration(self, fmt: str, mode: str) -> bool:
        """Whether the `fmt` `mode` file quantizes the export's shared calibrated TFLite model."""

    def calibrated_model(self, batch: int | None) -> bytes:
        """The float TFLite model with calibration ranges, batch free (None) or fixed."""

    def quantize_shared(self, mode: str, io_type: str | None, calibrated: bytes) -> tuple[bytes, list[str]]:
        """A calibrated mode quantized from the shared calibrated model, bias-corrected when asked."""


@dataclass
class WriteRequest:
    """One file to write: where, in which mode, with which metadata, and what `prepare` made for it."""

    path: Path  # the staging path: write exactly here (a file, or a folder for a folder format)
    mode: str
    io_type: str | None  # integer input/output type (formats with "io_type" in their options), else None
    meta: dict[str, Any]  # the edgetl metadata to embed (edgetl.export.metadata.build_metadata)
    source: Any = None  # what the format's `prepare` returned (None without one)


Writer = Callable[[ExportContext, WriteRequest], dict[str, Any]]
Preparer = Callable[[ExportContext, str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Format:
    """One export format: everything the export, the plan and the verification need to know about it."""

    name: str  # the --format value and the report rows' "format"
    help: str  # one line for the CLI
    suffix: str  # the file's suffix (".tflite"); "" for a folder format
    modes: tuple[str, ...]  # the quantization modes (edgetl.export.modes.MODES) it takes
    kind: str  # the runtime kind that opens its files (edgetl.runtime.kinds)
    write: Writer  # writes WriteRequest.path; returns figures for the file's report row ({} when none)
    # Of NEEDS: made before the conversion is timed, by the job (by `prepare`, when the format has one).
    needs: frozenset[str] = frozenset()
    # The options that apply to it beyond the common ones: ExportOptions fields ("opset", "io_type",
    # "allow_select_ops") or keys of ExportOptions.format_options (a new format's own, like a QNN SoC); an
    # option no planned format takes is refused by the plan.
    options: tuple[str, ...] = ()
    meta_options: tuple[str, ...] = ()  # ExportOptions fields recorded in the file's metadata
    batch_one: tuple[str, ...] = ()  # modes whose files have the batch fixed at 1 (metadata "batch": 1)
    prepare: Preparer | None = None  # mode-specific inputs made (and timed) before the conversion
    check: Callable[[Any], None] | None = None  # validates its options (ExportOptions) when planned: UsageError
    convert_first: bool = False  # converted before the other formats (the largest memory steps first)
    gives_float_onnx: bool = False  # its float file is the export's float ONNX (ExportContext.float_onnx)
    # Its calibrated modes quantize the export's shared calibrated TFLite model (ExportContext.calibrated_model).
    shared_calibration: bool = False
    # Modes whose file is the float TFLite graph the Keras reference runs in LiteRT (ExportContext.float_tflite):
    # verified against the reference's own pass instead of running every image again.
    reference_graph: tuple[str, ...] = ()
    file_name: str = "{stem}-{tag}{suffix}"  # the file's name; {stem} backbone-size, {tag} the mode's
    # Suffixes of files the writer puts beside WriteRequest.path with its stem (OpenVINO's ".bin"): staged, sized,
    # moved into place and cleaned up with it.
    companions: tuple[str, ...] = ()

    def takes(self, mode: str) -> bool:
        """Whether `mode` exists for this format."""
        return mode in self.modes

    def name_for(self, stem: str, tag: str) -> str:
        """The file (or folder) name of one of its files."""
        return self.file_name.format(stem=stem, tag=tag, suffix=self.suffix)
