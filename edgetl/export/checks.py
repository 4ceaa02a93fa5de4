"""Checks a written file gets beyond its verification: one record each, with when it applies and what it adds.

A check names the formats whose files it checks and the --target values it runs for (None: every export of
those formats). Checks with `run` run after verification, on the staged file, in the table's order; the
MediaPipe check has none: it runs inside verification (edgetl.export.verify), beside LiteRT's pass on the same
images. A new check (TFLite Micro, the QNN emulator) is one record here and its module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgetl.core.errors import UsageError, did_you_mean
from edgetl.export.report import ExportRow
from edgetl.export.tflm_check import FORMATS as TFLM_FORMATS
from edgetl.export.tflm_check import run_check as tflm_run

log = logging.getLogger("edgetl")


class CheckContext(Protocol):
    """What a check may read of the export (edgetl.export.shared.Job has it)."""

    opts: Any  # edgetl.export.plan.ExportOptions
    images: Any  # edgetl.export.images.ExportImages: the held-out images, loaded when opts.verify
    warnings: list[str]  # the report's warnings: a check that does not fail the file says why here


@dataclass(frozen=True)
class Check:
    """One check of a written file."""

    name: str
    help: str
    formats: tuple[str, ...]  # the formats whose files it checks
    adds: tuple[str, ...]  # the report-row fields it fills
    targets: tuple[str, ...] | None = None  # the --target values it runs for; None: every export
    run: Callable[[CheckContext, ExportRow, Path], None] | None = None  # None: run inside verification
    strict: bool = False  # --strict fails the file on what it finds (else a warning); its targets take --strict
    options: tuple[str, ...] = ()  # keys of ExportOptions.format_options it reads (a budget: "max_ram_kb")

    def applies(self, fmt: str, target: str | None) -> bool:
        """Whether the check runs on a `fmt` file of an export with this --target."""
        return fmt in self.formats and (self.targets is None or target in self.targets)


def _fallback_ops(probe: str) -> Callable[[CheckContext, ExportRow, Path], None]:
    """A check of the ops an accelerator's delegate lacks (edgetl.runtime.compat's `probe`); --strict fails on them."""

    def run(ctx: CheckContext, row: ExportRow, path: Path) -> None:
        from edgetl.runtime import compat

        target = str(ctx.opts.target)
        check = getattr(compat, probe)(path)  # looked up on each call: tests point it at another file
        row.extra["compatibility"] = {target: {"compatible": check["compatible"],
                                               "unsupported_ops": check["unsupported_ops"]}}
        if check["compatible"]:
            return
        what = f"--target {target}: ops that would fall back to the CPU: {', '.join(check['unsupported_ops'])}"
        if ctx.opts.strict:
            row.fail(what, "compatibility")
        else:
            log.warning("%s (%s); --strict fails the export on them", what, Path(row.path).name)
            ctx.warnings.append(f"{what} ({Path(row.path).name})")

    return run


def _qnn_emulator(ctx: CheckContext, row: ExportRow, path: Path) -> None:
    from edgetl.export.formats.qnn import check_emulator

    check_emulator(ctx, row, path)


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("mediapipe", "MediaPipe Tasks' ImageClassifier (what apps run) gives LiteRT's top-1 label",
          formats=("tflite",), adds=("mediapipe",)),
    Check("gpu", "the ops the TFLite GPU delegate lacks (they would fall back to the CPU)", formats=("tflite",),
          adds=("compatibility",), targets=("gpu",), run=_fallback_ops("gpu_compatibility"), strict=True),
    Check("npu", "the ops NNAPI / vendor NPU delegates lack (they would fall back to the CPU)", formats=("tflite",),
          adds=("compatibility",), targets=("npu",), run=_fallback_ops("npu_compatibility"), strict=True),
    # Every export's microcontroller files (int8-full with int8 I/O: what --target mcu writes); run_check skips others.
    Check("tflm", "TensorFlow Lite Micro runs the microcontroller file: its tensor arena (RAM) and flash against "
          "--max-ram-kb/--max-flash-kb, its accuracy and agreement with LiteRT", formats=TFLM_FORMATS,
          adds=("tflm", "ram_kb", "flash_kb"), run=tflm_run),
    Check("qnn_emulator", "the portable QDQ file on the emulated Hexagon NPU (CPU fallback disabled) against ONNX "
          "Runtime's CPU kernels, and the EPContext file against it", formats=("qnn",), adds=("qnn",),
          run=_qnn_emulator),
)}


def get_check(name: str) -> Check:
    """The Check named `name`.

    Raises:
        UsageError: no check has that name (the message names the known ones).
    """
    if name not in CHECKS:
        raise UsageError(f"unknown check '{name}'.{did_you_mean(name, CHECKS)} Allowed: {', '.join(CHECKS)}.")
    return CHECKS[name]


def after_write(fmt: str, target: str | None) -> list[Check]:
    """The checks that run on a written `fmt` file after its verification, in the table's order."""
    return [c for c in CHECKS.values() if c.run is not None and c.applies(fmt, target)]


def strict_targets() -> tuple[str, ...]:
    """The --target values --strict applies to: those a strict check runs for."""
    return tuple(dict.fromkeys(t for c in CHECKS.values() if c.strict for t in c.targets or ()))
