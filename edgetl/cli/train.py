"""`edgetl train` (and `train --resume`), `backbones` and `demo-data`: making a run and what it starts from.

Module level: click, the kit and the option tables only (no TensorFlow); the job is imported when it runs.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING

import click

from edgetl.cli.kit import RichReporter, esc, fmt, handle_errors, load_tensorflow, out_console, print_table
from edgetl.cli.options import force_option, json_option
from edgetl.model.backbones import PREPROCESSING_MODES, PRESET_FORMS
from edgetl.train.class_weights import AUTO_RATIO, CLASS_WEIGHT_MODES
from edgetl.train.config import FEATURE_CACHE_MODES, TrainConfig
from edgetl.train.distribute import MIXED_PRECISION, STRATEGIES

if TYPE_CHECKING:
    from edgetl.train import TrainResult

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _d(name: str) -> str:
    return f"(default: {_DEFAULTS[name]})"


@click.command()
@click.argument("data", type=click.Path(file_okay=False), required=False)
@click.option("--backbone", help=f"Backbone name (see 'edgetl backbones'), hub:HANDLE, kerashub:PRESET (a KerasHub "
              f"preset: name, kaggle://, hf:// or a local folder), or a .keras/SavedModel path {_d('backbone')}.")
@click.option("--weights", help="imagenet (downloads once; for kerashub: the preset's own), none (random), bundled "
              f"(shipped with edgetl, offline) or a local weights file {_d('weights')}.")
@click.option("--alpha", type=float, help="Width multiplier of the MobileNet family (e.g. 0.35, 1.0).")
@click.option("--image-size", type=int, help="Square input size in pixels (default: the backbone's).")
@click.option("--preprocessing", type=click.Choice(PREPROCESSING_MODES),
              help="Override the backbone's preprocessing (default: from its card; hub: unit; kerashub: the "
              "preset's image converter, named 'preset' when no other mode equals it).")
@click.option("--epochs", type=int, help=f"Epochs of the first stage (head only) {_d('epochs')}.")
@click.option("--batch-size", type=int, help=f"Batch size {_d('batch_size')}.")
@click.option("--lr", type=float, help=f"Learning rate of the first stage {_d('lr')}.")
@click.option("--dropout", type=float, help=f"Dropout before the classifier layer {_d('dropout')}.")
@click.option("--val-split", type=float, help=f"Fraction held out for validation {_d('val_split')}.")
@click.option("--test-split", type=float, help=f"Fraction held out for testing {_d('test_split')}.")
@click.option("--augment/--no-augment", default=None, help="Random flip, rotation, zoom, contrast while training "
              "(turns the feature cache off) (default: off).")
@click.option("--fine-tune-layers", help="Second stage: unfreeze the top N layers of the base, or 'all' "
              "(BatchNorm stays frozen) (default: no second stage).")
@click.option("--fine-tune-lr", type=float, help=f"Learning rate of the second stage {_d('fine_tune_lr')}.")
@click.option("--fine-tune-epochs", type=int, help=f"Epochs of the second stage {_d('fine_tune_epochs')}.")
@click.option("--class-weights", help=f"{'|'.join(CLASS_WEIGHT_MODES)}|FILE.yaml: weigh each class's images in "
              "the loss; auto = inverse frequency (normalised), a file maps class names to weights (others 1) "
              f"(default: auto when the largest class has more than {AUTO_RATIO:g}x the images of the smallest, "
              "else none).")
@click.option("--label-smoothing", type=float, help="Smooth the targets: 1 - X on the class, X spread over all "
              f"classes, 0 <= X < 1 {_d('label_smoothing')}.")
@click.option("--tensorboard/--no-tensorboard", default=None, help="Write Keras TensorBoard logs of both stages "
              "under RUN/logs/ (view: tensorboard --logdir RUN/logs) (default: off).")
@click.option("--patience", type=int, help=f"Early stopping patience in epochs on val loss {_d('patience')}.")
@click.option("--feature-cache", type=click.Choice(FEATURE_CACHE_MODES), help="auto: run the frozen base once and "
              "train the head on cached features when that is exact (no augmentation), the base run by TensorFlow "
              "or, on a CPU when the data pays for its conversion, by TFLite/XNNPACK; keras or tflite: that engine; "
              f"off: never {_d('feature_cache')}.")
@click.option("--max-bad-fraction", type=float, help="Fail when more than this fraction of image files are "
              f"unreadable {_d('max_bad_fraction')}.")
@click.option("--seed", type=int, help=f"Random seed for splits, initialisation and shuffling {_d('seed')}.")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              help="tf.distribute strategy: auto = mirrored over several GPUs, else default; multiworker reads "
              f"TF_CONFIG {_d('strategy')}.")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION),
              help="mixed_float16 training; auto = on for GPUs of compute capability 7.0+; saved models stay "
              f"float32 {_d('mixed_precision')}.")
@click.option("--xla/--no-xla", default=None, help="Jit-compile training steps with XLA (default: off).")
@click.option("--output", "-o", type=click.Path(), help="Run directory to write (default: runs/BACKBONE-TIME).")
@force_option("Replace an existing run directory.", default=None)
@click.option("--config", "config_path", type=click.Path(), help="YAML recipe with any of these options "
              "(keys as option names); flags win.")
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue an interrupted run from its last completed "
              "epoch, with its own options and data.")
@handle_errors
def train(config_path: str | None, resume_dir: str | None, **flags: str | int | float | bool | None) -> None:
    """Train a classifier on DATA: one subfolder per class, or train/ val/ test/ subfolders.

    The backbone is frozen; its preprocessing goes inside the model, which takes RGB pixels 0..255.
    """
    from edgetl.core.errors import UsageError
    from edgetl.train.config import load_recipe, merge

    if resume_dir is not None:
        given = [k for k, v in flags.items() if v is not None] + (["--config"] if config_path else [])
        if given:
            names = ", ".join("DATA" if k == "data" else k if k.startswith("--") else "--" + k.replace("_", "-")
                              for k in given)
            raise UsageError(f"--resume continues a run with its own options and data; drop {names}.")
        _resume(resume_dir)
        return
    recipe = load_recipe(config_path) if config_path else {}
    cfg = merge(TrainConfig, recipe, flags, source=f"recipe '{config_path}'" if config_path else "recipe")
    if not cfg.data:
        raise UsageError("no data folder given. Pass DATA (a folder with one subfolder per class) or 'data:' in "
                         "the recipe.")
    from edgetl.train import plan

    plan(cfg)  # every option checked before TensorFlow is loaded
    if cfg.output:
        from edgetl.core.fileio import check_writable

        check_writable(cfg.output, "--output", folder=True)
    load_tensorflow()
    from edgetl.train import train as run_train

    reporter = RichReporter()
    try:
        result = run_train(cfg, reporter)
    finally:
        reporter.close()
    _summary(result)


def _resume(run_dir: str) -> None:
    load_tensorflow()
    from edgetl.train import AlreadyComplete, resume

    reporter = RichReporter()
    try:
        result = resume(run_dir, reporter)
    except AlreadyComplete:
        click.echo(f"run '{run_dir}' is already complete; nothing to resume.")
        return
    finally:
        reporter.close()
    _summary(result)


def _summary(result: TrainResult) -> None:
    if not result.chief:
        click.echo("worker finished; the chief wrote the run directory.")
        return
    rows = []
    for split in ("val", "test"):
        m = result.metrics.get(split)
        if m:
            rows.append([split, m["samples"], fmt(m["accuracy"]), fmt(m.get("balanced_accuracy")),
                         fmt(m.get("macro_f1")), fmt(m["top_k"]) + f" (k={m['k']})"])
    print_table(f"Trained {len(result.class_names)} classes into {result.run_dir}", ["split", "images", "accuracy",
                "balanced accuracy", "macro-F1", "top-k"], rows)
    secs = result.seconds
    out_console().print(
        f"feature cache: {'on' if result.feature_cache else 'off'}; epochs: "
        + ", ".join(f"{k} {v}" for k, v in result.epochs_run.items())
        + f"; time: {secs.get('total', 0):.1f} s. Next: edgetl export {result.run_dir}",
        soft_wrap=True,
    )


@click.command()
@json_option("Print the cards as JSON.")
@handle_errors
def backbones(as_json: bool) -> None:
    """List the backbones edgetl can build, with sizes, preprocessing and int8 notes."""
    from edgetl.model.backbones import cards

    all_cards = cards()
    if as_json:
        import json

        click.echo(json.dumps({n: c.to_dict() for n, c in all_cards.items()}, indent=2))
        return
    rows = [[c.name, c.default_size, c.min_size, f"{c.params / 1e6:.1f}M", c.features, c.preprocessing,
             ",".join(str(a) for a in c.alpha) if c.alpha else "-", c.int8.split(";")[0]] for c in all_cards.values()]
    print_table("Backbones (also: hub:HANDLE, kerashub:PRESET, or a .keras / SavedModel path)",
                ["name", "size", "min", "params", "features", "preprocess", "alpha", "int8"], rows)
    out_console().print(esc(f"KerasHub presets: {PRESET_FORMS}. The preset's image backbone is frozen and its "
                            "image converter goes inside the model."), soft_wrap=True)


@click.command("demo-data")
@click.argument("dest", type=click.Path())
@click.option("--per-class", type=int, default=40, show_default=True, help="Images per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generator.")
@force_option("Replace an existing folder written by demo-data.")
@handle_errors
def demo_data(dest: str, per_class: int, seed: int, force: bool) -> None:
    """Write a small generated image data set to DEST (offline demo and tests)."""
    from edgetl.core.errors import UsageError
    from edgetl.data.demo import write_demo_data

    if per_class < 3 or per_class > 10000:
        raise UsageError(f"--per-class {per_class} is out of range. Use 3..10000.")
    from edgetl.core.fileio import check_writable

    check_writable(dest, "DEST", folder=True)
    summary = write_demo_data(dest, per_class=per_class, seed=seed, force=force)
    click.echo(f"wrote {sum(summary['counts'].values())} images of {len(summary['classes'])} classes to {dest}")


COMMANDS = [train, backbones, demo_data]
