"""The TensorFlow Lite Micro check of a microcontroller file: does it run in TFLM, agree with LiteRT, and fit the chip?

Every integer TFLite file with int8 input and output (what `--target mcu` writes) is run in TFLM's
interpreter (edgetl.runtime.tflm: the reference kernels MCUs run) after LiteRT has verified it:

- RAM: the smallest tensor arena TFLM allocates the file in (`ram_kb`); flash: the file's size (`flash_kb`,
  the model lives in flash; the app's code and TFLM's kernels come on top). 1 KB = 1024 bytes.
- On a class-balanced sample of the held-out images (all of them when they fit a CPU-seconds budget: the
  reference kernels are slow): TFLM's accuracy, its top-1 agreement with LiteRT as the export verified the file
  (XNNPACK), and how far its outputs are from LiteRT's reference kernels, which TFLM's are ports of.
- `--max-ram-kb` / `--max-flash-kb`: a file over either budget fails (kind "budget"), with both figures.
- A file TFLM cannot run, or whose outputs are further from the reference kernels' than one step of its logits
  explains (softmax_slack) plus MAX_REFERENCE_STEPS, fails (kind "tflm"); a top-1 agreement with XNNPACK below
  MIN_AGREEMENT is a warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.errors import EdgetlError, UsageError
from edgetl.export.images import balanced_order
from edgetl.runtime.measure import top1_accuracy

if TYPE_CHECKING:
    from edgetl.export.report import ExportRow

log = logging.getLogger("edgetl")

KB = 1024
FORMATS = ("tflite",)  # the formats whose files TFLM runs (its record in edgetl.export.checks names them)
# TFLM's kernels are ports of TFLite's reference kernels: on the same int8 inputs its outputs equalled LiteRT's
# with OpResolverType.BUILTIN_REF bit for bit (80 flower photos, MobileNetV2 0.35 at 96). Not every kernel rounds
# alike, though: on a tiny CNN, TFLM's FULLY_CONNECTED gave one logit one step off the reference's (1 image of 40),
# and the softmax after it, whose input step was 0.23, turned that into 14 output steps. So a softmax output may be
# as far from the reference as one step of every logit moves it (softmax_slack), plus this many output steps;
# beyond that the file fails (kind "tflm"): TFLM is not running the model LiteRT verified.
MAX_REFERENCE_STEPS = 1
# LiteRT's default (XNNPACK) int8 kernels round otherwise: up to 44 output steps off TFLM's on those photos, 0.95
# top-1 agreement (4 of 80 near ties flipped; TFLM 0.625 accurate, XNNPACK 0.575). Below this agreement, a warning.
MIN_AGREEMENT = 0.95
DEFAULT_SECONDS = 20.0  # CPU seconds TFLM's pass over the held-out images may take (it is single-threaded)
MIN_SAMPLES = 20  # ...but at least this many images (class-balanced) are run
_PROBE = 2


@dataclass(frozen=True)
class Budgets:
    """What the chip has: RAM for the tensor arena and flash for the model, in KB (None: no limit)."""

    max_ram_kb: float | None = None
    max_flash_kb: float | None = None

    def check(self) -> None:
        """Raises UsageError for a budget that is not a positive number."""
        for name, v in (("--max-ram-kb", self.max_ram_kb), ("--max-flash-kb", self.max_flash_kb)):
            if v is not None and not v > 0:
                raise UsageError(f"{name} {v} is out of range. Use the KB (1024 bytes) the chip has, e.g. 256.")

    @property
    def any(self) -> bool:
        return self.max_ram_kb is not None or self.max_flash_kb is not None


def run_check(ctx: Any, row: ExportRow, path: Path) -> None:
    """The check's entry in edgetl.export.checks: a microcontroller file of the export (others are left alone)."""
    if not applies(row.format, row.mode, row.io_type):
        return
    opts = ctx.opts
    images = None
    if opts.verify and getattr(ctx, "images", None) is not None:
        x, y, _ = ctx.images.held_out()
        images = (x, y)
    budgets = Budgets(opts.max_ram_kb, opts.max_flash_kb)
    for warning in check_tflm(row, path, images=images, budgets=budgets, seconds=opts.verify_seconds):
        log.warning("%s", warning)
        ctx.warnings.append(warning)


def applies(fmt: str, mode: str, io_type: str | None) -> bool:
    """Whether a file is a microcontroller file TFLM is run on: TFLite int8-full with int8 input and output."""
    return fmt in FORMATS and mode == "int8-full" and io_type == "int8"


def over_budget(ram_kb: float | None, flash_kb: float, budgets: Budgets) -> str | None:
    """The one-line reason a file does not fit the budgets (both figures of each), None when it fits."""
    said = []
    if budgets.max_ram_kb is not None and ram_kb is not None and ram_kb > budgets.max_ram_kb:
        said.append(f"needs a {ram_kb:.1f} KB tensor arena (RAM) in TensorFlow Lite Micro, --max-ram-kb allows "
                    f"{budgets.max_ram_kb:g}")
    if budgets.max_flash_kb is not None and flash_kb > budgets.max_flash_kb:
        said.append(f"is {flash_kb:.1f} KB of flash, --max-flash-kb allows {budgets.max_flash_kb:g}")
    return "; ".join(said) or None


def check_tflm(row: ExportRow, path: Path, *, images: tuple[np.ndarray, np.ndarray | None] | None = None,
               budgets: Budgets = Budgets(), seconds: float | None = DEFAULT_SECONDS) -> list[str]:
    """Run the file `path` (a staged microcontroller file) in TFLM; figures into `row`, failures onto it.

    `images`: held-out (pixels, labels or None) to measure accuracy and agreement with LiteRT on (None: the
    arena and flash only, as with --no-verify). Sets row.extra "ram_kb", "flash_kb" and "tflm" (arena_bytes,
    flash_bytes, samples, accuracy, agreement, reference_kernels_max_steps,
    reference_kernels_steps_beyond_a_logit_step, status). Fails the row with kind
    "tflm" when TFLM cannot run the file or departs from the reference kernels, and "budget" when it does not fit
    `budgets`. Returns warnings (an agreement with XNNPACK below MIN_AGREEMENT).
    """
    from edgetl.runtime.tflm import INSTALL_HINT, open_tflm, version

    flash = path.stat().st_size
    row.extra["flash_kb"] = round(flash / KB, 1)
    figures: dict[str, Any] = {"runtime": f"tflite-micro {version()}", "flash_bytes": flash}
    row.extra["tflm"] = figures
    if not version():  # tflite-micro has wheels for Linux x86-64 only: elsewhere the file is written unchecked
        reason = over_budget(None, flash / KB, budgets)
        if reason:
            figures["status"] = "failed: over budget"
            row.fail(f"it {reason}", "budget")
        elif budgets.max_ram_kb is not None:
            figures["status"] = "failed: tflite-micro is not installed"
            row.fail(f"--max-ram-kb needs TensorFlow Lite Micro to measure the tensor arena: {INSTALL_HINT} "
                     "(wheels for Linux x86-64)", "tflm")
        else:
            figures["status"] = "skipped: tflite-micro is not installed"
            return [f"'{path.name}' was not run in TensorFlow Lite Micro (no arena size): {INSTALL_HINT} "
                    "(wheels for Linux x86-64)"]
        return []
    try:
        runner = open_tflm(path)
    except EdgetlError as exc:
        figures["status"] = f"failed: {exc}"
        row.fail(f"TensorFlow Lite Micro cannot run it ({exc})", "tflm")
        return []
    warnings: list[str] = []
    try:
        figures["arena_bytes"] = runner.arena_bytes
        row.extra["ram_kb"] = round(runner.arena_bytes / KB, 1)
        reason = over_budget(runner.arena_bytes / KB, flash / KB, budgets)
        if reason:
            figures["status"] = "failed: over budget"
            row.fail(f"it {reason}", "budget")
            return warnings
        if images is not None and len(images[0]):
            for problem in _agreement(figures, runner, path, images[0], images[1], seconds):
                if problem.startswith("warning: "):
                    warnings.append(problem[len("warning: "):])
                else:
                    figures["status"] = "failed: differs from the reference kernels"
                    row.fail(problem, "tflm")
                    return warnings
        figures["status"] = "ok"
    finally:
        runner.close()
    return warnings


def softmax_logits(path: Path) -> int | None:
    """The tensor the file's output SOFTMAX reads (its logits), or None when no SOFTMAX writes the output."""
    from edgetl.runtime.metadata import load_tflite, tflite_schema

    root = load_tflite(path)
    sg = root.Subgraphs(0)
    output = sg.Outputs(0)
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if any(op.Outputs(j) == output for j in range(op.OutputsLength())):
            code = root.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            return int(op.Inputs(0)) if builtin == tflite_schema().BuiltinOperator.SOFTMAX else None
    return None


def reference_kernel_outputs(path: Path, images: np.ndarray,
                             logits: int | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """LiteRT's outputs on `images` with its reference kernels (no XNNPACK): what TFLM's kernels are ports of.

    With `logits` (a tensor index, from softmax_logits), also that tensor's values and its quantization step;
    else None and 0.0.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgetl.core.native import quiet_native_stderr
    from edgetl.runtime.litert import dequantize, quantize

    with quiet_native_stderr():
        interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                                  experimental_preserve_all_tensors=logits is not None)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    detail = next((d for d in interpreter.get_tensor_details() if d["index"] == logits), None)
    dtype = np.dtype(inp["dtype"]).name
    outs, zs = [], []
    for image in images:  # the file's batch is 1
        interpreter.set_tensor(inp["index"], quantize(image[None], dtype, inp))
        interpreter.invoke()
        outs.append(dequantize(interpreter.get_tensor(out["index"]), out)[0])
        if detail is not None:
            zs.append(dequantize(interpreter.get_tensor(logits), detail)[0])
    if detail is None:
        return np.stack(outs), None, 0.0
    step = float((detail.get("quantization_parameters") or {}).get("scales", [0.0])[0] or 0.0)
    return np.stack(outs), np.stack(zs), step


def softmax_slack(logits: np.ndarray, step: float) -> np.ndarray:
    """How far each softmax output can move when every logit moves by up to `step` (one quantization step).

    Output i is 1 / (1 + S) with S = sum over j != i of exp(z_j - z_i); each z_j - z_i moves by at most 2 step,
    so the output stays within [1 / (1 + S e^(2 step)), 1 / (1 + S e^(-2 step))]. Rows are images.
    """
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    log_p = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))  # log-softmax
    with np.errstate(divide="ignore"):  # an output of exactly 1: S = 0, log S = -inf, no room to move
        log_s = np.log1p(-np.exp(log_p)) - log_p  # S = (1 - p) / p

    def expit(v: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(0.5 * v))

    p = expit(-log_s)
    return np.maximum(expit(2 * step - log_s) - p, p - expit(-2 * step - log_s))


def _agreement(figures: dict[str, Any], runner: Any, path: Path, x: np.ndarray, y: np.ndarray | None,
               seconds: float | None) -> list[str]:
    """TFLM against LiteRT (as verified, and with its reference kernels) on a class-balanced sample of the held-out
    images: all that fit `seconds` of CPU for TFLM's pass and the reference kernels' (about as slow)."""
    from edgetl.runtime.open import open_model

    n = len(x)
    order = balanced_order(y, n)
    t0 = time.process_time()
    first = runner.predict(x[order[:_PROBE]])
    per_image = (time.process_time() - t0) / max(1, min(_PROBE, n))
    keep = n if seconds is None else min(n, max(MIN_SAMPLES, int(seconds / max(2 * per_image, 1e-9))))
    idx = order[:keep]
    rest = runner.predict(x[idx[len(first):]]) if keep > len(first) else np.zeros((0, first.shape[1]), np.float32)
    probs = np.concatenate([first[:keep], rest])
    with open_model(path, threads=1) as litert:
        verified = litert.predict(x[idx], batch_size=8)
    reference, logits, logit_step = reference_kernel_outputs(path, x[idx], softmax_logits(path))
    scale = float((runner.out.get("quantization_parameters") or {}).get("scales", [0.0])[0] or 0.0)
    gap = np.abs(probs - reference)
    steps = int(round(float(gap.max()) / scale)) if scale else None
    # What one step of every logit explains, image by image, in output steps (0 when the output is no softmax's).
    slack = softmax_slack(logits, logit_step) / scale if scale and logits is not None else np.zeros_like(gap)
    beyond = int(np.ceil(float((gap / scale - slack).max()) - 1e-6)) if scale else None
    agreement = round(float((probs.argmax(1) == verified.argmax(1)).mean()), 4)
    figures.update({"samples": int(keep), "held_out": int(n), "agreement": agreement,
                    "accuracy": top1_accuracy(probs, y[idx]) if y is not None else None,
                    "litert_accuracy": top1_accuracy(verified, y[idx]) if y is not None else None,
                    "max_abs_diff": round(float(np.abs(probs - verified).max()), 5),
                    "reference_kernels_max_steps": steps,
                    "reference_kernels_steps_beyond_a_logit_step": None if beyond is None else max(0, beyond),
                    "reference_kernels_agreement": round(float((probs.argmax(1) == reference.argmax(1)).mean()), 4),
                    "cpu_ms_per_image": round(per_image * 1000, 1)})
    if keep < n:
        log.info("tflite int8-full: TensorFlow Lite Micro run on %d of %d held-out images (class-balanced; %.0f CPU "
                 "ms per image, budget %g CPU s)", keep, n, per_image * 1000, seconds)
    problems = []
    if beyond is None or beyond > MAX_REFERENCE_STEPS:
        problems.append(f"TensorFlow Lite Micro's outputs differ from LiteRT's reference kernels by "
                        f"{'an unknown number of' if steps is None else steps} output steps on the same file, "
                        f"{'an unknown number' if beyond is None else beyond} beyond what one step of its logits "
                        f"explains (allowed: {MAX_REFERENCE_STEPS})")
    if agreement < MIN_AGREEMENT:
        problems.append(f"warning: TensorFlow Lite Micro gives LiteRT's top-1 on only {agreement:.3f} of {keep} "
                        f"images of '{path.name}' (LiteRT's XNNPACK kernels round otherwise than the reference "
                        "kernels MCUs run): the accuracy on the device is TFLM's")
    return problems
