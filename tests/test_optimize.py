"""edgetl optimize: QAT and pruning through tf_keras/tfmot, on tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main


def _cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def qat_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("opt") / "qat"
    res = _cli("optimize", str(trained_run), "--method", "qat", "--epochs", "1", "--batch-size", "16",
               "--no-compare", "--output", str(out))
    assert res.exit_code == 0, res.output
    assert "qat run written to" in res.output
    return out


@pytest.mark.parametrize("args, needle", [
    (["--method", "qat", "--epochs", "0"], "--epochs 0 is out of range"),
    (["--method", "prune", "--sparsity", "1.5"], "--sparsity 1.5 is out of range"),
    (["--method", "qat", "--lr", "-1"], "--lr -1.0 is out of range"),
    (["--method", "prune", "--block", "0"], "--block 0 is out of range"),
])
def test_bad_options_one_line_exit_2(trained_run: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    res = _cli("optimize", str(trained_run), *args, "--output", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert needle in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_not_a_run_exit_2(tmp_path: Path) -> None:
    res = _cli("optimize", str(tmp_path), "--method", "qat", "--output", str(tmp_path / "o"))
    assert res.exit_code == 2
    assert "not an edgetl run directory" in res.output


def test_weight_copy_twin_matches(trained_run: Path) -> None:
    from edgetl.optimize import build_twin, load_tfmot, max_output_diff, probe_images
    from edgetl.rundir import load_run

    run = load_run(trained_run)
    model3 = run.load_model()
    tfk, _ = load_tfmot()
    twin = build_twin(run, model3, tfk)
    assert max_output_diff(model3, twin, probe_images(run.splits(), run.image_size)) < 1e-5
    # tfmot's import must not leave Keras 2 switched on for the rest of the process.
    assert os.environ.get("TF_USE_LEGACY_KERAS") is None


def test_qat_run_is_a_run(qat_run: Path, trained_run: Path) -> None:
    from edgetl.rundir import load_run

    run = load_run(qat_run)
    m = run.manifest
    assert m["status"] == "complete"
    assert m["parent"]["run"] == str(trained_run.resolve())
    assert m["parent"]["method"] == "qat"
    assert m["optimize"]["saved_model"] == "qat_saved_model"
    assert (qat_run / "qat_saved_model" / "saved_model.pb").is_file()
    for name in ("labels.txt", "metrics.json", "history.csv", "optimize_report.json"):
        assert (qat_run / name).is_file(), name
    model = run.load_model(safe_mode=True)
    assert model.output_shape[-1] == len(run.class_names)
    assert m["optimize"]["qat_metrics"]["accuracy"] >= 0.5


def test_qat_run_exports_int8_with_learned_ranges(qat_run: Path, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.data import load_images
    from edgetl.optimize import qat_tflite
    from edgetl.rundir import load_run

    run = load_run(qat_run)
    data = qat_tflite(run, "int8-full", io_type="uint8")
    path = tmp_path / "qat.tflite"
    path.write_bytes(data)
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    # The input range learned in training is 0..255: uint8 pixels go in unchanged.
    assert abs(inp["quantization"][0] - 1.0) < 0.01 and inp["quantization"][1] == 0
    splits = run.splits()
    items = splits.test or splits.val
    x = load_images(splits.root, items, (run.image_size, run.image_size))
    y = np.array([i.label for i in items])
    preds = []
    for img in x:
        it.set_tensor(inp["index"], img[None])
        it.invoke()
        preds.append(int(it.get_tensor(out["index"])[0].argmax()))
    acc = float((np.array(preds) == y).mean())
    assert acc >= run.manifest["metrics"]["test"] - 0.15


def test_keras3_still_works_after_optimize(qat_run: Path) -> None:
    import keras
    import tensorflow as tf

    assert os.environ.get("TF_USE_LEGACY_KERAS") is None
    assert keras.__version__.startswith("3.")
    assert tf.keras.version().startswith("3.")
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(np.zeros((4, 4), "float32"), np.array([0, 1, 0, 1]), epochs=1, verbose=0)


def test_prune_reaches_sparsity_in_blocks(trained_run: Path, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export import export_run
    from edgetl.optimize import gzip_size, kernel_sparsity, mixed_block_runs, optimize_run
    from edgetl.rundir import load_run

    res = optimize_run(trained_run, method="prune", epochs=2, sparsity=0.5, block=4, batch_size=16,
                       output=tmp_path / "pruned")
    run = load_run(res.run_dir)
    assert run.manifest["parent"]["options"]["sparsity"] == 0.5
    assert run.manifest["parent"]["options"]["block"] == run.manifest["optimize"]["block"] == 4
    model = run.load_model()
    assert kernel_sparsity(model) >= 0.49
    assert res.sparsity >= 0.49
    report = json.loads((res.run_dir / "optimize_report.json").read_text())
    assert report["method"] == "prune"
    # 1x1 convolutions came back from their Dense stand-ins as Conv2D, zeroed in blocks of 4 inputs.
    pointwise = [lay for lay in model._flatten_layers() if lay.__class__.__name__ == "Conv2D"
                 and lay.kernel.shape[:2] == (1, 1) and lay.kernel.shape[2] > 1]
    assert len(pointwise) > 10
    for lay in pointwise:
        k = np.asarray(lay.kernel)[0, 0]
        assert (k == 0).mean() >= 0.45, lay.name
        assert mixed_block_runs(k, 4)[0] == 0, lay.name

    # Exported, the float file keeps the zeros, opens in LiteRT and ONNX Runtime, and gzips smaller.
    rep = export_run(res.run_dir, formats=("tflite", "onnx"), quantize=("none",), output=tmp_path / "x",
                     verify=True)
    assert sorted(r["format"] for r in rep.rows) == ["onnx", "tflite"]
    assert all(r["status"] == "ok" for r in rep.rows), rep.rows
    tfl = next(Path(r["path"]) for r in rep.rows if r["format"] == "tflite")
    parent = export_run(trained_run, formats=("tflite",), quantize=("none",), output=tmp_path / "p", verify=False)
    assert gzip_size(tfl) < 0.75 * gzip_size(parent.rows[0]["path"])
    it = Interpreter(model_path=str(tfl))
    it.allocate_tensors()
    zeros = [float((it.get_tensor(d["index"]) == 0).mean()) for d in it.get_tensor_details()
             if len(d["shape"]) == 4 and d["shape"][1] == 1 and d["shape"][2] == 1 and d["shape"][3] > 1
             and d["dtype"] == np.float32 and _is_constant(it, d)]
    assert len(zeros) >= len(pointwise) and min(zeros) >= 0.45


def _is_constant(it: object, d: dict) -> bool:
    try:
        it.get_tensor(d["index"])  # type: ignore[attr-defined]
    except ValueError:
        return False
    return "serving" not in d["name"]


def test_prune_block_stand_ins_are_the_same_function() -> None:
    """Block pruning trains 1x1 convolutions as Dense layers: same outputs, and copied back as Conv2D."""
    from edgetl.optimize import copy_weights, kernel_sparsity, load_tfmot, mixed_block_runs, prune_for_training

    tfk, tfmot = load_tfmot()
    L = tfk.layers
    inputs = tfk.Input((8, 8, 3))
    x = L.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = L.Conv2D(24, 1, activation="relu")(x)  # pointwise: becomes a Dense stand-in
    x = L.Conv2D(10, 1, strides=2, use_bias=False)(x)  # strided: stays a Conv2D; 10 outputs: a short last block next
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.SeparableConv2D(8, 3, padding="same")(x)  # Xception's: pointwise weights pruned element-wise
    x = L.Conv2D(12, 1)(x)
    x = L.GlobalAveragePooling2D()(x)
    model = tfk.Model(inputs, L.Dense(3, activation="softmax")(x))
    xs = np.random.RandomState(0).uniform(-1, 1, (6, 8, 8, 3)).astype("float32")
    ys = np.array([0, 1, 2, 0, 1, 2])
    before = np.asarray(model(xs))

    pruned = prune_for_training(model, tfk, tfmot, sparsity=0.5, schedule="constant", end_step=1, block=4)
    inner = [getattr(lay, "layer", lay).__class__.__name__ for lay in pruned.layers]
    assert inner.count("Dense") == 3 and inner.count("Conv2D") == 2 and inner.count("SeparableConv2D") == 1
    np.testing.assert_allclose(np.asarray(pruned(xs)), before, atol=1e-5)

    pruned.compile(optimizer=tfk.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    pruned.fit(xs, ys, epochs=2, batch_size=3, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    copy_weights(stripped, model)
    np.testing.assert_allclose(np.asarray(model(xs)), np.asarray(stripped(xs)), atol=1e-5)
    pw = [lay for lay in model.layers if lay.__class__.__name__ == "Conv2D" and lay.kernel.shape[0] == 1
          and lay.strides == (1, 1)]
    assert len(pw) == 2
    for lay in pw:
        k = np.asarray(lay.kernel)[0, 0]
        assert abs((k == 0).mean() - 0.5) < 0.1 and mixed_block_runs(k, 4)[0] == 0
    strided = next(lay for lay in model.layers if lay.__class__.__name__ == "Conv2D" and lay.strides == (2, 2))
    assert abs((np.asarray(strided.kernel) == 0).mean() - 0.5) < 0.1
    sep = next(lay for lay in model.layers if lay.__class__.__name__ == "SeparableConv2D")
    assert abs((np.asarray(sep.pointwise_kernel) == 0).mean() - 0.5) < 0.1
    assert (np.asarray(sep.depthwise_kernel) != 0).all()
    assert abs(kernel_sparsity(model) - 0.5) < 0.05


@pytest.mark.parametrize("ctor, kwargs", [
    ("EfficientNetB0", {}),  # Rescaling + Normalization inside the base
    ("MobileNetV3Small", {"alpha": 0.75}),  # hard-swish as TFOpLambda add/multiply
])
def test_qat_and_prune_other_families(ctor: str, kwargs: dict) -> None:
    from edgetl.optimize import copy_weights, load_tfmot, prune_for_training, quantize_for_training

    tfk, tfmot = load_tfmot()
    inputs = tfk.Input((32, 32, 3), name="image")
    base = getattr(tfk.applications, ctor)(include_top=False, weights=None, input_tensor=inputs, pooling="avg",
                                            **kwargs)
    model = tfk.Model(inputs, tfk.layers.Dense(3, activation="softmax", name="predictions")(base.output))
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 2, 0])
    qat = quantize_for_training(model, tfk, tfmot)
    qat.compile(optimizer=tfk.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(np.asarray(qat(x))).all()
    for block in (1, 4):  # 4: 1x1 convolutions (SE blocks, expand/project) train as Dense stand-ins
        pruned = prune_for_training(model, tfk, tfmot, sparsity=0.5, schedule="constant", end_step=1, block=block)
        np.testing.assert_allclose(np.asarray(pruned(x)), np.asarray(model(x)), atol=1e-5)
        pruned.compile(optimizer=tfk.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        pruned.fit(x, y, epochs=1, batch_size=4, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
        copy_weights(tfmot.sparsity.keras.strip_pruning(pruned), model)
    assert os.environ.get("TF_USE_LEGACY_KERAS") is None


def _learned_ranges(saved_model: Path) -> dict[str, tuple[float, float]]:
    """Every (min, max) pair of the fake-quantization variables in a QAT SavedModel, by their common prefix."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model))
    values = {v.name.split(":")[0]: float(v.numpy()) for v in loaded.variables
              if v.shape.rank == 0 and v.name.split(":")[0].endswith(("_min", "_max"))}
    return {k[:-4]: (values[k], values[k[:-4] + "_max"]) for k in values
            if k.endswith("_min") and k[:-4] + "_max" in values}


def _activation_scales(path: Path) -> list[float]:
    """The scales of the per-tensor quantized int8 tensors of a .tflite file, read from the file by LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return [float(d["quantization_parameters"]["scales"][0]) for d in it.get_tensor_details()
            if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1]


def test_edgetl_export_uses_the_qat_ranges(qat_run: Path, trained_run: Path, tmp_path: Path) -> None:
    """The scales of the QAT int8-full file's activations are the ranges the quantize wrappers learned in training,
    (max - min) / 255, read from the file by LiteRT; a post-training int8-full file of the float run (calibrated
    ranges) mostly does not have them. Measured: 66 of 67 learned ranges in the QAT file, 10 of 67 in the other
    (ReLU6's 0..6 and the like, which calibration finds too)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export import export_run
    from edgetl.export.metadata import read_tflite_metadata

    res = CliRunner().invoke(main, ["export", str(qat_run), "-q", "int8-full", "-o", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    files = list((tmp_path / "x").glob("*int8-full*.tflite"))
    assert len(files) == 1
    assert read_tflite_metadata(files[0])["qat"] is True
    ranges = _learned_ranges(qat_run / "qat_saved_model")
    learned = [(hi - lo) / 255 for lo, hi in ranges.values() if hi - lo > 1e-6]
    ptq = export_run(trained_run, quantize=("int8-full",), output=tmp_path / "ptq", verify=False,
                     calibration_samples=16)

    def found(path: Path) -> float:
        scales = np.array(_activation_scales(path))
        return float(np.mean([np.any(np.abs(scales - s) <= 1e-4 * s) for s in learned]))

    in_qat, in_ptq = found(files[0]), found(Path(ptq.rows[0]["path"]))
    assert len(learned) >= 20, ranges
    assert in_qat >= 0.9 and in_ptq <= 0.5, (in_qat, in_ptq)
    # Unlike other int8-full files, a QAT one keeps a free batch (the README says why).
    inp = Interpreter(model_path=str(files[0])).get_input_details()[0]
    assert inp["shape_signature"][0] == -1 and inp["dtype"] == np.uint8


def test_qat_separable_conv_and_standalone_batchnorm() -> None:
    """Xception's SeparableConv2D (tfmot splits it) and pre-activation BN (ResNet50V2, DenseNet), in miniature."""
    from edgetl.optimize import init_ranges, load_tfmot, qat_weights_to_twin, quantize_for_training

    tfk, tfmot = load_tfmot()
    L = tfk.layers
    inputs = tfk.Input((16, 16, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = L.BatchNormalization(name="preact_bn")(L.Add(name="add")([x, x]))  # BN after Add: no conv to fold into
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep")(L.ReLU(name="relu")(x))
    x = L.BatchNormalization(name="sep_bn")(x)
    outputs = L.Dense(3, activation="softmax", name="predictions")(L.GlobalAveragePooling2D(name="pool")(x))
    model = tfk.Model(inputs, outputs)
    qat = quantize_for_training(model, tfk, tfmot)
    xs = np.random.RandomState(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    init_ranges(qat, model, xs)
    # The depthwise half tfmot split off has no namesake in the model; its range is set all the same.
    split = [w for w in qat.layers if getattr(w, "layer", None).__class__.__name__ == "DepthwiseConv2D"]
    assert len(split) == 1
    maxima = [float(v.numpy()) for v in split[0].weights if v.name.endswith(("activation_max:0", "output_max:0"))]
    assert maxima and 6.0 not in maxima
    qat.compile(optimizer=tfk.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    qat.fit(xs, np.array([0, 1, 2, 0]), epochs=1, batch_size=4, verbose=0)
    before = [w.copy() for w in model.get_layer("sep").get_weights()]
    qat_weights_to_twin(qat, model)  # the split SeparableConv2D's trained kernels come back
    after = model.get_layer("sep").get_weights()
    assert [w.shape for w in after] == [w.shape for w in before]
    assert not np.allclose(after[0], before[0]) and not np.allclose(after[1], before[1])
    assert os.environ.get("TF_USE_LEGACY_KERAS") is None


def test_compare_measures_every_file_against_the_float_one(qat_run: Path, trained_run: Path) -> None:
    """optimize --compare's table: each TFLite file measured on the same held-out images, drop from float."""
    from edgetl.optimize import compare_runs

    rows = compare_runs(trained_run, qat_run, threads=1)
    assert [r["name"] for r in rows] == ["float", "PTQ int8", "QAT int8"]
    flt = rows[0]
    assert flt["drop"] == 0.0 and flt["agreement"] == 1.0 and flt["gzip_ratio"] == 1.0
    assert len({r["samples"] for r in rows}) == 1 and flt["samples"] > 0
    for r in rows:
        assert Path(r["path"]).is_file() and r["latency_ms"] > 0, r
        assert r["drop"] == round(flt["accuracy"] - r["accuracy"], 4), r
        assert 0.0 <= r["agreement"] <= 1.0
    # int8 files are about a quarter of the float one.
    assert all(r["size_mb"] < 0.5 * flt["size_mb"] for r in rows[1:])
