"""Planning an export: the options checked and every file named, before TensorFlow is loaded."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.core.errors import RunExistsError, UsageError, unknown_choice
from edgetl.export.modes import MODES, TARGETS, check_io_type, plan_pairs
from edgetl.export.onnx import DEFAULT_OPSET, check_opset
from edgetl.export.report import LABELS_FILE
from edgetl.model.backbones import backbone_label

if TYPE_CHECKING:
    from edgetl.rundir import Run

EXPORT_DIR = "export"
COMPAT_TARGETS = ("gpu", "npu")  # targets whose files are checked for ops the accelerator lacks
DEFAULT_CALIBRATION_SAMPLES = 300
# Verification CPU seconds per file: a file whose runtimes (LiteRT and MediaPipe for a .tflite) would cost
# more over every held-out image (int16x8's reference kernels: about 200 ms per image at 224 on x86) is
# verified on a class-balanced sample that fits (never fewer than edgetl.export.verify.MIN_VERIFY_SAMPLES),
# recorded in its row. CPU time, measured on a few images, does not grow with the machine's load.
DEFAULT_VERIFY_SECONDS = 20.0
MAX_CALIBRATION_SAMPLES = 100_000
_EXT = {"tflite": ".tflite", "onnx": ".onnx", "ort": ".ort", "saved_model": ""}


@dataclass(frozen=True)
class ExportOptions:
    """What `edgetl export` was asked for; each field has one documented default."""

    formats: tuple[str, ...] = ()  # tflite, onnx, ort, saved_model (default: tflite, or --target's)
    quantize: tuple[str, ...] = ()  # modes of edgetl.export.modes.MODES (default: none, or --target's)
    output: Path | None = None  # folder of the files (default: RUN_DIR/export)
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES  # training images calibrating int8/int16 modes
    io_type: str | None = None  # uint8 (default) or int8 input/output of TFLite int8-full
    opset: int = DEFAULT_OPSET  # ONNX opset
    allow_select_ops: bool = False  # TensorFlow (Flex) ops allowed in TFLite files
    max_drop: float | None = None  # fail a quantized file losing more accuracy than this fraction
    verify: bool = True  # open and measure every file in its runtime
    verify_seconds: float | None = DEFAULT_VERIFY_SECONDS  # CPU s per file; None: every held-out image, however slow
    threads: int | None = None  # CPU threads for verification (default: up to 4)
    target: str | None = None  # cpu, gpu, edgetpu, npu, mcu: picks formats, modes and io type
    force: bool = False  # replace existing files
    strict: bool = False  # with target gpu or npu: fail a file with ops the accelerator lacks (else a warning)
    # Integer TFLite files (int8, int8-full, int16x8): each kernel's int8 rounding shift taken off its bias
    # (edgetl.export.tflite_bias), measured in the calibration pass. False: the quantizer's file as it is.
    bias_correction: bool = True


@dataclass(frozen=True)
class Plan:
    """The (format, mode) pairs to write, the io type of int8-full files, and each file's final path."""

    pairs: list[tuple[str, str]]
    formats: list[str]
    io_type: str | None
    paths: dict[tuple[str, str], Path]
    output: Path


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    return [value] if isinstance(value, str) else list(value or [])


def resolve_request(formats: str | Iterable[str] | None, quantize: str | Iterable[str] | None, target: str | None,
                    io_type: str | None) -> tuple[list[str], list[str], str | None]:
    """Formats, modes and io type after --target (which may not be mixed with --format/--quantize)."""
    fmts, mds = _as_list(formats), _as_list(quantize)
    if target is None:
        return fmts or ["tflite"], mds or ["none"], io_type
    if target not in TARGETS:
        raise unknown_choice("--target", target, TARGETS)
    if (fmts and fmts != ["tflite"]) or (mds and mds != ["none"]) or io_type is not None:
        raise UsageError(f"--target {target} picks the format, mode and io type itself; drop --format, --quantize "
                         "and --io-type, or drop --target.")
    t = TARGETS[target]
    return list(t["formats"]), list(t["quantize"]), t["io_type"]


def file_stem(run: Run) -> str:
    """backbone[_aALPHA]-SIZE: what tells a run's files apart in a listing."""
    bb = run.manifest.get("backbone") or {}
    name = str(bb.get("name") or "model")
    if bb.get("kind") != "keras":
        name = backbone_label(str(bb.get("kind")), name) or "model"
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-.") or "model"
    if bb.get("alpha") is not None:
        name += f"_a{float(bb['alpha']):g}"
    return f"{name}-{run.image_size}"


def file_name(run: Run, fmt: str, mode: str, io_type: str | None) -> str:
    """The file (or folder) name of one export: backbone, size, quantization, format."""
    tag = MODES[mode].file_tag
    if mode == "int8-full" and io_type:
        tag += f"-{io_type}"
    if fmt == "saved_model":
        return f"{file_stem(run)}-saved_model"
    return f"{file_stem(run)}-{tag}{_EXT[fmt]}"


def make_plan(run: Run, opts: ExportOptions) -> Plan:
    """Check every option and name every path; nothing is written.

    Raises:
        UsageError: an option or combination is not allowed; RunExistsError: a file exists and force is off.
    """
    formats, modes, io_type = resolve_request(opts.formats, opts.quantize, opts.target, opts.io_type)
    pairs = plan_pairs(formats, modes)
    io = check_io_type(io_type, modes, formats)
    if "onnx" in formats or "ort" in formats:
        check_opset(opts.opset)
    if opts.strict and opts.target not in COMPAT_TARGETS:
        raise UsageError(f"--strict applies to --target {' or '.join(COMPAT_TARGETS)} (it fails a file with ops the "
                         "accelerator lacks). Add one of them or drop --strict.")
    if opts.allow_select_ops and "tflite" not in formats:
        raise UsageError("--allow-select-ops applies only to --format tflite. Drop it.")
    n = opts.calibration_samples
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CALIBRATION_SAMPLES:
        raise UsageError(f"--calibration-samples {n} is out of range. Use 1..{MAX_CALIBRATION_SAMPLES} "
                         f"(default {DEFAULT_CALIBRATION_SAMPLES}).")
    if opts.max_drop is not None:
        if not opts.verify:
            raise UsageError("--max-drop needs verification to measure the drop; drop --no-verify or --max-drop.")
        if not 0 <= float(opts.max_drop) <= 1:
            raise UsageError(f"--max-drop {opts.max_drop} is out of range. Use an accuracy fraction 0..1 "
                             "(0.01 = 1 point).")
    v = opts.verify_seconds
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise UsageError(f"verify_seconds {v} is out of range. Use seconds > 0, or None to verify on every "
                         f"held-out image (default {DEFAULT_VERIFY_SECONDS:g}).")
    if opts.threads is not None and (isinstance(opts.threads, bool) or not 1 <= int(opts.threads) <= 1024):
        raise UsageError(f"--threads {opts.threads} is out of range. Use 1 or more.")
    out = Path(opts.output) if opts.output is not None else run.path / EXPORT_DIR
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"output '{out}' is a file, not a folder. Choose another --output.")
    paths = {(f, m): out / file_name(run, f, m, io if m == "int8-full" else None) for f, m in pairs}
    if not opts.force:
        _check_free(run, out, list(paths.values()))
    return Plan(pairs=pairs, formats=formats, io_type=io, paths=paths, output=out)


def _check_free(run: Run, out: Path, paths: list[Path]) -> None:
    """Existing files are never replaced without --force (labels.txt of the same classes may stay)."""
    taken = [p for p in paths if p.exists()]
    labels = out / LABELS_FILE
    if labels.is_file():
        try:
            same = [s.strip() for s in labels.read_text(encoding="utf-8").splitlines() if s.strip()] == run.class_names
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            taken.append(labels)
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise RunExistsError(f"'{taken[0]}'{more} already exists. Pass --force to replace, or choose another --output.")
