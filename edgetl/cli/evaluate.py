"""`edgetl evaluate`, `benchmark`, `predict` and `inspect`: the runtime-side commands.

Only click and edgetl.cli.kit at module level: `edgetl --help` must not import TensorFlow. A
command on .tflite/.onnx files never imports TensorFlow at all (seconds saved in CI).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import click

from edgetl.cli.kit import RichReporter, err_console, fmt, handle_errors, load_tensorflow, out_console

MODEL_HELP = "MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file."


def _needs_tensorflow(paths: Sequence[str]) -> None:
    """Load TensorFlow (quietly) only when a Keras or SavedModel model is among `paths`."""
    from edgetl.runtime import detect_kind

    if any(detect_kind(p) in ("run", "keras", "saved_model") for p in paths):
        load_tensorflow()


def _labels(labels: str | None) -> list[str] | None:
    if labels is None:
        return None
    from edgetl.runtime import read_labels

    return read_labels(labels)


def _open(path: str, threads: int | None, unsafe: bool, labels: str | None, image_size: int | None) -> Any:
    from edgetl.runtime import open_model

    return open_model(path, threads=threads, safe_mode=not unsafe, class_names=_labels(labels), image_size=image_size)


def _json_out(obj: Any) -> None:
    click.echo(json.dumps(obj, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _esc(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table like clikit.print_table, but escaped and wide when stdout is not a terminal.

    Class names and paths may hold [brackets] that rich would read as markup and swallow; in CI logs
    (not a terminal) rich would squeeze the table into 80 columns and cut the model names.
    """
    from rich.table import Table

    con = out_console()
    if not con.is_terminal:
        con.width = max(con.width, 200)
    table = Table(title=_esc(title), title_justify="left")
    for c in columns:
        table.add_column(_esc(c), overflow="fold")
    for r in rows:
        table.add_row(*["" if v is None else _esc(v) for v in r])
    con.print(table)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


_unsafe_option = click.option("--unsafe", is_flag=True, help="Load .keras files that need custom code (Keras safe "
                              "mode off). Only for files you trust.")
_threads_option = click.option("--threads", type=int, default=None, help="CPU threads for the runtime "
                               "(default: the runtime's own choice).")
_labels_option = click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Class names, one a "
                              "line, for a model file that carries none (default: its metadata, else labels.txt "
                              "beside it).")
_size_option = click.option("--image-size", type=int, default=None, help="Input size for a model whose input "
                            "shape does not fix it (default: read from the model).")


# ----------------------------------------------------------------------------------------------
# evaluate


@click.command()
@click.argument("model", type=click.Path())
@click.option("--data", type=click.Path(), default=None, help="Labelled images: one subfolder per class (a subset "
              "of the model's classes is fine), or train/val/test folders (test/ is used). Default for a run "
              "directory: its own test split.")
@click.option("--top-k", type=int, default=5, show_default=True, help="k of the top-k accuracy.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per runtime call.")
@_threads_option
@click.option("--errors", "n_errors", type=int, default=0, show_default=True, help="List the N misclassified "
              "images the model was most confident about.")
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write the confusion matrix as a "
              "PNG into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (key 'accuracy', plus "
              "'checks' and 'passed') instead of tables.")
@click.option("--min-accuracy", type=float, default=None, help="Gate: fail (exit 1) below this accuracy (0..1).")
@click.option("--max-drop", type=float, default=None, help="Gate: fail when accuracy is more than this below the "
              "--baseline and/or the --reference (0..1, e.g. 0.01).")
@click.option("--baseline", type=click.Path(dir_okay=False), default=None, help="Baseline JSON written earlier "
              "by --save-baseline, for --max-drop.")
@click.option("--save-baseline", type=click.Path(dir_okay=False), default=None, help="Write this evaluation's "
              "figures as a baseline JSON file.")
@click.option("--reference", type=click.Path(), default=None, help="Another model of the same classes (e.g. the "
              "run's Keras model) run on the same images: its accuracy, top-1 agreement, and the drop for "
              "--max-drop.")
@click.option("--min-agreement", type=float, default=None, help="Gate: fail when top-1 agreement with "
              "--reference is below this (0..1).")
@click.option("--min-class-recall", type=float, default=None, help="Gate: fail when any class present in the "
              "data has recall below this (0..1).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML (one testcase per "
              "check) for CI systems.")
@click.option("--max-bad-fraction", type=float, default=0.05, show_default=True, help="Fail when more than this "
              "fraction of image files is unreadable.")
@_labels_option
@_size_option
@_unsafe_option
@handle_errors
def evaluate(model: str, data: str | None, top_k: int, batch_size: int, threads: int | None, n_errors: int,
             plots: str | None, as_json: bool, min_accuracy: float | None, max_drop: float | None,
             baseline: str | None, save_baseline: str | None, reference: str | None, min_agreement: float | None,
             min_class_recall: float | None, junit: str | None, max_bad_fraction: float, labels: str | None,
             image_size: int | None, unsafe: bool) -> None:
    """Measure MODEL on labelled images and gate its accuracy (exit 0 pass, 1 regression, 2 usage or input error).

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file; preprocessing and
    labels come from its own metadata, so every format is measured the same way. Reports accuracy, top-k,
    per-class precision/recall/F1 and the confusion matrix.

    \b
    Examples:
      edgetl evaluate runs/cats --data data/holdout --min-accuracy 0.9 --junit report.xml
      edgetl evaluate model_int8.tflite --data data/holdout --reference runs/cats --max-drop 0.01
      edgetl evaluate model.onnx --data data/holdout --baseline base.json --max-drop 0.005
    """
    from edgetl.core.errors import EdgetlError, GateFailure, UsageError
    from edgetl.evaluate import check_fraction, load_baseline

    # Every option is checked before a model is loaded: a typo costs no TensorFlow start-up.
    for name, v in (("--min-accuracy", min_accuracy), ("--max-drop", max_drop), ("--min-agreement", min_agreement),
                    ("--min-class-recall", min_class_recall), ("--max-bad-fraction", max_bad_fraction)):
        check_fraction(name, v)
    if max_drop is not None and baseline is None and reference is None:
        raise UsageError("--max-drop needs something to compare with. Add --baseline FILE or --reference MODEL.")
    if min_agreement is not None and reference is None:
        raise UsageError("--min-agreement needs --reference MODEL (e.g. the run's Keras model).")
    for name, v in (("--top-k", top_k), ("--batch-size", batch_size)):
        if v < 1:
            raise UsageError(f"{name} {v} is out of range. Use 1 or more.")
    if n_errors < 0:
        raise UsageError(f"--errors {n_errors} is out of range. Use 0 or more.")
    base = load_baseline(baseline) if baseline else None
    try:
        result, checks = _evaluate(model, data, top_k=top_k, batch_size=batch_size, threads=threads,
                                   n_errors=n_errors, reference=reference, labels=labels, image_size=image_size,
                                   unsafe=unsafe, max_bad_fraction=max_bad_fraction, base=base,
                                   gate_args={"min_accuracy": min_accuracy, "max_drop": max_drop,
                                              "min_class_recall": min_class_recall, "min_agreement": min_agreement})
    except EdgetlError as exc:
        if junit and not isinstance(exc, GateFailure):
            _junit_error(junit, model, str(exc))
        raise
    if base is not None and max_drop is None:
        result["baseline"] = {"path": baseline, "accuracy": base["accuracy"]}
        err_console().print(f"warning: --baseline without --max-drop compares only (baseline accuracy "
                            f"{_pct(base['accuracy'])}); add --max-drop to gate.", soft_wrap=True)
    elif base is not None:
        result["baseline"] = {"path": baseline, "accuracy": base["accuracy"]}
    if save_baseline:
        from edgetl.evaluate import save_baseline as write_baseline

        write_baseline(result, save_baseline)
    if plots:
        from edgetl.evaluate import write_plots

        result["plots"] = write_plots(result, plots)
    if junit:
        from edgetl.evaluate import write_junit

        write_junit(junit, result, checks)
    result["checks"] = [c.to_dict() for c in checks]
    result["passed"] = all(c.passed for c in checks)
    if as_json:
        _json_out(result)
    else:
        _print_evaluation(result, checks)
        if save_baseline:
            out_console().print(_esc(f"baseline written to {save_baseline}"), soft_wrap=True)
    if not result["passed"]:
        from edgetl.evaluate import gate_summary

        raise GateFailure(gate_summary(checks))


def _evaluate(model: str, data: str | None, *, top_k: int, batch_size: int, threads: int | None, n_errors: int,
              reference: str | None, labels: str | None, image_size: int | None, unsafe: bool,
              max_bad_fraction: float, base: dict[str, Any] | None, gate_args: dict[str, Any]) -> tuple[Any, Any]:
    from edgetl.evaluate import baseline_warnings, evaluate, gate

    _needs_tensorflow([model] + ([reference] if reference else []))
    runner = _open(model, threads, unsafe, labels, image_size)
    ref_runner = _open(reference, threads, unsafe, labels, None) if reference else None
    reporter = RichReporter()
    try:
        result = evaluate(runner, data, top_k=top_k, errors=n_errors, batch_size=batch_size, reference=ref_runner,
                          max_bad_fraction=max_bad_fraction, reporter=reporter)
    finally:
        reporter.close()
        runner.close()
        if ref_runner is not None:
            ref_runner.close()
    if base is not None:
        for w in baseline_warnings(result, base):
            err_console().print(_esc(f"warning: {w}"), soft_wrap=True)
    checks = gate(result, baseline=base, **gate_args)
    return result, checks


def _junit_error(path: str, model: str, message: str) -> None:
    """A JUnit file for an evaluation that could not run, so CI shows the reason beside the failed gate."""
    import xml.etree.ElementTree as ET

    from edgetl.core.fileio import write_text

    ts = ET.Element("testsuites", name="edgetl", tests="1", failures="0", errors="1")
    s = ET.SubElement(ts, "testsuite", name=f"edgetl evaluate: {os.path.basename(model.rstrip('/'))}", tests="1",
                      failures="0", errors="1", skipped="0")
    tc = ET.SubElement(s, "testcase", classname="edgetl.gate", name="evaluate", time="0")
    ET.SubElement(tc, "error", message=message, type="EvaluationError").text = message
    ET.indent(ts)
    write_text(path, '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(ts, encoding="unicode") + "\n")


def _print_evaluation(result: dict[str, Any], checks: Sequence[Any]) -> None:
    con = out_console()
    m = result["model"]
    d = result["data"]
    con.print(f"[bold]{_esc(m['path'])}[/bold] ({m['kind']}, {m['quantization']}, {_mb(m['size_bytes'])}, "
              f"{m['image_size']} px, {m['input_dtype']} input) on {d['images']} images of {len(d['classes'])} "
              f"classes from {_esc(d['root'])}" + (f" ({d['source']})" if d["source"] != "folder" else ""),
              soft_wrap=True)
    rows = [[name, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), v["support"]]
            for name, v in result["per_class"].items() if v["support"] or v["precision"]]
    macro = result["macro"]
    rows.append(["macro avg", fmt(macro["precision"]), fmt(macro["recall"]), fmt(macro["f1"]), result["samples"]])
    _table("Per class", ["class", "precision", "recall", "F1", "images"], rows)
    names = result["class_names"]
    if len(names) <= 12:
        cm = result["confusion_matrix"]
        _table("Confusion matrix (rows: true, columns: predicted)", ["true \\ pred", *names],
                    [[n, *cm[i]] for i, n in enumerate(names) if sum(cm[i])])
    if result["errors"]:
        _table(f"Most confident mistakes ({len(result['errors'])})", ["image", "true", "predicted",
                    "confidence"], [[e["path"], e["true"], e["predicted"], fmt(e["confidence"])]
                                    for e in result["errors"]])
    summary = (f"accuracy {_pct(result['accuracy'])}, top-{result['k']} {_pct(result['top_k'])}, "
               f"macro F1 {fmt(macro['f1'])}")
    ref = result.get("reference")
    if ref:
        summary += (f"; reference {ref['model']['path']} ({ref['model']['kind']}): accuracy {_pct(ref['accuracy'])}, "
                    f"top-1 agreement {_pct(ref['agreement'])}, drop {_pct(ref['drop'])}")
    if result.get("baseline"):
        summary += f"; baseline accuracy {_pct(result['baseline']['accuracy'])}"
    con.print(_esc(summary), soft_wrap=True)
    if checks:
        _table("Gate", ["check", "value", "threshold", "result"],
                    [[c.name, fmt(c.value, 4), fmt(c.threshold, 4), "pass" if c.passed else "FAIL"] for c in checks])
        if all(c.passed for c in checks):
            con.print(f"gate passed ({len(checks)} check{'s' if len(checks) != 1 else ''})")
    for p in result.get("plots", []):
        con.print(f"plot: {_esc(p)}", soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# benchmark


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", type=click.Path(), default=None, help="Labelled images: adds each model's accuracy.")
@click.option("--batch", type=int, default=32, show_default=True, help="Images per call for the throughput figure.")
@_threads_option
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed calls before timing.")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed batch-1 calls at least.")
@click.option("--min-seconds", type=float, default=2.0, show_default=True, help="Time each model at least this "
              "long (batch 1).")
@click.option("--max-seconds", type=float, default=30.0, show_default=True, help="Stop timing a model after this.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart of the results.")
@_unsafe_option
@handle_errors
def benchmark(models: tuple[str, ...], data: str | None, batch: int, threads: int | None, warmup: int, runs: int,
              min_seconds: float, max_seconds: float, as_json: bool, plot: str | None, unsafe: bool) -> None:
    """Compare MODELS side by side: format, mode, size, accuracy, latency p50/p90, throughput, peak memory.

    Each MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file. Models run one
    after another on the same random images (warm-up first), latency at batch 1 and throughput at --batch; the
    machine is named in the output. Exit 2 when a model cannot be benchmarked (its row says why).

    \b
    Example:
      edgetl benchmark runs/cats runs/cats/export/*.tflite runs/cats/export/*.onnx --data data/holdout --threads 2
    """
    from edgetl.core.errors import EdgetlError
    from edgetl.evaluate.benchmark import BenchOptions, machine_line
    from edgetl.evaluate.benchmark import benchmark as run_benchmark

    opts = BenchOptions(batch=batch, threads=threads, warmup=warmup, min_runs=runs, min_seconds=min_seconds,
                        max_seconds=max_seconds, safe_mode=not unsafe)
    opts.check()
    _needs_tensorflow(list(models))
    reporter = RichReporter()
    try:
        report = run_benchmark(list(models), opts, data=data, reporter=reporter)
    finally:
        reporter.close()
    if plot:
        from edgetl.evaluate.benchmark import plot_benchmark

        plot_benchmark(report, plot)
    if as_json:
        _json_out(report)
    else:
        rows = []
        for r in report["results"]:
            if r["status"] != "ok":
                rows.append([r["name"], r["format"] or "-", r["mode"] or "-", _mb(r["size_bytes"]), "-", "-", "-",
                             "-", "-", "error"])
                continue
            lat, thr = r["latency"], r["throughput"]
            rows.append([r["name"], r["format"], r["mode"], _mb(r["size_bytes"]), _pct(r["accuracy"]),
                         f"{lat['p50_ms']:.2f}", f"{lat['p90_ms']:.2f}",
                         f"{thr['images_per_s']:.1f}" + (" *" if thr["one_image_per_call"] else ""),
                         _mb(r["peak_memory_bytes"]), "ok"])
        threads_txt = f"{threads} threads" if threads else "default threads"
        _table(f"Benchmark, batch 1 latency and batch {batch} throughput, {threads_txt}",
                    ["model", "format", "mode", "size", "accuracy", "p50 ms", "p90 ms", f"img/s (b{batch})",
                     "peak mem", "status"], rows)
        con = out_console()
        con.print(_esc(f"machine: {machine_line(report['machine'])}"), soft_wrap=True)
        if any(r["status"] == "ok" and r["throughput"]["one_image_per_call"] for r in report["results"]):
            con.print("* the file fixes the batch at 1: fed one image per call", soft_wrap=True)
        con.print("peak mem: resident memory added while opening and running the model in this process.",
                  soft_wrap=True)
        if plot:
            con.print(_esc(f"plot: {plot}"), soft_wrap=True)
    failed = [r for r in report["results"] if r["status"] != "ok"]
    if failed:
        raise EdgetlError(f"{len(failed)} of {len(report['results'])} models could not be benchmarked; first: "
                          f"{failed[0]['path']}: {failed[0]['error']}")


# ----------------------------------------------------------------------------------------------
# predict


@click.command()
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=3, show_default=True, help="Labels to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image (JSON lines).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per runtime call.")
@_threads_option
@_labels_option
@_size_option
@_unsafe_option
@handle_errors
def predict(model: str, images: tuple[str, ...], top_k: int, as_json: bool, batch_size: int, threads: int | None,
            labels: str | None, image_size: int | None, unsafe: bool) -> None:
    """Top-k labels and probabilities for each image in IMAGES (files, or folders searched recursively).

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file. Unreadable images are
    reported (exit 2 at the end) and the others still predicted.

    \b
    Example:
      edgetl predict model_int8.tflite photos/ --top-k 3 --json
    """
    import numpy as np

    from edgetl.core.errors import EdgetlError, UsageError
    from edgetl.data import load_image

    if top_k < 1:
        raise UsageError(f"--top-k {top_k} is out of range. Use 1 or more.")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} is out of range. Use 1 or more.")
    paths = _expand_images(images)
    _needs_tensorflow([model])
    runner = _open(model, threads, unsafe, labels, image_size)
    names = runner.class_names
    k = min(top_k, len(names))
    size = (runner.image_size, runner.image_size)
    bad: list[tuple[str, str]] = []
    rows = []
    try:
        for start in range(0, len(paths), batch_size):
            chunk, arrays = [], []
            for p in paths[start:start + batch_size]:
                try:
                    arrays.append(load_image(p, size))
                    chunk.append(p)
                except EdgetlError as exc:
                    bad.append((p, str(exc)))
                    if as_json:
                        _json_out({"path": p, "error": str(exc)})
            if not chunk:
                continue
            probs = runner.predict(np.stack(arrays), batch_size=batch_size)
            for p, pr in zip(chunk, probs, strict=True):
                top = np.argsort(-pr)[:k]
                preds = [{"label": names[i], "probability": float(pr[i])} for i in top]
                if as_json:
                    _json_out({"path": p, "predictions": preds})
                else:
                    rows.append([p, preds[0]["label"], f"{preds[0]['probability']:.3f}",
                                 ", ".join(f"{x['label']} {x['probability']:.3f}" for x in preds[1:])])
    finally:
        runner.close()
    if not as_json:
        if rows:
            _table(f"{runner.path} ({runner.kind}, {runner.quantization})", ["image", "label", "probability",
                        f"next {k - 1}" if k > 1 else ""], rows)
        for p, reason in bad:
            err_console().print(_esc(f"warning: skipped {p}: {reason}"), soft_wrap=True)
    if bad:
        raise EdgetlError(f"{len(bad)} of {len(paths)} images could not be read (first: {bad[0][0]}). "
                          "Fix or remove them.")


def _expand_images(args: Sequence[str]) -> list[str]:
    """Files as given; folders searched recursively for image files (by extension), sorted."""
    from edgetl.core.errors import DataError
    from edgetl.data import IMAGE_EXTENSIONS

    out: list[str] = []
    for a in args:
        if os.path.isdir(a):
            found = []
            for dirpath, dirnames, filenames in os.walk(a):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [os.path.join(dirpath, f) for f in filenames
                          if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
            if not found:
                raise DataError(f"folder '{a}' holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...). "
                                "Pass image files or a folder of images.")
            out += sorted(found)
        elif os.path.exists(a):
            out.append(a)
        else:
            raise DataError(f"image '{a}' does not exist. Pass image files or folders of images.")
    return out


# ----------------------------------------------------------------------------------------------
# inspect


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON object.")
@_labels_option
@_size_option
@_unsafe_option
@handle_errors
def inspect_cmd(model: str, as_json: bool, labels: str | None, image_size: int | None, unsafe: bool) -> None:
    """Show MODEL's inputs and outputs (shapes, dtypes, quantization), op counts, parameters, metadata and size.

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file.
    """
    from edgetl.evaluate.inspect import inspect_model

    _needs_tensorflow([model])
    info = inspect_model(model, safe_mode=not unsafe, class_names=_labels(labels), image_size=image_size)
    if as_json:
        _json_out(info)
        return
    con = out_console()
    params = f"{info['parameters']:,} parameters" if info["parameters"] is not None else "parameters unknown"
    con.print(f"[bold]{_esc(info['path'])}[/bold]: {info['kind']}, {_mb(info['size_bytes'])}, {params}, "
              f"{info['image_size']} px, {info['classes']} classes, quantization {info['quantization']}"
              + ("" if info["embedded_metadata"] else " (no edgetl metadata: read from shapes/labels.txt)"),
              soft_wrap=True)
    rows = []
    for role in ("inputs", "outputs"):
        for t in info[role]:
            rows.append([role[:-1], t["name"], str(t["shape"]), t["dtype"], fmt(t.get("scale"), 6),
                         fmt(t.get("zero_point"))])
    _table("Tensors", ["", "name", "shape", "dtype", "scale", "zero point"], rows)
    ops = list(info["ops"].items())
    shown = ops[:25]
    rest = sum(c for _, c in ops[25:])
    _table(f"Ops ({info['op_total']} in all, {len(ops)} kinds)", ["op", "count"],
                [[k, v] for k, v in shown] + ([["(others)", rest]] if rest else []))
    if info.get("weight_dtypes"):
        con.print("weights by dtype: " + ", ".join(f"{k} {v:,}" for k, v in info["weight_dtypes"].items()),
                  soft_wrap=True)
    meta = info["metadata"]
    mrows = [[k, _short(v)] for k, v in meta.items()]
    _table("Metadata", ["key", "value"], mrows)


def _short(v: Any, limit: int = 100) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


COMMANDS = [evaluate, benchmark, predict, inspect_cmd]
