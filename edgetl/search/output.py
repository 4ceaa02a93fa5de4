"""What a search leaves in its folder: search.json, search.png, recipe.yaml (the `edgetl train` recipe of the
recommended candidate), and with --train the candidate's full run; and how its figures are labelled."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.core.fileio import write_text

if TYPE_CHECKING:
    from edgetl.core.progress import Reporter
    from edgetl.search.candidates import Candidate, Weights
    from edgetl.search.config import SearchConfig
    from edgetl.search.result import SearchResult

RESULT_FILE = "search.json"
PLOT_FILE = "search.png"
RECIPE_FILE = "recipe.yaml"
RUN_DIR = "run"


def machine(threads: int) -> dict[str, Any]:
    """Where the latencies were measured: this machine's CPU and the runtime's threads."""
    from edgetl.runtime.timing import cpu_name
    from edgetl.train.engine import cpu_threads

    return {"cpu": cpu_name(), "threads": threads, "cpus": cpu_threads(), "runtime": "LiteRT"}


def notes(target: str, where: dict[str, Any]) -> list[str]:
    """What the figures are, in one line each (printed under the table, kept in search.json)."""
    out = [f"latency: median batch-1 call of each candidate's --target {target} file in {where['runtime']} on this "
           f"machine ({where['cpu']}, {where['threads']} threads)"
           + ("" if target == "cpu" else f"; not measured on a {target} device")]
    out.append("accuracy: validation accuracy of the float model (a head on the frozen base's features of the "
               "round's sample) ± its standard error from the number of validation images; the file's quantization "
               "drop is measured by edgetl export, not here")
    out.append("RAM: not measured" + (" (TensorFlow Lite Micro's arena)" if target == "mcu" else ""))
    return out


def _weights_value(w: Weights) -> str:
    """The --weights of `edgetl train` for these weights: a file in Keras' own cache is what 'imagenet' loads."""
    from edgetl.model.backbones import keras_cache_dir

    if w.is_file and Path(w.value).parent == Path(keras_cache_dir()).resolve() and not w.note:
        return "imagenet"
    return w.value


def train_config(folder: Path, cfg: SearchConfig, row: dict[str, Any], weights: dict[Candidate, Weights]) -> Any:
    """The TrainConfig that trains the candidate of `row` fully into FOLDER/run."""
    from edgetl.train.config import TrainConfig

    w = next(w for c, w in weights.items() if c.key == row["key"])
    return TrainConfig(data=str(cfg.data), backbone=row["backbone"], alpha=row["alpha"], image_size=row["image_size"],
                       weights=_weights_value(w), output=str(folder / RUN_DIR), force=cfg.force)


def write_recipe(folder: Path, cfg: SearchConfig, row: dict[str, Any],
                 weights: dict[Candidate, Weights]) -> tuple[str, Path]:
    """recipe.yaml (for `edgetl train --config`) and the equivalent command line of the recommended candidate."""
    import yaml

    tc = train_config(folder, cfg, row, weights)
    recipe = {"data": tc.data, "backbone": tc.backbone, **({"alpha": tc.alpha} if tc.alpha is not None else {}),
              "image_size": tc.image_size, "weights": tc.weights, "output": tc.output}
    path = folder / RECIPE_FILE
    write_text(path, f"# edgetl train --config {path}: the candidate 'edgetl search' recommends, trained fully\n"
               + yaml.safe_dump(recipe, sort_keys=False))
    args = ["edgetl", "train", tc.data, "--backbone", tc.backbone]
    if tc.alpha is not None:
        args += ["--alpha", f"{tc.alpha:g}"]
    args += ["--image-size", str(tc.image_size), "--weights", tc.weights, "--output", str(tc.output)]
    return shlex.join(args), path


def train_recommended(folder: Path, cfg: SearchConfig, row: dict[str, Any], weights: dict[Candidate, Weights],
                      reporter: Reporter) -> Path:
    """--train: the recommended candidate trained fully (edgetl.train) into FOLDER/run; an earlier complete
    run of the same candidate there is kept."""
    import json

    from edgetl.train import train

    tc = train_config(folder, cfg, row, weights)
    run = Path(tc.output or folder / RUN_DIR)
    manifest = run / "manifest.json"
    if manifest.is_file() and not cfg.force:
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        same = {k: old.get("config", {}).get(k) for k in ("backbone", "alpha", "image_size", "weights")} == \
            {"backbone": tc.backbone, "alpha": tc.alpha, "image_size": tc.image_size, "weights": tc.weights}
        if old.get("status") == "complete" and same:
            reporter.info(f"{run} already holds {row['key']} trained fully; kept (--force retrains it)")
            return run
    reporter.info(f"training {row['key']} fully into {run}")
    return Path(train(tc, reporter).run_dir)


def plot(folder: Path, result: SearchResult) -> Path | None:
    """search.png: accuracy against latency, marker area by size, the budget drawn, the recommendation starred."""
    from edgetl.core.plots import TradeoffPoint, plot_tradeoff

    rows = result.rows
    if not rows:
        return None
    points = [TradeoffPoint(r["key"], r["latency_ms"], r["accuracy"], r["accuracy_stderr"], r["size_mb"],
                            within=r["within_budget"], front=r["pareto"], chosen=r["recommended"]) for r in rows]
    m = result.machine
    path = folder / PLOT_FILE
    title = (f"edgetl search, --target {result.target}, budget: {result.budget.describe()} "
             f"(marker area: file size; hollow: outside the budget)")
    plot_tradeoff(points, path, max_latency_ms=result.budget.latency_ms, title=title,
                  latency_label=f"batch-1 latency (ms), {m['runtime']} on {m['cpu']}, {m['threads']} threads")
    return path


def write_json(folder: Path, obj: dict[str, Any]) -> None:
    from edgetl.core.fileio import write_json as write

    write(folder / RESULT_FILE, obj)
