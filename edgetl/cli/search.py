"""`edgetl search`: the backbone, width and input size for the user's photos and device budget.

Module level: click, the kit and the option tables only (no TensorFlow); the search is imported when it runs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

import click

from edgetl.cli.kit import RichReporter, esc, fail, handle_errors, out_console, print_json, print_table
from edgetl.cli.options import force_option, json_option, threads_option
from edgetl.export.targets import TARGETS
from edgetl.search.candidates import WEIGHT_SOURCES
from edgetl.search.config import SearchConfig

if TYPE_CHECKING:
    from edgetl.search import SearchResult

_DEFAULTS = {f.name: f.default for f in fields(SearchConfig)}


@click.command()
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--target", type=click.Choice(list(TARGETS)), default=_DEFAULTS["target"], show_default=True,
              help="The device: each candidate gets the file `edgetl export --target` makes for it, and is timed "
              "in its runtime here.")
@click.option("--max-latency-ms", type=float, help="Budget: batch-1 latency of the target's file, measured on this "
              "machine.")
@click.option("--max-size-mb", type=float, help="Budget: size of the target's file.")
@click.option("--max-ram-kb", type=float, help="Budget: RAM, where the target has RAM figures (not measured yet).")
@click.option("--candidates", help="Comma list of BACKBONE[:ALPHA]@SIZE (mobilenet_v2:0.35@96,mobilenet_v2:1.0@224) "
              "or a YAML file of them (default: MobileNetV2 at its smallest width and 1.0 at 96-224 px; for mcu the "
              "smallest MobileNetV2 and MobileNet at 96 and 128).")
@click.option("--weights", type=click.Choice(WEIGHT_SOURCES), default=_DEFAULTS["weights"], show_default=True,
              help="imagenet: Keras' weight files (from --weights-dir, else Keras' cache, else downloaded); none: "
              "random (a dry run); bundled: the weights edgetl ships (candidates without are skipped).")
@click.option("--weights-dir", type=click.Path(file_okay=False), help="A folder of Keras' ImageNet weight files "
              "under Keras' own names (offline); a missing size uses the nearest size's file; candidates with no "
              "file are skipped.")
@click.option("--images-per-class", type=int, default=_DEFAULTS["images_per_class"], show_default=True,
              help="Training (and validation) images per class in the first round; each round multiplies them by "
              "--reduction.")
@click.option("--reduction", type=int, default=_DEFAULTS["reduction"], show_default=True,
              help="Successive halving: each round keeps 1/N of the candidates (the best by Pareto rank within the "
              "budget) on N times the images.")
@threads_option("CPU threads of the latency measurement (default: the cores, up to 4).")
@click.option("--output", "-o", type=click.Path(), help="The search folder; rerunning the same search there reuses "
              "its results (default: searches/DATA-TARGET).")
@force_option("Redo every result of the search folder instead of reusing them.")
@click.option("--train", "train_it", is_flag=True, help="Then train the recommended candidate fully into "
              "OUTPUT/run (a run `edgetl export` takes).")
@json_option("Print one JSON object: candidates (accuracy, latency_ms, size_mb, within_budget, pareto, ...) and "
             "recommended (null when no candidate meets the budget: exit 1).")
@handle_errors
def search(data: str, target: str, max_latency_ms: float | None, max_size_mb: float | None, max_ram_kb: float | None,
           candidates: str | None, weights: str, weights_dir: str | None, images_per_class: int, reduction: int,
           threads: int | None, output: str | None, force: bool, train_it: bool, as_json: bool) -> None:
    """Find the backbone, width and input size that fit DATA and the device budget.

    Every candidate is trained (a head on its frozen base's features) on a small class-balanced sample, its
    target file converted and timed; the promising ones go on to more images. Prints the candidates in Pareto
    order, the recommended one and the `edgetl train` command that trains it. Exit 1 when none meets the budget.
    """
    from edgetl.core.tf import load_tensorflow
    from edgetl.search import Budget

    cfg = SearchConfig(data=data, target=target, budget=Budget(max_latency_ms, max_size_mb, max_ram_kb),
                       candidates=candidates, weights=weights, weights_dir=weights_dir,
                       images_per_class=images_per_class, reduction=reduction, threads=threads, output=output,
                       force=force, train=train_it).validate()
    load_tensorflow()
    from edgetl.search import search as run_search

    reporter = RichReporter()
    try:
        result = run_search(cfg, reporter)
    finally:
        reporter.close()
    if as_json:
        print_json(result.to_json())
    else:
        _summary(result)
    if result.recommended is None:
        fail(result.miss_line(), 1)


def _summary(result: SearchResult) -> None:
    rows = []
    for r in result.rows:
        rows.append([r["pareto_rank"] or "-", r["key"] + (" <- recommended" if r["recommended"] else ""),
                     f"{r['accuracy']:.3f} ± {r['accuracy_stderr']:.3f}", f"{r['latency_ms']:.2f}",
                     f"{r['size_mb']:.2f}", "-" if r.get("ram_kb") is None else f"{r['ram_kb']:.0f}",
                     f"{r['train_images']}/{r['val_images']}", r["round"],
                     "yes" if r["within_budget"] else "no"])
    print_table(f"edgetl search --target {result.target}, budget: {result.budget.describe()} ({result.folder})",
                ["rank", "candidate", "accuracy", "latency ms", "size MB", "RAM KB", "train/val images", "round",
                 "in budget"], rows, wide=True)
    con = out_console()
    for note in result.notes:
        con.print(esc(f"- {note}"), soft_wrap=True)
    for line in result.skipped:
        con.print(esc(f"- {line}"), soft_wrap=True)
    con.print(esc(f"time: {result.seconds:.1f} s in {len(result.rounds)} rounds; plot: {result.plot}"), soft_wrap=True)
    if result.recommended is not None:
        con.print(esc(f"recommended: {result.recommended['key']}. Train it: {result.train_command} "
                      f"(or edgetl train --config {result.recipe})"), soft_wrap=True)
    if result.run is not None:
        con.print(esc(f"trained into {result.run}. Next: edgetl export {result.run} --target {result.target}"),
                  soft_wrap=True)


COMMANDS = [search]
