"""Planning an export: the options checked and every file named, before TensorFlow is loaded."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.errors import RunExistsError, UsageError
from edgetl.export.checks import CHECKS, strict_targets
from edgetl.export.formats import FORMATS, check_io_type, get_format, plan_pairs
from edgetl.export.formats.onnx import DEFAULT_OPSET
from edgetl.export.modes import MODES
from edgetl.export.report import LABELS_FILE
from edgetl.export.targets import get_target
from edgetl.model.backbones import backbone_label

if TYPE_CHECKING:
    from edgetl.rundir import Run

EXPORT_DIR = "export"
COMPAT_TARGETS = strict_targets()  # targets whose files are checked for ops the accelerator lacks (--strict)
DEFAULT_CALIBRATION_SAMPLES = 300
# Verification CPU seconds per file: a file whose runtimes (LiteRT and MediaPipe for a .tflite) would cost
# more over every held-out image (int16x8's reference kernels: about 200 ms per image at 224 on x86) is
# verified on a class-balanced sample that fits (never fewer than edgetl.export.verify.MIN_VERIFY_SAMPLES),
# recorded in its row. CPU time, measured on a few images, does not grow with the machine's load.
DEFAULT_VERIFY_SECONDS = 20.0
MAX_CALIBRATION_SAMPLES = 100_000
DEFAULT_FORMAT = "tflite"  # what `edgetl export` writes when neither --format nor --target is given
DEFAULT_MODE = "none"


@dataclass(frozen=True)
class ExportOptions:
    """What `edgetl export` was asked for; each field has one documented default."""

    formats: tuple[str, ...] = ()  # names in edgetl.export.formats.FORMATS (default: tflite, or --target's)
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
    target: str | None = None  # a name in edgetl.export.targets.TARGETS: picks formats, modes and io type
    force: bool = False  # replace existing files
    strict: bool = False  # with target gpu or npu: fail a file with ops the accelerator lacks (else a warning)
    # Integer TFLite files (int8, int8-full, int16x8): each kernel's int8 rounding shift taken off its bias
    # (edgetl.export.tflite_bias), measured in the calibration pass. False: the quantizer's file as it is.
    bias_correction: bool = True
    # Options of one format that no other takes (its record lists them in Format.options; its writer reads them
    # here), by name: a new format's option needs no field of its own. One no planned format takes is refused.
    format_options: dict[str, Any] = field(default_factory=dict)
    # A microcontroller file (TFLite int8-full, int8 I/O: --target mcu) fails when TensorFlow Lite Micro needs a
    # larger tensor arena (KB of RAM) or the file is larger (KB of flash) than these (edgetl.export.tflm_check).
    max_ram_kb: float | None = None
    max_flash_kb: float | None = None
    # With max_drop: formats that search within the budget themselves do (OpenVINO int8: edgetl's int8 IR when it
    # meets the budget, else NNCF's accuracy-controlled quantization reverts the layers that lose most to float);
    # `edgetl export --auto` for those formats.
    accuracy_control: bool = False


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
        fmts = fmts or [DEFAULT_FORMAT]
        return fmts, mds or list(dict.fromkeys(default_mode(f) for f in fmts)), io_type
    t = get_target(target)
    if (fmts and fmts != [DEFAULT_FORMAT]) or (mds and mds != [DEFAULT_MODE]) or io_type is not None:
        raise UsageError(f"--target {target} picks the format, mode and io type itself; drop --format, --quantize "
                         "and --io-type, or drop --target.")
    return list(t.formats), list(t.quantize), t.io_type


def default_mode(fmt: str) -> str:
    """The mode a format's file gets when no --quantize is given: float32 ("none"), or its first mode for a format
    without a float file (qnn: int8)."""
    spec = get_format(fmt)
    return DEFAULT_MODE if spec.takes(DEFAULT_MODE) else spec.modes[0]


def file_stem(run: Run) -> str:
    """backbone[_aALPHA]-SIZE: what tells a run's files apart in a listing."""
    bb = run.manifest.get("backbone") or {}
    name = str(bb.get("name") or "model")
    name = backbone_label(str(bb.get("kind")), name) or "model"  # a card keeps its name
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).strip("-.") or "model"
    if bb.get("alpha") is not None:
        name += f"_a{float(bb['alpha']):g}"
    return f"{name}-{run.image_size}"


def file_name(run: Run, fmt: str, mode: str, io_type: str | None) -> str:
    """The file (or folder) name of one export: backbone, size, quantization, format."""
    tag = MODES[mode].file_tag
    if MODES[mode].integer_io and io_type:
        tag += f"-{io_type}"
    return get_format(fmt).name_for(file_stem(run), tag)


def make_plan(run: Run, opts: ExportOptions) -> Plan:
    """Check every option and name every path; nothing is written.

    Raises:
        UsageError: an option or combination is not allowed; RunExistsError: a file exists and force is off.
    """
    formats, modes, io_type = resolve_request(opts.formats, opts.quantize, opts.target, opts.io_type)
    if opts.quantize or opts.target:
        pairs = plan_pairs(formats, modes)
    else:  # no --quantize: each format its own default mode, not every default crossed with every format
        pairs = [(f, default_mode(f)) for f in dict.fromkeys(formats)]
        plan_pairs(formats, [m for _, m in pairs])  # the same checks of the names
    io = check_io_type(io_type, modes, formats)
    for f in formats:
        check = get_format(f).check
        if check is not None:
            check(opts)
    if opts.strict and opts.target not in COMPAT_TARGETS:
        raise UsageError(f"--strict applies to --target {' or '.join(COMPAT_TARGETS)} (it fails a file with ops the "
                         "accelerator lacks). Add one of them or drop --strict.")
    checks = [c for f in formats for c in CHECKS.values() if c.applies(f, opts.target)]
    for key in opts.format_options:
        if not any(key in get_format(f).options for f in formats) and not any(key in c.options for c in checks):
            takers = [f"--format {f.name}" for f in FORMATS.values() if key in f.options] + [
                f"--format {'/'.join(c.formats)}" + (f" --target {'/'.join(c.targets)}" if c.targets else "")
                for c in CHECKS.values() if key in c.options]
            where = " or ".join(takers) or "no export format"
            raise UsageError(f"option {key!r} applies only to {where}, not to --format {', '.join(formats)}. "
                             "Drop it.")
    takers = [f.name for f in FORMATS.values() if "allow_select_ops" in f.options]
    if opts.allow_select_ops and not any(f in takers for f in formats):
        raise UsageError(f"--allow-select-ops applies only to --format {' or '.join(takers)}. Drop it.")
    takers = [f.name for f in FORMATS.values() if "accuracy_control" in f.options]
    if opts.accuracy_control and not any(f in takers for f in formats):
        raise UsageError(f"accuracy control (--auto) applies to --format {' or '.join(takers)} here. Drop it.")
    if opts.accuracy_control and opts.max_drop is None:
        raise UsageError("--auto needs --max-drop X, the accuracy the integer file may lose (0.01 = 1 point).")
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
    _check_budgets(opts, pairs, io)
    v = opts.verify_seconds
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
        raise UsageError(f"verify_seconds {v} is out of range. Use seconds > 0, or None to verify on every "
                         f"held-out image (default {DEFAULT_VERIFY_SECONDS:g}).")
    if opts.threads is not None and (isinstance(opts.threads, bool) or not 1 <= int(opts.threads) <= 1024):
        raise UsageError(f"--threads {opts.threads} is out of range. Use 1 or more.")
    out = Path(opts.output) if opts.output is not None else run.path / EXPORT_DIR
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"output '{out}' is a file, not a folder. Choose another --output.")
    paths = {(f, m): out / file_name(run, f, m, io if MODES[m].integer_io else None) for f, m in pairs}
    if not opts.force:
        _check_free(run, out, list(paths.values()))
    return Plan(pairs=pairs, formats=formats, io_type=io, paths=paths, output=out)


def _check_budgets(opts: ExportOptions, pairs: list[tuple[str, str]], io: str | None) -> None:
    """--max-ram-kb / --max-flash-kb: positive, and only with a microcontroller file in the plan."""
    from edgetl.export.tflm_check import Budgets, applies

    budgets = Budgets(opts.max_ram_kb, opts.max_flash_kb)
    budgets.check()
    if budgets.any and not any(applies(f, m, io if MODES[m].integer_io else None) for f, m in pairs):
        raise UsageError("--max-ram-kb and --max-flash-kb apply to microcontroller files (TFLite int8-full with int8 "
                         "input/output). Add --target mcu, or drop them.")


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
