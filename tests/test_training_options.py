"""Training options users expect: class weights, label smoothing, TensorBoard logs, balanced metrics, a model card."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.core.progress import Reporter

SIZE = 48
COMMON = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "bundled", "image_size": SIZE, "batch_size": 16,
          "seed": 0}


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------
# Metrics and class weights as functions


def test_balanced_accuracy_and_macro_f1() -> None:
    from edgetl.core.metrics import classification_metrics

    # 8 of class a (all right), 2 of class b (one right): accuracy 0.9 hides b's recall of 0.5.
    y = np.array([0] * 8 + [1] * 2)
    probs = np.eye(2)[[0] * 8 + [1, 0]]
    m = classification_metrics(y, probs, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.9)
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)
    f1_a = 2 * (8 / 9) * 1.0 / (8 / 9 + 1.0)
    f1_b = 2 * 1.0 * 0.5 / 1.5
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b) / 2)


def test_top_k_accuracy_counts_the_true_class_among_the_k_most_probable() -> None:
    from edgetl.core.metrics import classification_metrics, top_k_hits

    # Row 0: true class 2 is 3rd (in the top 3); row 1: true class 0 is 4th; row 2: a tie, broken in class order.
    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.4, 0.3, 0.2], [0.25, 0.25, 0.25, 0.25]], dtype=np.float32)
    y = np.array([2, 0, 3])
    assert top_k_hits(probs, y, 3).tolist() == [True, False, False]
    assert classification_metrics(y, probs, list("abcd"), top_k=3)["top_k"] == pytest.approx(1 / 3)
    assert classification_metrics(y, probs, list("abcd"), top_k=4)["top_k"] == 1.0
    # Across chunk boundaries, the same as a stable sort of every row.
    rng = np.random.default_rng(0)
    many = rng.random((1000, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 1000)
    ref = (np.argsort(-many, axis=1, kind="stable")[:, :2] == labels[:, None]).any(axis=1)
    np.testing.assert_array_equal(top_k_hits(many, labels, 2, chunk=64), ref)


def test_class_weights_default_on_above_3x_and_warnings_name_classes(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    from edgetl.core.errors import UsageError
    from edgetl.train.class_weights import from_manifest, resolve, warn_imbalance

    names = ["cats", "dogs", "owls"]
    with caplog.at_level(logging.INFO, logger="edgetl"):
        cw = resolve(None, [40, 40, 10], names)
    assert cw.weights is not None and cw.source.startswith("auto (default")
    assert cw.weights[2] == pytest.approx(4 * cw.weights[0])
    assert np.dot(cw.weights, [40, 40, 10]) == pytest.approx(90)  # normalised: they average 1 per image
    assert "class weights on" in caplog.text and "'cats'" in caplog.text and "'owls'" in caplog.text
    assert from_manifest(cw.to_manifest(names), names) == cw  # a resumed run keeps the weights it started with
    assert from_manifest(None, names).weights is None  # ... and a run from before class weights stays unweighted
    assert resolve(None, [40, 40, 20], names).weights is None  # 2x: unweighted unless asked
    assert resolve("auto", [40, 40, 20], names).weights is not None
    assert resolve("none", [40, 40, 1], names).weights is None

    f = tmp_path / "w.yaml"
    f.write_text("owls: 3\n")
    assert resolve(str(f), [40, 40, 10], names).weights == [1.0, 1.0, 3.0]
    f.write_text("owl: 3\n")
    with pytest.raises(UsageError, match="Did you mean 'owls'"):
        resolve(str(f), [40, 40, 10], names)

    lines = warn_imbalance([120, 40, 8], names)
    assert any("owls (8)" in line for line in lines)  # fewer than 10 images
    assert any("15.0x" in line and "'cats'" in line and "'owls'" in line for line in lines)
    assert warn_imbalance([40, 40, 20], names) == []


# ----------------------------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training images with one class cut to 6 of 60, and a balanced held-out folder."""
    from edgetl.data.demo import write_demo_data

    root = tmp_path_factory.mktemp("unbalanced")
    classes = ("circles", "squares", "triangles")
    write_demo_data(root / "train", classes=classes, per_class=60, seed=0, size_range=(40, 96))
    for extra in sorted((root / "train" / "triangles").iterdir())[6:]:
        extra.unlink()
    write_demo_data(root / "holdout", classes=classes, per_class=30, seed=5, size_range=(40, 96))
    return {"train": root / "train", "holdout": root / "holdout"}


def _recall(run: Path, folder: Path, cls: str) -> float:
    from edgetl.evaluate import evaluate
    from edgetl.runtime import open_model

    return evaluate(open_model(run), data=folder)["per_class"][cls]["recall"]


def test_minority_recall_improves_with_class_weights(unbalanced: dict[str, Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    runs = {}
    for mode in ("none", None):  # None: the default, on because triangles are 10x fewer
        out = tmp_path / f"run-{mode}"
        with caplog.at_level(logging.INFO, logger="edgetl"):
            train(TrainConfig(data=str(unbalanced["train"]), class_weights=mode, epochs=15, lr=3e-3,
                              val_split=0.1, test_split=0.0, output=str(out), **COMMON))
        runs[mode] = out
    manifest = json.loads((runs[None] / "manifest.json").read_text())
    assert manifest["class_weights"]["source"].startswith("auto (default")
    assert manifest["class_weights"]["weights"]["triangles"] > 5 * manifest["class_weights"]["weights"]["circles"]
    assert "fewer than 10 training images: triangles" in caplog.text
    plain, weighted = (_recall(runs[m], unbalanced["holdout"], "triangles") for m in ("none", None))
    assert weighted >= plain + 0.2, (plain, weighted)


class CrashAt(Reporter):
    """Simulates a crash right after an epoch's checkpoint."""

    def __init__(self, stage: str, epoch: int) -> None:
        self.stage, self.at = stage, epoch

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict) -> None:
        if stage == self.stage and epoch == self.at:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def smoothed_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Label smoothing, TensorBoard and fine-tuning, interrupted in the head stage and resumed."""
    from edgetl.train import resume, train
    from edgetl.train.config import TrainConfig

    out = tmp_path_factory.mktemp("smooth") / "run"
    cfg = TrainConfig(data=str(demo_dir), label_smoothing=0.3, tensorboard=True, epochs=12, patience=12, lr=3e-3,
                      fine_tune_layers="3", fine_tune_epochs=2, output=str(out), **COMMON)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, CrashAt("head", 3))
    resume(out)
    return out


def test_label_smoothing_keeps_the_loss_above_the_smoothed_entropy(smoothed_run: Path) -> None:
    manifest = json.loads((smoothed_run / "manifest.json").read_text())
    assert manifest["config"]["label_smoothing"] == 0.3 and manifest["config"]["tensorboard"] is True
    # 4 classes, smoothing 0.3: targets 0.775 / 0.075; no prediction brings the loss under their entropy.
    k, eps = 4, 0.3
    hi, lo = 1 - eps + eps / k, eps / k
    floor = -(hi * math.log(hi) + (k - 1) * lo * math.log(lo))
    losses = [float(r["loss"]) for r in _history(smoothed_run)]
    assert len(losses) == 14 and min(losses) >= floor - 1e-3


def _scalar_tags(folder: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for events in folder.glob("**/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(v.tag for v in event.summary.value)
    return tags


def test_tensorboard_logs_for_both_stages(smoothed_run: Path) -> None:
    logs = smoothed_run / "logs"
    assert "epoch_loss" in _scalar_tags(logs / "head" / "train")  # the head on cached features
    assert "epoch_loss" in _scalar_tags(logs / "head" / "validation")
    assert "epoch_accuracy" in _scalar_tags(logs / "fine_tune" / "train")


def test_the_model_card_and_its_export_copy(smoothed_run: Path, tmp_path: Path) -> None:
    from edgetl.export import export_run

    card = (smoothed_run / "README.md").read_text()
    for needed in ("mobilenet_v2 alpha 0.35", "## Data", "| `circles` |", "label_smoothing | 0.3000",
                   "balanced accuracy", "Recall per class", "RGB images, 48x48", "Not exported yet", "edgetl 0.1.0"):
        assert needed in card, needed
    out = tmp_path / "export"
    report = export_run(smoothed_run, formats=("tflite",), quantize=("none",), output=out, force=True)
    copied = (out / "README.md").read_text()
    name = Path(report.rows[0].path).name
    assert f"| `{name}` | tflite | none |" in copied and "| ok |" in copied
    assert name in (smoothed_run / "README.md").read_text()  # the run's own card now names its export


def test_recipe_keys_and_cli_options(demo_dir: Path, tmp_path: Path) -> None:
    from edgetl.cli import main
    from edgetl.train.config import TrainConfig, load_recipe, merge

    weights = tmp_path / "weights.yaml"
    weights.write_text("circles: 2\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"class-weights: {weights}\nlabel_smoothing: 0.1\ntensorboard: true\n")
    cfg = merge(TrainConfig, load_recipe(recipe), {})
    assert (cfg.class_weights, cfg.label_smoothing, cfg.tensorboard) == (str(weights), 0.1, True)
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    for option in ("--class-weights", "--label-smoothing", "--tensorboard", "kerashub:"):
        assert option in help_text, option
    bad = CliRunner().invoke(main, ["train", str(demo_dir), "--label-smoothing", "1.5", "--output",
                                    str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--label-smoothing 1.5" in bad.output
    bad = CliRunner().invoke(main, ["train", str(demo_dir), "--class-weights", "often", "--output",
                                    str(tmp_path / "x")])
    assert bad.exit_code == 2 and "auto, none" in bad.output


def test_evaluate_gates_on_balanced_accuracy(trained_run: Path) -> None:
    from edgetl.cli import main
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    # The balanced accuracy measured here: the mean over classes of the Keras model's recall on the test split.
    run = load_run(trained_run)
    test = run.splits().test
    x = load_images(run.splits().root, test, (run.image_size, run.image_size))
    y = np.array([run.class_names.index(Path(it.path).parent.name) for it in test])
    pred = np.asarray(run.load_model()(x.astype("float32"), training=False)).argmax(1)
    balanced = float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))
    assert 0.25 < balanced < 1.0, balanced  # neither chance nor perfect: both sides of the gate below can happen

    ok = CliRunner().invoke(main, ["evaluate", str(trained_run), "--min-balanced-accuracy", str(balanced - 1e-6),
                                   "--json"])
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)
    assert result["balanced_accuracy"] == pytest.approx(balanced, abs=1e-4) and "macro_f1" in result
    fail = CliRunner().invoke(main, ["evaluate", str(trained_run), "--min-balanced-accuracy", str(balanced + 0.01)])
    assert fail.exit_code == 1 and "balanced accuracy" in fail.output


def test_backbones_says_how_presets_are_named() -> None:
    from edgetl.cli import main

    out = CliRunner().invoke(main, ["backbones"]).output
    assert "kerashub:" in out and "kaggle://" in out and "hf://" in out and "save_to_preset" in out

