"""Training: the run directory contract, the fast path, transfer, backbones of every kind."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgetl.core.errors import ModelError
from edgetl.train import train
from edgetl.train.config import TrainConfig


def small_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(data=str(data), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=48, epochs=15,
                batch_size=16, lr=3e-3, seed=0, output=str(out))
    base.update(kw)
    return TrainConfig(**base)


def test_run_directory_is_complete(trained_run: Path) -> None:
    for name in ("model.keras", "labels.txt", "manifest.json", "history.csv", "metrics.json",
                 "learning_curves.png", "confusion_matrix.png"):
        assert (trained_run / name).is_file(), name
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["class_names"] == (trained_run / "labels.txt").read_text().split()
    assert manifest["input"]["image_size"] == [48, 48] and manifest["input"]["pixel_range"] == [0, 255]
    assert manifest["backbone"]["card"]["constructor"] == "MobileNetV2"
    assert {"edgetl", "tensorflow", "keras"} <= set(manifest["versions"])
    assert manifest["config"]["epochs"] == 15 and manifest["training"]["feature_cache"] is True
    data = manifest["data"]
    paths = [p for split in ("train", "val", "test") for p, _ in data[split]]
    assert len(paths) == len(set(paths)) and data["train"] and data["val"] and data["test"]
    with open(trained_run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == manifest["training"]["epochs_run"]["head"] >= 1
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("val", "test"):
        m = metrics[split]
        assert len(m["confusion_matrix"]) == 4 and set(m["per_class"]) == set(manifest["class_names"])
        assert sum(map(sum, m["confusion_matrix"])) == len(data[split])
    for png in ("learning_curves.png", "confusion_matrix.png"):
        with Image.open(trained_run / png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_confusion_plot_of_many_classes_stays_a_bounded_image(tmp_path: Path) -> None:
    """A run of 150 classes gets a readable-size PNG (its drawing took 860 MB at 100 classes when it grew with n)."""
    from edgetl.core.plots import CONFUSION_MAX_INCHES, plot_confusion

    sizes = {}
    for n in (4, 30, 150):
        cm = np.random.default_rng(n).integers(0, 5, (n, n))
        plot_confusion(cm, [f"class_{i:03d}" for i in range(n)], tmp_path / f"cm{n}.png")
        with Image.open(tmp_path / f"cm{n}.png") as im:
            sizes[n] = im.size
    assert sizes[4][0] < sizes[30][0]  # a few classes: a small picture, as before
    limit = (CONFUSION_MAX_INCHES + 2) * 110  # the figure, the colour bar and the names, at 110 dpi
    assert max(sizes[150]) <= limit and max(sizes[30]) <= limit, sizes


def test_manifest_image_lists_leave_memory_while_training_and_come_back_the_same(demo_dir: Path,
                                                                                  tmp_path: Path) -> None:
    from edgetl.core.fileio import write_json
    from edgetl.data.scan import scan_folder
    from edgetl.train.job import _file_stats, compact_image_lists

    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    manifest = {"data": {**splits.to_manifest(), "detail": {"x": 1}}, "data_files": _file_stats(splits), "z": 2}
    before = json.dumps(manifest, indent=2)
    restore = compact_image_lists(manifest, splits)
    assert not {"train", "val", "test"} & set(manifest["data"]) and manifest["data_files"] is None
    assert manifest["data"]["fingerprint"] and manifest["data"]["detail"] == {"x": 1}
    restore()
    write_json(tmp_path / "manifest.json", manifest)  # the lists come back as rows written one by one
    assert (tmp_path / "manifest.json").read_text() == before + "\n"  # same keys, same order, same values
    assert [list(r) for r in manifest["data"]["val"]] == [[it.path, it.label] for it in splits.val]
    # A list that is not the splits' (an older run's manifest read back) stays where it is.
    other = {"data": {**splits.to_manifest(), "val": [["elsewhere.jpg", 0]]}, "data_files": {"a.jpg": [1, 2]}}
    restore = compact_image_lists(other, splits)
    assert other["data"]["val"] == [["elsewhere.jpg", 0]] and other["data_files"] == {"a.jpg": [1, 2]}
    assert "train" not in other["data"]
    restore()
    assert list(other["data"]["train"]) == splits.to_manifest()["train"] and list(other["data"])[3] == "train"


def test_write_json_writes_what_json_dump_writes_with_rows_streamed(tmp_path: Path) -> None:
    from edgetl.core.fileio import Streamed, write_json

    values = {"a": 1, "b": [1, 2.5, None, True, 'x\u00e9"q'], "c": {}, "d": [], "e": {"n": {"m": [[1, 2], []]}},
              3: "an int key", "f": float("nan"), "g": np.float32(0.5), "h": np.arange(3), "p": Path("/x/y")}
    for obj in (values, [], {}, "s", 5, [{"k": [1]}]):
        write_json(tmp_path / "a.json", obj)
        expected = json.dumps(obj, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x))
        assert (tmp_path / "a.json").read_text() == expected + "\n"
    streamed = {"rows": Streamed(3, lambda: ([f"p{i}", i] for i in range(3))), "none": Streamed(0, list),
                "files": Streamed(2, lambda: ((f"p{i}", [i, i]) for i in range(2)), pairs=True)}
    write_json(tmp_path / "s.json", streamed)
    plain = {"rows": [[f"p{i}", i] for i in range(3)], "none": [], "files": {f"p{i}": [i, i] for i in range(2)}}
    assert (tmp_path / "s.json").read_text() == json.dumps(plain, indent=2) + "\n"
    with pytest.raises(TypeError):  # anything else that serialises it fails loudly, never writes it empty
        json.dumps(streamed)


def test_model_takes_raw_pixels_and_learns(trained_run: Path) -> None:
    from edgetl.data import load_images
    from edgetl.model.classifier import load_model
    from edgetl.rundir import load_run

    run = load_run(trained_run)
    model = load_model(str(run.model_path))  # safe mode: no custom code needed
    splits = run.splits()
    items = splits.val + splits.test
    images = load_images(splits.root, items, (48, 48))
    probs = model.predict(images.astype("float32"), verbose=0)
    assert probs.shape == (len(items), 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    accuracy = float((probs.argmax(1) == np.array([i.label for i in items])).mean())
    assert accuracy >= 0.6, f"4 classes, chance is 0.25; got {accuracy}"
    recorded = json.loads((trained_run / "metrics.json").read_text())
    n_val = len(splits.val)
    assert abs(float((probs[:n_val].argmax(1) == [i.label for i in splits.val]).mean())
               - recorded["val"]["accuracy"]) < 1e-6


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_preprocessing_layers_match_keras_applications(mode: str) -> None:
    import keras

    from edgetl.model.classifier import preprocessing_layers

    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    y = x
    for layer in preprocessing_layers(mode):
        y = layer(y)
    expected = keras.applications.imagenet_utils.preprocess_input(x.copy(), mode=mode)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-4)


def test_feature_cache_matches_training_through_the_base(demo_dir: Path, trained_run: Path, tmp_path: Path) -> None:
    cached = json.loads((trained_run / "metrics.json").read_text())
    plain = train(small_cfg(demo_dir, tmp_path / "plain", feature_cache="off"))
    assert plain.feature_cache is False
    for split in ("val", "test"):
        assert abs(plain.metrics[split]["accuracy"] - cached[split]["accuracy"]) <= 0.15, split


def test_pretrained_base_beats_random_initialisation(demo_dir: Path, trained_run: Path, tmp_path: Path) -> None:
    pretrained = json.loads((trained_run / "metrics.json").read_text())
    scratch = train(small_cfg(demo_dir, tmp_path / "scratch", weights="none"))
    pre = (pretrained["val"]["accuracy"] + pretrained["test"]["accuracy"]) / 2
    rnd = (scratch.metrics["val"]["accuracy"] + scratch.metrics["test"]["accuracy"]) / 2
    assert pre >= rnd + 0.15, (pre, rnd)


def test_fine_tuning_unfreezes_top_layers_but_not_batchnorm(demo_dir: Path, tmp_path: Path) -> None:
    import keras

    from edgetl.model.classifier import unfreeze_top

    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(32, 32, 3),
                                          pooling="avg")
    assert unfreeze_top(base, "3") == 3
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert len(trainable) == 3
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    result = train(small_cfg(demo_dir, tmp_path / "ft", epochs=2, fine_tune_layers="4", fine_tune_epochs=2,
                             image_size=32))
    with open(result.run_dir / "history.csv") as f:
        stages = [r["stage"] for r in csv.DictReader(f)]
    assert stages.count("fine_tune") == result.epochs_run["fine_tune"] >= 1
    assert stages[0] == "head"


def test_hub_savedmodel_backbone(demo_dir: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    class Features(tf.Module):
        """A stand-in for a TF-Hub feature-vector module: images in [0, 1] -> 16 features."""

        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 16), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.nn.relu(tf.nn.conv2d(x, self.kernel, 2, "SAME"))
            return {"feature_vector": tf.reduce_mean(y, axis=[1, 2])}

    module = Features()
    hub_dir = tmp_path / "hub_module"
    tf.saved_model.save(module, str(hub_dir), signatures={"serving_default": module.__call__})
    result = train(small_cfg(demo_dir, tmp_path / "hubrun", backbone=f"hub:{hub_dir}", alpha=None, weights="none",
                             image_size=32, epochs=3))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["backbone"]["kind"] == "hub" and manifest["input"]["preprocessing"] == "unit"
    assert manifest["backbone"]["feature_dim"] == 16
    from edgetl.rundir import load_run

    with pytest.raises(ModelError, match="--unsafe"):
        load_run(result.run_dir).load_model()  # safe mode refuses to run a SavedModel graph unasked
    model = load_run(result.run_dir).load_model(safe_mode=False)
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 4)


def test_user_keras_file_as_backbone(demo_dir: Path, tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    own = keras.Model(inputs, x)
    path = tmp_path / "mine.keras"
    own.save(path)
    result = train(small_cfg(demo_dir, tmp_path / "own", backbone=str(path), alpha=None, weights="none",
                             image_size=32, epochs=2))
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["backbone"]["kind"] == "file" and manifest["backbone"]["feature_dim"] == 8


def test_imagenet_download_failure_names_the_offline_way(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras.src.utils.file_utils as file_utils

    from edgetl.model.backbones import build_base, resolve_backbone

    def offline(*args: object, **kwargs: object) -> None:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ModelError, match=r"--weights PATH.*\.keras"):
        build_base(resolve_backbone("mobilenet_v2"), weights="imagenet", alpha=0.35, image_size=32)


def test_weights_file_of_another_backbone_is_refused(tmp_path: Path) -> None:
    from edgetl.model.backbones import build_base, bundled_weights_path, resolve_backbone

    spec = resolve_backbone("mobilenet_v2")
    path = bundled_weights_path(spec, 0.35)
    with pytest.raises(ModelError, match="cannot load weights"):
        build_base(spec, weights=str(path), alpha=1.0, image_size=32)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0", "densenet121"])
def test_cards_match_the_models_keras_builds(name: str) -> None:
    from edgetl.model.backbones import build_base, resolve_backbone

    spec = resolve_backbone(name)
    base = build_base(spec, weights="none", alpha=None, image_size=spec.card.min_size * 2)
    assert base.count_params() == spec.card.params
    assert base.output_shape[-1] == spec.card.features


def test_feature_pass_batch_follows_the_device() -> None:
    # Large batches are slower per image on a CPU (BENCHMARKS.md) and faster on a GPU.
    from types import SimpleNamespace

    from edgetl.train.passinput import extract_batch_size

    cpu = SimpleNamespace(devices=["CPU"])
    gpus = SimpleNamespace(devices=["/job:localhost/replica:0/task:0/device:GPU:0", "/device:GPU:1"])
    assert extract_batch_size(128, cpu) == 32
    assert extract_batch_size(8, cpu) == 8
    assert extract_batch_size(32, gpus) == 64
    assert extract_batch_size(256, gpus) == 256


def test_the_head_on_cached_features_reports_every_step_of_every_epoch(tmp_path: Path) -> None:
    """The head runs several steps per call (fit.HEAD_STEPS_PER_EXECUTION): the progress still counts each step,
    every epoch ends at its step count, and the history has a row per epoch."""
    import keras
    import numpy as np

    from edgetl.core.progress import Reporter
    from edgetl.train.checkpoint import Checkpoints
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import place
    from edgetl.train.fit import HEAD_STEPS_PER_EXECUTION, fit_stage
    from edgetl.train.history import History

    class Steps(Reporter):
        def __init__(self) -> None:
            self.totals: list[int | None] = []
            self.counts: list[int] = []

        def start(self, task: str, total: int | None) -> None:
            self.totals.append(total)
            self.counts.append(0)

        def advance(self, units: int = 1) -> None:
            self.counts[-1] += units

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150).astype(np.int32)
    x = (np.eye(3, 16)[y] + rng.normal(0, 0.5, (150, 16))).astype(np.float32)
    batch = 8
    steps = -(-100 // batch)  # 13: not a multiple of the steps per call
    assert steps % HEAD_STEPS_PER_EXECUTION
    reporter = Steps()
    cfg = TrainConfig(data=".", batch_size=batch, patience=5, seed=0)
    history = History(tmp_path / "history.csv")
    keras.utils.set_random_seed(0)
    head = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3, activation="softmax")])
    epochs = fit_stage(head, (x[:100], y[:100]), (x[100:], y[100:]), cfg, 1e-2, 3, "head", history, reporter,
                       place("default", "off"), Checkpoints(tmp_path), None)
    assert epochs == 3 and len(history.rows) == 3
    assert reporter.totals == [steps] * 3 and reporter.counts == [steps] * 3


def test_run_records_where_its_wall_time_went(trained_run: Path) -> None:
    """training.seconds: every part of the run, contiguous, so together they are its total (edgetl.train.walltime)."""
    from edgetl.train.walltime import PARTS

    seconds = json.loads((trained_run / "manifest.json").read_text())["training"]["seconds"]
    parts = {k: seconds[k] for k in PARTS if k in seconds}
    assert set(parts) == set(PARTS) - {"fine_tune"}, seconds  # no second stage in this run
    assert min(parts.values()) >= 0 and parts["features"] > 0 and parts["head"] > 0
    assert abs(sum(parts.values()) - seconds["total"]) <= 0.01 * len(parts), seconds  # rounding only
    inner = sum(v for k, v in seconds.items() if k.startswith("features_"))
    assert abs(inner - seconds["features"]) <= 0.1, seconds
    # The process (pytest here) started before train() did.
    assert seconds["start"] > 0 and abs(seconds["wall"] - seconds["start"] - seconds["total"]) <= 0.011


def test_process_age_reads_the_process_start_from_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """process_age(): /proc/uptime minus field 22 of /proc/self/stat in clock ticks, the name field may hold
    spaces and parentheses; None where /proc is missing or unreadable (no clock is read)."""
    import builtins
    import io
    import os

    from edgetl.train import walltime

    fields = ["S"] + [str(i) for i in range(4, 22)] + ["123456"] + ["0"] * 30  # field 22: start, in ticks
    stat = "4242 (py (thon) x) " + " ".join(fields) + "\n"
    files = {"/proc/self/stat": stat, "/proc/uptime": "2000.50 3000.00\n"}
    real_open = builtins.open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) in files:
            return io.StringIO(files[str(path)])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    tck = os.sysconf("SC_CLK_TCK")
    assert walltime.process_age() == pytest.approx(2000.5 - 123456 / tck)
    files["/proc/uptime"] = "1.00 1.00\n"  # started "after" the uptime: nonsense, so unknown
    assert walltime.process_age() is None
    files["/proc/self/stat"] = "4242 (x) S 1 2"  # too few fields
    assert walltime.process_age() is None
    del files["/proc/self/stat"]
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: (_ for _ in ()).throw(FileNotFoundError(path)))
    assert walltime.process_age() is None


def test_a_child_process_is_younger_than_its_parent() -> None:
    """On the real /proc: a process started by this one, asked first, is no older than this one asked after."""
    import subprocess
    import sys

    from edgetl.train.walltime import process_age

    code = "from edgetl.train.walltime import process_age; print(process_age())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    child, parent = float(out), process_age()
    assert parent is not None and 0 <= child <= parent, (child, parent)
