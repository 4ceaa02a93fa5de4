"""`edgetl benchmark`: models side by side (size, accuracy, latency, throughput, peak memory).

Module level: click, the kit and the benchmark's option defaults only (no TensorFlow).
"""

from __future__ import annotations

from dataclasses import fields

import click

from edgetl.cli.kit import (
    RichReporter,
    esc,
    handle_errors,
    mb,
    needs_tensorflow,
    out_console,
    pct,
    print_json,
    print_table,
)
from edgetl.cli.options import json_option, runtime_option, threads_option, unsafe_option
from edgetl.evaluate.benchmark import BenchOptions

_DEFAULTS = {f.name: f.default for f in fields(BenchOptions)}


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", type=click.Path(), default=None, help="Labelled images: adds each model's accuracy.")
@click.option("--batch", type=int, default=_DEFAULTS["batch"], show_default=True,
              help="Images per call for the throughput figure.")
@threads_option()
@click.option("--warmup", type=int, default=_DEFAULTS["warmup"], show_default=True,
              help="Untimed calls before timing.")
@click.option("--runs", type=int, default=_DEFAULTS["min_runs"], show_default=True,
              help="Timed batch-1 calls at least.")
@click.option("--min-seconds", type=float, default=_DEFAULTS["min_seconds"], show_default=True,
              help="Time each model at least this long (batch 1).")
@click.option("--max-seconds", type=float, default=_DEFAULTS["max_seconds"], show_default=True,
              help="Stop timing a model after this.")
@json_option("Print the results as one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart of the results.")
@unsafe_option()
@runtime_option()
@handle_errors
def benchmark(models: tuple[str, ...], data: str | None, batch: int, threads: int | None, warmup: int, runs: int,
              min_seconds: float, max_seconds: float, as_json: bool, plot: str | None, unsafe: bool,
              runtime: str | None) -> None:
    """Compare MODELS side by side: format, mode, size, accuracy, latency p50/p90, throughput, peak memory.

    Each MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file. Models run one
    after another on the same random images (warm-up first), latency at batch 1 and throughput at --batch; the
    machine is named in the output. Exit 2 when a model cannot be benchmarked (its row says why).

    \b
    Example:
      edgetl benchmark runs/cats runs/cats/export/*.tflite runs/cats/export/*.onnx --data data/holdout --threads 2
    """
    from edgetl.core.errors import EdgetlError
    from edgetl.evaluate.benchmark import benchmark as run_benchmark
    from edgetl.evaluate.benchmark import machine_line

    opts = BenchOptions(batch=batch, threads=threads, warmup=warmup, min_runs=runs, min_seconds=min_seconds,
                        max_seconds=max_seconds, safe_mode=not unsafe, runtime=runtime)
    opts.check()
    if plot:
        from edgetl.core.fileio import check_writable

        check_writable(plot, "--plot", folder=False)
    needs_tensorflow(list(models))
    reporter = RichReporter()
    try:
        report = run_benchmark(list(models), opts, data=data, reporter=reporter)
    finally:
        reporter.close()
    if plot:
        from edgetl.evaluate.benchmark import plot_benchmark

        plot_benchmark(report, plot)
    if as_json:
        print_json(report)
    else:
        rows = []
        for r in report["results"]:
            if r["status"] != "ok":
                rows.append([r["name"], r["format"] or "-", r["mode"] or "-", mb(r["size_bytes"]), "-", "-", "-",
                             "-", "-", "error"])
                continue
            lat, thr = r["latency"], r["throughput"]
            rows.append([r["name"], r["format"], r["mode"], mb(r["size_bytes"]), pct(r["accuracy"]),
                         f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}",
                         f"{thr['images_per_s']:.1f}" + (" *" if thr["one_image_per_call"] else ""),
                         mb(r["peak_memory_bytes"]), "ok"])
        threads_txt = f"{threads} threads" if threads else "default threads"
        print_table(f"Benchmark, batch 1 latency and batch {batch} throughput, {threads_txt}",
                    ["model", "format", "mode", "size", "accuracy", "p50 ms", "p90 ms", f"img/s (b{batch})",
                     "peak mem", "status"], rows, wide=True)
        con = out_console()
        con.print(esc(f"machine: {machine_line(report['machine'])}"), soft_wrap=True)
        if any(r["status"] == "ok" and r["throughput"]["one_image_per_call"] for r in report["results"]):
            con.print("* the file fixes the batch at 1: fed one image per call", soft_wrap=True)
        con.print("peak mem: resident memory added while opening and running the model in this process.",
                  soft_wrap=True)
        if plot:
            con.print(esc(f"plot: {plot}"), soft_wrap=True)
    failed = [r for r in report["results"] if r["status"] != "ok"]
    if failed:
        raise EdgetlError(f"{len(failed)} of {len(report['results'])} models could not be benchmarked; first: "
                          f"{failed[0]['path']}: {failed[0]['error']}")


COMMANDS = [benchmark]
