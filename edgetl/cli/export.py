"""`edgetl export`: a run directory -> TFLite / ONNX / SavedModel files, quantized and verified.

No TensorFlow at import: the options are checked first, then export_run loads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from edgetl.cli.kit import RichReporter, fmt, handle_errors, out_console, print_table, signed
from edgetl.cli.options import force_option, json_option, threads_option
from edgetl.export import DEFAULT_CALIBRATION_SAMPLES
from edgetl.export.formats import FORMATS, formats_for_mode
from edgetl.export.formats.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from edgetl.export.modes import IO_TYPES, MODES
from edgetl.export.targets import TARGETS
from edgetl.runtime.qnn import DEFAULT_SOC, SOCS

if TYPE_CHECKING:
    from edgetl.export import ExportReport, ExportRow

_MODE_HELP = "; ".join(f"{m.name}: {m.help} [{'/'.join(formats_for_mode(m.name))}]" for m in MODES.values())
_TARGET_HELP = "; ".join(f"{name}: {t.help}" for name, t in TARGETS.items())
_SOC_HELP = ", ".join(f"{s.name} ({s.product})" for s in SOCS.values())


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--format", "-f", "formats", multiple=True, type=click.Choice(list(FORMATS)),
              help="Format to write; repeat for several (default: tflite). ort: ONNX Runtime Mobile's format, "
                   "converted from the ONNX file by ONNX Runtime's own converter.")
@click.option("--quantize", "-q", multiple=True, metavar="MODE",
              help=f"Quantization mode; repeat for several, each applies to the formats it exists for "
                   f"(default: none). {_MODE_HELP}.")
@click.option("--target", type=click.Choice(list(TARGETS)),
              help=f"Pick format, mode and io type for a device instead of --format/--quantize. {_TARGET_HELP}.")
@click.option("--strict", is_flag=True, help="With --target gpu or npu: fail a file with ops that accelerator lacks "
              "(they would fall back to the CPU), naming them; without it they are a warning.")
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Folder for the files (default: RUN_DIR/export).")
@click.option("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES, show_default=True,
              help="Training images used to calibrate int8, int8-full and int16x8 (fewer: a warning, and all are "
                   "used).")
@click.option("--io-type", type=click.Choice(IO_TYPES),
              help="Input/output type of TFLite int8-full: uint8 (default; camera pixels go in unchanged) or int8 "
                   "(TensorFlow Lite Micro).")
@click.option("--opset", type=int, help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: {DEFAULT_OPSET}).")
@click.option("--soc", metavar="CHIP", help=f"With --format qnn (or --target snapdragon): the Snapdragon the EPContext "
              f"file is compiled for (default {DEFAULT_SOC}): {_SOC_HELP}. The portable .qdq.onnx file runs on "
              "the others.")
@click.option("--allow-select-ops", is_flag=True,
              help="Let TensorFlow (Flex) ops into TFLite files when an op has no builtin kernel (the app then "
                   "needs the Flex delegate).")
@click.option("--max-drop", type=float, help="Fail a quantized file whose held-out accuracy is lower than the "
              "Keras model's by more than this fraction (0.01 = 1 point).")
@click.option("--auto", is_flag=True, help="With --max-drop: post-training int8-full first; if it loses more, keep "
              "the layers that lose most in float, then try int16x8; write the first file that meets the budget. "
              "With --format openvino: edgetl's int8 IR if it meets the budget, else NNCF's accuracy-controlled "
              "quantization.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Calibrated integer files (TFLite int8, int8-full, int16x8; ONNX, OpenVINO int8): take the mean "
                   "shift each kernel's int8 rounding causes off its bias, measured on the calibration images (the "
                   "quantizer's own file otherwise).")
@click.option("--max-ram-kb", type=float, help="Fail a microcontroller file (--target mcu) whose tensor arena in "
              "TensorFlow Lite Micro needs more RAM than this many KB (1024 bytes); the report gives ram_kb.")
@click.option("--max-flash-kb", type=float, help="Fail a microcontroller file (--target mcu) larger than this many KB "
              "of flash; the report gives flash_kb.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Open each file in its runtime and compare it with the Keras model on the held-out images.")
@threads_option("CPU threads for verification and latency (default: up to 4).")
@force_option("Replace export files that already exist.")
@json_option("Print the report as JSON instead of a table.")
@handle_errors
def export(run_dir: str, formats: tuple[str, ...], quantize: tuple[str, ...], target: str | None, strict: bool,
           output: str | None, calibration_samples: int, io_type: str | None, opset: int | None, soc: str | None,
           allow_select_ops: bool, max_drop: float | None, auto: bool, bias_correction: bool,
           max_ram_kb: float | None, max_flash_kb: float | None, verify: bool, threads: int | None, force: bool,
           as_json: bool) -> None:
    """Export the trained model of RUN_DIR to TFLite, ONNX and/or SavedModel.

    Files are named backbone-size-mode (e.g. mobilenet_v2_a0.35-96-int8-full-uint8.tflite), carry
    their labels and input contract inside, and get labels.txt and export_report.json beside them.
    Each file is then opened in its own runtime (LiteRT, ONNX Runtime, TensorFlow) and measured on
    the run's held-out images against the Keras model: float files must match it, --max-drop
    gates quantized ones.

    \b
    Examples:
      edgetl export runs/cats --format tflite --quantize none --quantize int8-full
      edgetl export runs/cats --format onnx --quantize none --quantize int8
      edgetl export runs/cats --target edgetpu
      edgetl export runs/cats --target mcu --max-ram-kb 256 --max-flash-kb 1024
      edgetl export runs/cats --target snapdragon --soc SM8650
      edgetl export runs/cats --quantize int8-full --max-drop 0.01 --auto
    """
    from edgetl.core.errors import UsageError
    from edgetl.core.fileio import check_writable

    if output:
        check_writable(output, "--output", folder=True)  # before any work, not after the first file
    # --auto for formats whose quantizer searches within the budget itself (OpenVINO: NNCF's accuracy control) is an
    # ordinary export with that search on; for TFLite it is edgetl's own search (export.auto).
    controlled = auto and bool(formats) and all("accuracy_control" in FORMATS[f].options for f in formats)
    if auto and not controlled:
        _auto(run_dir, formats, quantize, target, output, calibration_samples, io_type, max_drop, threads, as_json,
              bias_correction)
        return
    takers = [f.name for f in FORMATS.values() if "opset" in f.options]
    if opset is not None and not any(f in takers for f in formats):
        raise UsageError(f"--opset {opset} applies only to --format {' or '.join(takers)}. Add --format {takers[0]} "
                         "or drop --opset.")
    from edgetl.export import export_run

    reporter = RichReporter()
    try:
        report = export_run(run_dir, formats=formats or None, quantize=quantize or (("int8",) if controlled else None),
                            output=output,
                            calibration_samples=calibration_samples, io_type=io_type,
                            opset=DEFAULT_OPSET if opset is None else opset,
                            allow_select_ops=allow_select_ops, max_drop=max_drop, verify=verify, threads=threads,
                            target=target, force=force, strict=strict, bias_correction=bias_correction,
                            max_ram_kb=max_ram_kb, max_flash_kb=max_flash_kb,
                            format_options={"soc": soc} if soc is not None else None,
                            accuracy_control=controlled, reporter=reporter)
    except Exception as exc:
        reporter.close()
        partial = getattr(exc, "report", None)
        if partial is not None:
            _show(partial, as_json)
        raise
    finally:
        reporter.close()
    _show(report, as_json)


def _auto(run_dir: str, formats: tuple[str, ...], quantize: tuple[str, ...], target: str | None,
          output: str | None, calibration_samples: int, io_type: str | None, max_drop: float | None,
          threads: int | None, as_json: bool, bias_correction: bool) -> None:
    """--auto: the accuracy-budget search for an integer TFLite file."""
    from edgetl.core.errors import GateFailure, UsageError

    if max_drop is None:
        raise UsageError("--auto needs --max-drop X, the accuracy the integer file may lose (0.01 = 1 point).")
    if not 0 <= max_drop < 1:
        raise UsageError(f"--max-drop {max_drop} is out of range. Use a fraction 0 <= x < 1, e.g. 0.01.")
    if target or set(formats) - {"tflite"} or set(quantize) - {"int8-full"}:
        raise UsageError("--auto searches TFLite int8-full (then mixed float/int8, then int16x8); drop --target, "
                         "and use only --format tflite and --quantize int8-full with it.")
    if calibration_samples < 1:
        raise UsageError(f"--calibration-samples {calibration_samples} is out of range. Use 1 or more.")
    from pathlib import Path

    from edgetl.export import auto as budget

    reporter = RichReporter()
    try:
        result = budget.search_int8(run_dir, max_drop=max_drop, calibration_samples=calibration_samples,
                                    io_type=io_type or "uint8", output=output or str(Path(run_dir) / "export"),
                                    threads=threads, bias_correction=bias_correction, reporter=reporter)
    finally:
        reporter.close()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print_table(f"int8 within --max-drop {max_drop}", *budget.table(result))
    if result.chosen is None:
        raise GateFailure(f"no integer file kept accuracy within --max-drop {max_drop}. Ship float16 or float32, "
                          "or train with 'edgetl optimize --method qat'.")
    if not as_json:
        out_console().print(f"chosen: {result.chosen['name']} -> {result.path}", soft_wrap=True)


def _show(report: ExportReport, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
        return
    rows = []
    ref = report.reference
    # A microcontroller file's RAM (TFLM's tensor arena) and flash: columns only when the export has one.
    micro = any(r.get("ram_kb") is not None or r.get("flash_kb") is not None for r in report.rows)
    if ref:
        rows.append(["keras", "-", fmt(ref.get("size_mb"), 2), fmt(ref.get("accuracy")), "-", "-", "-", "-",
                     fmt(ref.get("latency_ms"), 2)] + (["-", "-"] if micro else []) + ["reference"])
    for r in report.rows:
        mode = r["mode"] + (f"/{r['io_type']}" if r.get("io_type") else "")
        rows.append([r["format"], mode, fmt(r.get("size_mb"), 2), fmt(r.get("accuracy")), signed(r.get("drop")),
                     fmt(r.get("agreement")), _app(r), _small(r.get("max_abs_diff")), fmt(r.get("latency_ms"), 2)]
                    + ([fmt(r.get("ram_kb"), 1), fmt(r.get("flash_kb"), 1)] if micro else [])
                    + [_short(str(r.get("status")))])
    v = report.verify or {}
    title = f"Exported {len(report.rows)} file(s) to {report.output}"
    if v.get("enabled") and ref:
        title += (f" (verified on {ref.get('samples')} {ref.get('split')} images; latency: batch 1, "
                  f"{v.get('threads')} threads, median)")
    print_table(title, ["format", "mode", "MB", "acc", "drop", "agree", "app agree", "max diff", "ms"]
                + (["RAM KB", "flash KB"] if micro else []) + ["status"], rows)
    for r in report.rows:
        t = r.get("tflm") or {}
        if t.get("samples"):
            out_console().print(f"TensorFlow Lite Micro ({r['mode']}/{r.get('io_type')}): RAM KB is its tensor arena; "
                                f"on {t['samples']} of those images accuracy {fmt(t.get('accuracy'))}, top-1 agreement "
                                f"with LiteRT {fmt(t.get('agreement'))}, {t.get('reference_kernels_max_steps')} output "
                                f"step(s) from LiteRT's reference kernels "
                                f"({t.get('reference_kernels_steps_beyond_a_logit_step')} beyond what one step of "
                                "the logits explains)", soft_wrap=True)
    app_samples = [r["mediapipe"]["samples"] for r in report.rows if "samples" in (r.get("mediapipe") or {})]
    if app_samples:
        out_console().print("app agree: top-1 of MediaPipe Tasks' ImageClassifier (what Android, iOS and web apps "
                            f"run) against LiteRT's, on up to {max(app_samples)} of those images (class-balanced)",
                            soft_wrap=True)
    corrected = [r for r in report.rows if r.get("bias_corrected")]
    if corrected:
        kinds = ", ".join(sorted({r["format"] for r in corrected}))
        out_console().print(f"bias correction: {len(corrected)} integer file(s) ({kinds}), up to "
                            f"{max(r['bias_corrected'] for r in corrected)} kernels each (--no-bias-correction: off)",
                            soft_wrap=True)
    if report.json_path:
        out_console().print(f"report: {report.json_path}", soft_wrap=True)
    written = [r["path"] for r in report.rows if r.get("written")]
    if written:
        out_console().print(f"Next: edgetl evaluate {written[-1]} --data HOLDOUT_DIR", soft_wrap=True)


def _app(row: ExportRow) -> str:
    """The MediaPipe column: its top-1 agreement with LiteRT, "n/a" where it does not apply, "-" when not run."""
    app = row.get("mediapipe") or {}
    if app.get("agreement") is not None:
        return fmt(app["agreement"])
    return "n/a" if str(app.get("status", "")).startswith("n/a") else "-"


def _small(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _short(s: str) -> str:
    # The reasons of failures follow in the error line; the table keeps one word.
    return "FAILED" if s.startswith("failed") else s


COMMANDS = [export]
