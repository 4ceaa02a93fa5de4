"""`edgetl optimize`: quantization-aware training or pruning of a trained run into a new run.

No TensorFlow at import: options are checked first, then edgetl.optimize loads it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from edgetl.cli.kit import RichReporter, fmt, handle_errors, out_console, print_table
from edgetl.cli.options import force_option, json_option, threads_option
from edgetl.optimize.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_SCHEDULE,
    DEFAULT_SPARSITY,
    MAX_BLOCK,
    METHODS,
    SCHEDULES,
    OptimizeOptions,
)
from edgetl.optimize.prune import POLYNOMIAL_SHARE

if TYPE_CHECKING:
    from edgetl.optimize import OptimizeResult


def _per_method(defaults: dict[str, float]) -> str:
    """'3 for qat, 10 for prune': a per-method default for --help."""
    if len(set(defaults.values())) == 1:
        return f"{next(iter(defaults.values())):g}"
    return ", ".join(f"{v:g} for {k}" for k, v in defaults.items())



@click.command("optimize")
@click.argument("run_dir", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--method", "-m", type=click.Choice(METHODS), required=True,
              help="qat: quantization-aware training (int8 exports use the ranges learned in training); "
                   "prune: magnitude pruning to --sparsity (smaller compressed files).")
@click.option("--epochs", type=int, help="Fine-tuning epochs on the run's training images (default: "
              f"{_per_method(DEFAULT_EPOCHS)}; pruning must relearn around the removed weights).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True,
              help="The new run directory (a run like any other: export, evaluate and predict take it).")
@click.option("--lr", type=float, help=f"Adam learning rate (default: {_per_method(DEFAULT_LR)}; small: the model "
              "is already trained).")
@click.option("--sparsity", type=float, default=DEFAULT_SPARSITY, show_default=True,
              help="prune: target fraction of zero weights in Conv2D, Dense and SeparableConv2D pointwise kernels "
                   "(depthwise kernels stay dense).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=DEFAULT_SCHEDULE, show_default=True,
              help="prune: polynomial raises sparsity from 0 to --sparsity over the first "
                   f"{POLYNOMIAL_SHARE:.0%} of steps; constant prunes to --sparsity from the start.")
@click.option("--block", type=int, default=DEFAULT_BLOCK, show_default=True,
              help="prune: remove weights of 1x1 convolutions and Dense layers in runs of this many consecutive "
                   f"input channels (1..{MAX_BLOCK}): gzip compresses the file better at the same sparsity, for "
                   "some accuracy (train longer). 1: element-wise.")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True, help="Training batch size.")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="Export float, post-training int8 and the optimized model to TFLite and print one table of "
                   "accuracy, size, gzip size and latency (slower).")
@threads_option("CPU threads for latency in the comparison (default: up to 4).")
@force_option("Replace the output run if it exists.")
@json_option("Print the result as JSON instead of a table.")
@handle_errors
def optimize(run_dir: str, method: str, epochs: int | None, output: str, lr: float | None, sparsity: float,
             schedule: str, block: int, batch_size: int, compare: bool, threads: int | None, force: bool,
             as_json: bool) -> None:
    """Fine-tune the model of RUN_DIR with quantization-aware training or pruning into a new run.

    The new run records its parent in its manifest. A QAT run keeps the model with its learned
    quantization ranges (qat_saved_model/); its int8 TFLite files use them instead of calibration.
    A pruned run's weights are sparse: its files compress well (the table shows the gzip size).

    \b
    Examples:
      edgetl optimize runs/cats --method qat --epochs 3 --output runs/cats-qat
      edgetl optimize runs/cats --method prune --sparsity 0.5 --output runs/cats-pruned
      edgetl optimize runs/cats --method prune --block 4 --epochs 20 --output runs/cats-pruned-blocks
      edgetl export runs/cats-qat --quantize int8-full
    """
    OptimizeOptions(method=method, epochs=epochs, lr=lr, sparsity=sparsity, schedule=schedule, block=block,
                    batch_size=batch_size).check()
    from edgetl.optimize.tfmot import require_tfmot

    require_tfmot(f"edgetl optimize --method {method}")  # before TensorFlow's start-up: a missing install costs none
    from edgetl.core.fileio import check_writable

    check_writable(output, "--output", folder=True)  # before training, not after it
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    from edgetl.optimize import optimize_run

    reporter = RichReporter()
    try:
        result = optimize_run(run_dir, method=method, epochs=epochs, output=output, lr=lr, sparsity=sparsity,
                              schedule=schedule, block=block, batch_size=batch_size, force=force, compare=compare,
                              threads=threads, reporter=reporter)
    finally:
        reporter.close()
    _show(result, as_json)


def _show(result: OptimizeResult, as_json: bool) -> None:
    test = result.metrics.get("test") or result.metrics.get("val") or {}
    summary = {"run": str(result.run_dir), "parent": str(result.parent), "method": result.method,
               "accuracy": test.get("accuracy"), "qat_accuracy": (result.qat_metrics or {}).get("accuracy"),
               "sparsity": result.sparsity, "epochs": result.epochs_run, "seconds": result.seconds,
               "table": result.table, "report": str(result.report_path) if result.report_path else None}
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    con = out_console()
    line = f"{result.method} run written to {result.run_dir} (float accuracy {fmt(test.get('accuracy'))}"
    if result.qat_metrics:
        line += f", fake-quantized {fmt(result.qat_metrics.get('accuracy'))}"
    line += f", weight sparsity {result.sparsity:.1%})"
    con.print(line, soft_wrap=True)
    if result.table:
        rows = [[r["name"], fmt(r.get("accuracy")), _signed(r.get("drop")), fmt(r.get("size_mb"), 3),
                 fmt(r.get("gzip_mb"), 3), fmt(r.get("gzip_ratio"), 3), fmt(r.get("latency_ms"), 2)]
                for r in result.table]
        print_table("TFLite files on the held-out images (drop from float; latency: batch 1, median)",
                    ["model", "accuracy", "drop", "MB", "gzip MB", "gzip/float", "ms"], rows)
    if result.report_path:
        con.print(f"report: {result.report_path}", soft_wrap=True)


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.3f}"


COMMANDS = [optimize]
