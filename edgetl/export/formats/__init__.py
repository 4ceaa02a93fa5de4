"""The export formats: one record each (edgetl.export.formats.base.Format) in one table, one module per format.

A format module holds its writer and its `FORMAT` record; this table lists them. The export (job, plan, shared,
verify) and the CLI ask the table and never test a format's name, so a new format is its record and its module,
registered here. An unknown name is a UsageError naming the known ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgetl.core.errors import UsageError, did_you_mean
from edgetl.export.formats import onnx, openvino, ort, qnn, saved_model, tflite
from edgetl.export.formats.base import (
    CALIBRATION,
    FLOAT_ONNX,
    FROZEN,
    NEEDS,
    SAVED_MODEL,
    ExportContext,
    Format,
    WriteRequest,
)
from edgetl.export.modes import DEFAULT_IO_TYPE, IO_TYPES, MODES, get_mode

FORMATS: dict[str, Format] = {f.name: f for f in (tflite.FORMAT, onnx.FORMAT, ort.FORMAT, saved_model.FORMAT,
                                                    qnn.FORMAT, openvino.FORMAT)}

__all__ = ["CALIBRATION", "FLOAT_ONNX", "FORMATS", "FROZEN", "NEEDS", "SAVED_MODEL", "ExportContext", "Format",
           "WriteRequest", "check_io_type", "formats_for_mode", "get_format", "modes_for", "plan_pairs"]


def get_format(name: str) -> Format:
    """The Format named `name`.

    Raises:
        UsageError: no format has that name (the message names the known ones).
    """
    fmt = FORMATS.get(name)
    if fmt is None:
        raise UsageError(f"unknown export format '{name}'.{did_you_mean(str(name), FORMATS)} "
                         f"Allowed: {', '.join(FORMATS)}.")
    return fmt


def modes_for(fmt: str) -> list[str]:
    """The names of the modes that exist for format `fmt`, in the modes table's order."""
    f = get_format(fmt)
    return [m for m in MODES if f.takes(m)]


def formats_for_mode(mode: str) -> list[str]:
    """The names of the formats that take `mode`, in the table's order."""
    return [f.name for f in FORMATS.values() if f.takes(mode)]


def plan_pairs(formats: Iterable[str], modes: Iterable[str]) -> list[tuple[str, str]]:
    """Pair each format with each mode that exists for it, refusing combinations that do not exist.

    Every requested format must get at least one mode, and every mode must exist for at least one
    requested format: float16 for ONNX alone is an error, not a silent float32 file.

    Raises:
        UsageError: an unknown format or mode, or a combination that does not exist.
    """
    fmts = list(dict.fromkeys(formats))
    mds = list(dict.fromkeys(modes))
    if not fmts:
        raise UsageError(f"no export format given. Use --format {', '.join(list(FORMATS)[:-1])} or "
                         f"{list(FORMATS)[-1]}.")
    if not mds:
        raise UsageError("no quantization mode given. Use --quantize none (float32) or another mode.")
    for f in fmts:
        get_format(f)
    for m in mds:
        get_mode(m)
    for m in mds:
        if not any(FORMATS[f].takes(m) for f in fmts):
            where = ", ".join(formats_for_mode(m))
            names = " or ".join(fmts)
            raise UsageError(f"--quantize {m} does not exist for {names} ({m} exists for: {where}). "
                             f"{_modes_line(fmts)}")
    for f in fmts:
        if not any(FORMATS[f].takes(m) for m in mds):
            raise UsageError(f"none of --quantize {', '.join(mds)} exists for --format {f}. {_modes_line([f])} "
                             f"Add one of them, or drop --format {f}.")
    return [(f, m) for f in fmts for m in mds if FORMATS[f].takes(m)]


def _modes_line(fmts: list[str]) -> str:
    return " ".join(f"{f} modes: {', '.join(modes_for(f))}." for f in fmts)


def check_io_type(io_type: str | None, modes: Iterable[str], formats: Iterable[str]) -> str | None:
    """Validate --io-type: it applies only to the integer-I/O modes of formats that take it (TFLite int8-full).

    Returns the effective io type of those files.

    Raises:
        UsageError: an unknown value, or --io-type without such a file planned.
    """
    mds = list(modes)
    takers = [f for f in FORMATS.values() if "io_type" in f.options]
    integer = [m.name for m in MODES.values() if m.integer_io]
    if io_type is None:
        return DEFAULT_IO_TYPE if any(m in mds for m in integer) else None
    if io_type not in IO_TYPES:
        raise UsageError(f"unknown --io-type '{io_type}'. Allowed: {', '.join(IO_TYPES)} (with --quantize "
                         f"{' or '.join(integer)}).")
    if not any(m in mds for m in integer) or not any(f.name in list(formats) for f in takers):
        raise UsageError(f"--io-type {io_type} applies only to --format {' or '.join(f.name for f in takers)} "
                         f"--quantize {' or '.join(integer)} (integer input and output). Add --quantize "
                         f"{' or '.join(integer)} or drop --io-type.")
    return io_type
