"""`edgetl evaluate`: any model on labelled images, its accuracy gated for CI (exit 1 on a regression).

Only click, the kit and the evaluate defaults at module level: `edgetl --help` must not import
TensorFlow, and a command on .tflite/.onnx files never imports it at all (seconds saved in CI).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from edgetl.cli.kit import (
    RichReporter,
    esc,
    fmt,
    handle_errors,
    mb,
    needs_tensorflow,
    open_runner,
    out_console,
    pct,
    print_json,
    print_table,
    warn,
)
from edgetl.cli.options import (
    batch_size_option,
    json_option,
    model_argument,
    model_options,
    runtime_option,
    threads_option,
)
from edgetl.evaluate.accuracy import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BAD_FRACTION, DEFAULT_TOP_K

if TYPE_CHECKING:
    from edgetl.evaluate import Check


@click.command()
@model_argument()
@click.option("--data", type=click.Path(), default=None, help="Labelled images: one subfolder per class (a subset "
              "of the model's classes is fine), or train/val/test folders (test/ is used). Default for a run "
              "directory: its own test split.")
@click.option("--top-k", type=int, default=DEFAULT_TOP_K, show_default=True, help="k of the top-k accuracy.")
@batch_size_option(DEFAULT_BATCH_SIZE)
@threads_option()
@click.option("--errors", "n_errors", type=int, default=0, show_default=True, help="List the N misclassified "
              "images the model was most confident about.")
@click.option("--plots", type=click.Path(file_okay=False), default=None, help="Write the confusion matrix as a "
              "PNG into this folder.")
@json_option("Print one JSON object on stdout (key 'accuracy', plus 'checks' and 'passed') instead of tables.")
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
@click.option("--min-balanced-accuracy", type=float, default=None, help="Gate: fail (exit 1) below this balanced "
              "accuracy, the mean recall over the classes present (0..1): what imbalanced data needs.")
@click.option("--min-class-recall", type=float, default=None, help="Gate: fail when any class present in the "
              "data has recall below this (0..1).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Write JUnit XML (one testcase per "
              "check) for CI systems.")
@click.option("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION, show_default=True,
              help="Fail when more than this fraction of image files is unreadable.")
@model_options
@runtime_option()
@handle_errors
def evaluate(model: str, data: str | None, top_k: int, batch_size: int, threads: int | None, n_errors: int,
             plots: str | None, as_json: bool, min_accuracy: float | None, max_drop: float | None,
             baseline: str | None, save_baseline: str | None, reference: str | None, min_agreement: float | None,
             min_balanced_accuracy: float | None, min_class_recall: float | None, junit: str | None,
             max_bad_fraction: float, labels: str | None, image_size: int | None, unsafe: bool,
             runtime: str | None) -> None:
    """Measure MODEL on labelled images and gate its accuracy (exit 0 pass, 1 regression, 2 usage or input error).

    MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite or a .onnx file; preprocessing and
    labels come from its own metadata, so every format is measured the same way. Reports accuracy, balanced
    accuracy, macro-F1, top-k, per-class precision/recall/F1 and the confusion matrix.

    \b
    Examples:
      edgetl evaluate runs/cats --data data/holdout --min-accuracy 0.9 --junit report.xml
      edgetl evaluate model_int8.tflite --data data/holdout --reference runs/cats --max-drop 0.01
      edgetl evaluate model.onnx --data data/holdout --baseline base.json --max-drop 0.005
      edgetl evaluate model_mcu.tflite --runtime tflm --data data/holdout --reference runs/cats --max-drop 0.02
    """
    from edgetl.core.errors import EdgetlError, GateFailure, UsageError
    from edgetl.evaluate import check_fraction, load_baseline

    # Every option is checked before a model is loaded: a typo costs no TensorFlow start-up.
    for name, v in (("--min-accuracy", min_accuracy), ("--max-drop", max_drop), ("--min-agreement", min_agreement),
                    ("--min-class-recall", min_class_recall), ("--min-balanced-accuracy", min_balanced_accuracy),
                    ("--max-bad-fraction", max_bad_fraction)):
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
    from edgetl.core.fileio import check_writable

    # Every output is checked before the evaluation: none is written when another one cannot be.
    for name, path, folder in (("--junit", junit, False), ("--save-baseline", save_baseline, False),
                               ("--plots", plots, True)):
        if path:
            check_writable(path, name, folder=folder)
    base = load_baseline(baseline) if baseline else None
    try:
        result, checks = _evaluate(model, data, top_k=top_k, batch_size=batch_size, threads=threads,
                                   n_errors=n_errors, reference=reference, labels=labels, image_size=image_size,
                                   unsafe=unsafe, runtime=runtime, max_bad_fraction=max_bad_fraction, base=base,
                                   gate_args={"min_accuracy": min_accuracy, "max_drop": max_drop,
                                              "min_class_recall": min_class_recall, "min_agreement": min_agreement,
                                              "min_balanced_accuracy": min_balanced_accuracy})
    except EdgetlError as exc:
        if junit and not isinstance(exc, GateFailure):
            from edgetl.evaluate import write_junit_error

            write_junit_error(junit, model, str(exc))
        raise
    if base is not None and max_drop is None:
        result["baseline"] = {"path": baseline, "accuracy": base["accuracy"]}
        warn(f"--baseline without --max-drop compares only (baseline accuracy {pct(base['accuracy'])}); add "
             "--max-drop to gate.")
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
        print_json(result)
    else:
        _print_evaluation(result, checks)
        if save_baseline:
            out_console().print(esc(f"baseline written to {save_baseline}"), soft_wrap=True)
    if not result["passed"]:
        from edgetl.evaluate import gate_summary

        raise GateFailure(gate_summary(checks))


def _evaluate(model: str, data: str | None, *, top_k: int, batch_size: int, threads: int | None, n_errors: int,
              reference: str | None, labels: str | None, image_size: int | None, unsafe: bool,
              runtime: str | None, max_bad_fraction: float, base: dict[str, Any] | None,
              gate_args: dict[str, float | None]) -> tuple[dict[str, Any], list[Check]]:
    from edgetl.evaluate import baseline_warnings, evaluate, gate

    needs_tensorflow([model] + ([reference] if reference else []))
    runner = open_runner(model, threads, unsafe, labels, image_size, runtime)
    ref_runner = open_runner(reference, threads, unsafe, labels, None) if reference else None
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
            warn(w)
    checks = gate(result, baseline=base, **gate_args)
    return result, checks


def _print_evaluation(result: dict[str, Any], checks: Sequence[Check]) -> None:
    con = out_console()
    m = result["model"]
    d = result["data"]
    con.print(f"[bold]{esc(m['path'])}[/bold] ({m['kind']}, {m['quantization']}, {mb(m['size_bytes'])}, "
              f"{m['image_size']} px, {m['input_dtype']} input) on {d['images']} images of {len(d['classes'])} "
              f"classes from {esc(d['root'])}" + (f" ({d['source']})" if d["source"] != "folder" else ""),
              soft_wrap=True)
    rows = [[name, fmt(v["precision"]), fmt(v["recall"]), fmt(v["f1"]), v["support"]]
            for name, v in result["per_class"].items() if v["support"] or v["precision"]]
    macro = result["macro"]
    rows.append(["macro avg", fmt(macro["precision"]), fmt(macro["recall"]), fmt(macro["f1"]), result["samples"]])
    print_table("Per class", ["class", "precision", "recall", "F1", "images"], rows, wide=True)
    names = result["class_names"]
    if len(names) <= 12:
        cm = result["confusion_matrix"]
        print_table("Confusion matrix (rows: true, columns: predicted)", ["true \\ pred", *names],
                    [[n, *cm[i]] for i, n in enumerate(names) if sum(cm[i])], wide=True)
    if result["errors"]:
        print_table(f"Most confident mistakes ({len(result['errors'])})", ["image", "true", "predicted", "confidence"],
                    [[e["path"], e["true"], e["predicted"], fmt(e["confidence"])] for e in result["errors"]],
                    wide=True)
    summary = (f"accuracy {pct(result['accuracy'])}, balanced accuracy {pct(result.get('balanced_accuracy'))}, "
               f"top-{result['k']} {pct(result['top_k'])}, macro F1 {fmt(macro['f1'])}")
    ref = result.get("reference")
    if ref:
        summary += (f"; reference {ref['model']['path']} ({ref['model']['kind']}): accuracy {pct(ref['accuracy'])}, "
                    f"top-1 agreement {pct(ref['agreement'])}, drop {pct(ref['drop'])}")
    if result.get("baseline"):
        summary += f"; baseline accuracy {pct(result['baseline']['accuracy'])}"
    con.print(esc(summary), soft_wrap=True)
    if checks:
        print_table("Gate", ["check", "value", "threshold", "result"],
                    [[c.name, fmt(c.value, 4), fmt(c.threshold, 4), "pass" if c.passed else "FAIL"] for c in checks],
                    wide=True)
        if all(c.passed for c in checks):
            con.print(f"gate passed ({len(checks)} check{'s' if len(checks) != 1 else ''})")
    for p in result.get("plots", []):
        con.print(f"plot: {esc(p)}", soft_wrap=True)


COMMANDS = [evaluate]
