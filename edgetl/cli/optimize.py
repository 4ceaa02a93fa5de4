"""`edgetl optimize`: quantization-aware training or pruning of a trained run into a new run.

No TensorFlow at import: options are checked first, then edgetl.optimize loads it.
"""

from __future__ import annotations

import json
from typing import Any

import click

from edgetl.cli.kit import RichReporter, fmt, handle_errors, out_console, print_table


@click.command("optimize")
@click.argument("run_dir", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--method", "-m", type=click.Choice(["qat", "prune"]), required=True,
              help="qat: quantization-aware training (int8 exports use the ranges learned in training); "
                   "prune: magnitude pruning to --sparsity (smaller compressed files).")
@click.option("--epochs", type=int, help="Fine-tuning epochs on the run's training images (default: 3 for qat, 10 "
              "for prune, which must relearn around the removed weights).")
@click.option("--output", "-o", type=click.Path(file_okay=False), required=True,
              help="The new run directory (a run like any other: export, evaluate and predict take it).")
@click.option("--lr", type=float, help="Adam learning rate (default: 1e-4, small: the model is already trained).")
@click.option("--sparsity", type=float, default=0.5, show_default=True,
              help="prune: target fraction of zero weights in Conv2D, Dense and SeparableConv2D pointwise kernels "
                   "(depthwise kernels stay dense).")
@click.option("--schedule", type=click.Choice(["polynomial", "constant"]), default="polynomial", show_default=True,
              help="prune: polynomial raises sparsity from 0 to --sparsity over the first 70% of steps; constant "
                   "prunes to --sparsity from the start.")
@click.option("--block", type=int, default=None,
              help="prune: remove weights of 1x1 convolutions and Dense layers in runs of this many consecutive "
                   "input channels: gzip compresses the file better at the same sparsity, for some accuracy "
                   "(train longer). Default 1: element-wise.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Training batch size.")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="Export float, post-training int8 and the optimized model to TFLite and print one table of "
                   "accuracy, size, gzip size and latency (slower).")
@click.option("--threads", type=int, help="CPU threads for latency in the comparison (default: up to 4).")
@click.option("--force", is_flag=True, help="Replace the output run if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@handle_errors
def optimize(run_dir: str, method: str, epochs: int | None, output: str, lr: float | None, sparsity: float,
             schedule: str, block: int | None, batch_size: int, compare: bool, threads: int | None, force: bool,
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
    from edgetl.optimize import DEFAULT_BLOCK, check_options

    block = DEFAULT_BLOCK if block is None else block
    check_options(method, epochs, lr, sparsity, schedule, batch_size, block)
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


def _show(result: Any, as_json: bool) -> None:
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


def _signed(x: Any) -> str:
    return "-" if x is None else f"{x:+.3f}"


COMMANDS = [optimize]
