"""The feature pass's engine: the cost model, and TFLite/XNNPACK features equal to TensorFlow's.

Real photos and real weights check the same on meaningful features in tests/test_realdata.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.train.engine import (
    CACHED_LOAD_SECONDS,
    CONVERT_OVER_TRACE,
    FEATURE_TOLERANCE,
    PAYBACK_MARGIN,
    TFLITE_SPEEDUP,
    decide,
    max_relative_diff,
)

SIZE = 48


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's converted bases in its own folder: none from earlier runs, none left in the user's cache."""
    folder = tmp_path / "engine-cache"
    monkeypatch.setenv("EDGETL_CACHE_DIR", str(folder))
    return folder


def test_cost_model_converts_only_when_the_images_pay_for_it() -> None:
    # At 10 ms per image and 2 CPU seconds of trace, conversion is estimated at 4 x 2 = 8 s; each image saves 5 ms.
    per_image, trace = 0.010, 2.0
    break_even = PAYBACK_MARGIN * CONVERT_OVER_TRACE * trace / (per_image * (1 - 1 / TFLITE_SPEEDUP))
    small = decide("auto", cpu_only=True, remaining=int(break_even * 0.8), seconds_per_image=per_image,
                   trace_cpu_seconds=trace)
    large = decide("auto", cpu_only=True, remaining=int(break_even * 1.2), seconds_per_image=per_image,
                   trace_cpu_seconds=trace)
    assert small.engine == "keras" and large.engine == "tflite"
    assert "images left" in large.reason and "conversion" in large.reason  # the log says why, with the figures
    many = dict(remaining=10**6, seconds_per_image=1.0, trace_cpu_seconds=0.1)
    assert decide("auto", cpu_only=False, **many).engine == "keras"
    assert decide("keras", cpu_only=True, **many).engine == "keras"
    forced = decide("tflite", cpu_only=True, remaining=1, seconds_per_image=1e-6, trace_cpu_seconds=100)
    assert forced.engine == "tflite"


def test_a_loaded_machine_does_not_inflate_the_conversion_estimate() -> None:
    """The issue's cold run at load 10: the trace took 3.0 s of wall time (its CPU time stays about 0.5 s); with
    936 images left at 44 ms each, TFLite saves about 20 s. Estimated from the wall time the conversion looked like
    18 s (6x) and the run kept TensorFlow for 44 s of base; estimated from the CPU time it is 2 s: TFLite."""
    from edgetl.train.engine import conversion_estimate

    loaded = decide("auto", cpu_only=True, remaining=936, seconds_per_image=0.044, trace_cpu_seconds=0.5)
    assert loaded.engine == "tflite", loaded.reason
    assert conversion_estimate(0.5) == pytest.approx(CONVERT_OVER_TRACE * 0.5)
    assert conversion_estimate(0.5) < 3.0
    # The same work on a quiet machine (6.7 ms an image) at 1,000 images still pays for the conversion...
    assert decide("auto", cpu_only=True, remaining=936, seconds_per_image=0.0067, trace_cpu_seconds=0.5).engine \
        == "tflite"
    # ...and at 200 images it does not: the choice follows the images left, not the load.
    assert decide("auto", cpu_only=True, remaining=200, seconds_per_image=0.0067, trace_cpu_seconds=0.5).engine \
        == "keras"


def test_the_pass_gives_the_cost_model_the_trace_s_cpu_seconds(classifier, demo_dir: Path,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The trace's CPU seconds reach the choice (and the record), whatever its wall seconds were."""
    from edgetl.core.progress import Reporter
    from edgetl.data.scan import scan_folder
    from edgetl.train import engine as engines
    from edgetl.train.distribute import place
    from edgetl.train.features import extract_features

    seen = {}
    original = engines.decide

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(engines, "decide", spy)
    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    record = {}
    extract_features(classifier, splits, ["train", "val"], SIZE, 16, Reporter(), place("default", "off"),
                     engine="auto", record=record)
    assert "trace_seconds" not in seen and seen["trace_cpu_seconds"] > 0
    assert record["trace_cpu_seconds"] == round(seen["trace_cpu_seconds"], 2)
    assert seen["trace_cpu_seconds"] <= record["seconds"]["trace"] + 0.05  # one thread's CPU within its wall time


def test_a_cached_conversion_is_charged_its_load_not_a_conversion() -> None:
    # 200 images at 10 ms save about 1 s: less than an 8 s conversion, more than loading the cached file.
    per_image, trace = 0.010, 2.0
    assert 200 * per_image * (1 - 1 / TFLITE_SPEEDUP) > PAYBACK_MARGIN * CACHED_LOAD_SECONDS
    cold = decide("auto", cpu_only=True, remaining=200, seconds_per_image=per_image, trace_cpu_seconds=trace)
    warm = decide("auto", cpu_only=True, remaining=200, seconds_per_image=per_image, trace_cpu_seconds=trace,
                  cached=True)
    assert cold.engine == "keras" and warm.engine == "tflite"
    assert "cached conversion" in warm.reason
    assert decide("auto", cpu_only=False, remaining=10**6, seconds_per_image=1.0, trace_cpu_seconds=0.1,
                  cached=True).engine == "keras"


def test_max_relative_diff_is_scaled_by_the_feature_magnitude() -> None:
    ref = np.array([[0.0, 10.0]], np.float32)
    assert max_relative_diff(ref, ref + np.float32(0.001)) == pytest.approx(1e-4, rel=1e-3)
    small = np.array([[0.0, 0.1]], np.float32)
    assert max_relative_diff(small, small + np.float32(0.001)) == pytest.approx(1e-3, rel=1e-3)  # floor of 1


@pytest.fixture(scope="module")
def classifier():  # noqa: ANN201 - a Classifier; imported lazily
    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier

    base = build_base(resolve_backbone("mobilenet_v2"), weights="bundled", alpha=0.35, image_size=SIZE)
    return build_classifier(base, image_size=SIZE, num_classes=4, preprocessing="tf", dropout=0.2)


def test_tflite_extractor_gives_tensorflows_features(classifier) -> None:  # noqa: ANN001
    from edgetl.train.engine import TFLiteExtractor

    x = np.random.default_rng(0).uniform(0, 255, (7, SIZE, SIZE, 3)).astype(np.float32)  # 7: a padded last chunk
    ref = np.asarray(classifier.extractor(x, training=False))
    fast = TFLiteExtractor(classifier, SIZE)
    got = fast(x)
    assert got.shape == ref.shape
    assert max_relative_diff(ref, got) <= FEATURE_TOLERANCE
    assert fast(x[:1]).shape == (1, ref.shape[1])


def test_tflite_extractor_converts_the_pass_s_traced_function(classifier) -> None:  # noqa: ANN001
    """The feature pass hands its traced function to the conversion (no second trace): same features."""
    import tensorflow as tf

    from edgetl.train.engine import TFLiteExtractor

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    def extract(images: tf.Tensor) -> tf.Tensor:
        return classifier.extractor(images, training=False)

    x = np.random.default_rng(1).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    ref = np.asarray(extract(x))
    got = TFLiteExtractor(classifier, SIZE, concrete=extract.get_concrete_function())(x)
    assert got.shape == ref.shape
    assert max_relative_diff(ref, got) <= FEATURE_TOLERANCE


def test_the_direct_conversion_and_its_fallback_give_the_same_network(classifier,  # noqa: ANN001
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """convert_frozen's direct route (the frozen GraphDef) and the public one it falls back to: each opens in
    LiteRT, keeps the unknown batch size, and gives TensorFlow's features."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.train import conversion

    @tf.function(input_signature=[tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32)])
    def extract(images: tf.Tensor) -> tf.Tensor:
        return classifier.extractor(images, training=False)

    concrete = extract.get_concrete_function()
    x = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    ref = np.asarray(extract(x))

    def features(blob: bytes) -> np.ndarray:
        interp = Interpreter(model_content=blob)
        detail = interp.get_input_details()[0]
        assert list(detail["shape_signature"]) == [-1, SIZE, SIZE, 3]
        interp.resize_tensor_input(detail["index"], x.shape)
        interp.allocate_tensors()
        interp.set_tensor(detail["index"], x)
        interp.invoke()
        return interp.get_tensor(interp.get_output_details()[0]["index"])

    direct = conversion.convert_frozen(concrete)
    graph_def, (name, shape), _ = conversion.frozen_graph_def(concrete)
    assert shape == [-1, SIZE, SIZE, 3] and name == "images"
    assert not [n.op for n in graph_def.node if n.op in ("VarHandleOp", "ReadVariableOp")]  # frozen

    def broken(_concrete: object) -> None:
        raise ValueError("a graph the direct route does not take")

    monkeypatch.setattr(conversion, "frozen_graph_def", broken)
    public = conversion.convert_frozen(concrete)
    assert max_relative_diff(ref, features(direct)) <= FEATURE_TOLERANCE
    assert max_relative_diff(ref, features(public)) <= FEATURE_TOLERANCE
    np.testing.assert_array_equal(features(direct), features(public))


def test_feature_pass_engines_agree_and_say_which_ran(classifier, demo_dir: Path,  # noqa: ANN001
                                                      line_reporter: type) -> None:
    from edgetl.data.scan import scan_folder
    from edgetl.train.distribute import place
    from edgetl.train.features import extract_features

    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    placement = place("default", "off")
    out = {}
    for engine in ("keras", "tflite"):
        reporter, record = line_reporter(), {}
        out[engine] = extract_features(classifier, splits, ["train", "val"], SIZE, 16, reporter, placement,
                                       engine=engine, record=record)
        assert record["engine"] == engine
        assert any(line.startswith("feature pass: ") for line in reporter.lines)
    # Forced by the option: the reason says so, with the cost model's figures for the record.
    assert record["reason"].startswith("--feature-cache tflite (") and "s saved" in record["reason"], record
    assert record["max_relative_diff"] <= FEATURE_TOLERANCE
    for name in ("train", "val"):
        k, t = out["keras"][name], out["tflite"][name]
        np.testing.assert_array_equal(k[1], t[1])
        assert max_relative_diff(k[0], t[0]) <= FEATURE_TOLERANCE


def test_the_direct_conversion_freezes_captured_constants_too() -> None:
    """A Normalization layer's mean and variance are captured tensors, not variables (as in EfficientNet): the
    direct route freezes them with the weights (it used to fall back to the slow route there)."""
    import keras
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.train import conversion

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Normalization(mean=[1.0, 2.0, 3.0],
                                                                                variance=[4.0, 5.0, 6.0]),
                              keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D()])

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 3), tf.float32)])
    def forward(x: tf.Tensor) -> tf.Tensor:
        return model(x)

    concrete = forward.get_concrete_function()
    assert len(concrete.inputs) > 2  # the image, the captured constants, the variables
    _, (name, shape), _ = conversion.frozen_graph_def(concrete)  # no fall-back needed
    assert shape == [-1, 8, 8, 3]
    interp = Interpreter(model_content=conversion.convert_frozen(concrete))
    x = np.random.default_rng(3).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    interp.resize_tensor_input(interp.get_input_details()[0]["index"], x.shape)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    assert max_relative_diff(np.asarray(forward(x)), got) <= FEATURE_TOLERANCE


def test_an_input_started_ahead_gives_the_pass_the_same_features(classifier, demo_dir: Path) -> None:  # noqa: ANN001
    """train starts the pass's input before building the model (passinput.start_pass_input): the pass takes it and
    gives the features its own input would, in the same order; an input made for other splits is not used."""
    from edgetl.core.progress import Reporter
    from edgetl.data.scan import scan_folder
    from edgetl.train.distribute import place
    from edgetl.train.features import extract_features
    from edgetl.train.passinput import start_pass_input

    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    placement = place("default", "off")
    names = ["train", "val", "test"]

    def run(ahead: object) -> dict:
        return extract_features(classifier, splits, names, SIZE, 16, Reporter(), placement, engine="keras",
                                ahead=ahead)

    own = run(None)
    ahead = start_pass_input(splits, names, SIZE, 16, placement)
    assert ahead is not None and ahead.batches is not None
    taken = run(ahead)
    assert ahead.batches is None and ahead.dataset is None  # handed over: the pass released it
    other = start_pass_input(splits, ["train"], SIZE, 16, placement)  # made for another pass: set aside
    unused = run(other)
    assert other.batches is None
    for name in names:
        for got in (taken, unused):
            np.testing.assert_array_equal(got[name][1], own[name][1])
            np.testing.assert_array_equal(got[name][0], own[name][0])
    with pytest.raises(RuntimeError, match="taken already"):
        ahead.take()


def test_train_records_the_feature_engine(demo_dir: Path, tmp_path: Path) -> None:
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    cfg = TrainConfig(data=str(demo_dir), alpha=0.35, weights="bundled", image_size=SIZE, epochs=1, batch_size=16,
                      feature_cache="tflite", seed=0, output=str(tmp_path / "run"))
    result = train(cfg)
    training = json.loads((result.run_dir / "manifest.json").read_text())["training"]
    assert training["feature_cache"] is True
    assert training["feature_engine"]["engine"] == "tflite"
    assert training["feature_engine"]["max_relative_diff"] <= FEATURE_TOLERANCE
    # The pass's parts: every one recorded, and together the pass (edgetl.train.walltime).
    from edgetl.train.walltime import FEATURE_PARTS

    seconds = training["seconds"]
    inner = {k: seconds[f"features_{k}"] for k in FEATURE_PARTS}
    assert min(inner.values()) >= 0 and inner["base"] > 0 and inner["convert"] > 0
    assert abs(sum(inner.values()) - seconds["features"]) <= 0.1, (inner, seconds["features"])
    data = json.loads((result.run_dir / "manifest.json").read_text())["data"]
    assert training["feature_engine"]["images"] == sum(len(data[s]) for s in ("train", "val", "test"))
    assert "seconds" not in training["feature_engine"]


def test_converted_base_is_cached_and_reloaded_by_content(classifier, _own_cache: Path,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.train.engine import TFLiteExtractor, base_key, cache_dir, has_cached_conversion

    x = np.random.default_rng(2).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    first = TFLiteExtractor(classifier, SIZE)
    assert not first.cached and first.cache_path is not None and first.cache_path.is_file()
    assert first.cache_path.parent == cache_dir() == _own_cache
    again = TFLiteExtractor(classifier, SIZE)
    assert again.cached and again.cache_path == first.cache_path
    np.testing.assert_array_equal(again(x), first(x))
    # Another size, or one weight changed, is another conversion: a stale file is never picked up.
    assert base_key(classifier, SIZE + 16) != base_key(classifier, SIZE)
    var = classifier.extractor.weights[-1]
    old = var.numpy()
    try:
        var.assign(old + 1.0)
        assert base_key(classifier, SIZE) != first.cache_path.stem
    finally:
        var.assign(old)
    assert base_key(classifier, SIZE) == first.cache_path.stem
    assert has_cached_conversion(classifier, SIZE) and not has_cached_conversion(classifier, SIZE + 16)
    # A damaged file is converted again and rewritten; forget() deletes it; "off" caches nothing.
    first.cache_path.write_bytes(b"not a model")
    repaired = TFLiteExtractor(classifier, SIZE)
    assert not repaired.cached and first.cache_path.stat().st_size > 1000
    repaired.forget()
    assert not first.cache_path.exists()
    monkeypatch.setenv("EDGETL_CACHE_DIR", "off")
    off = TFLiteExtractor(classifier, SIZE)
    assert cache_dir() is None and off.cache_path is None and not off.cached
    assert not has_cached_conversion(classifier, SIZE)


def test_a_second_run_loads_the_base_it_converted(demo_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.train import engine, train
    from edgetl.train.config import TrainConfig

    hashed = []  # every weight hashed per run: once (the cache's name), not again for the conversion
    real_key = engine.base_key
    monkeypatch.setattr(engine, "base_key", lambda *a: hashed.append(1) or real_key(*a))
    # 96 tiny images save less than a cached load is charged (0.5 s) at TensorFlow's steady speed, which the first
    # run measured: free loads let "auto" show that it takes the cached file.
    monkeypatch.setattr(engine, "CACHED_LOAD_SECONDS", 0.0)
    engines, hashes = [], []
    for i, mode in enumerate(("tflite", "tflite", "auto")):
        cfg = TrainConfig(data=str(demo_dir), alpha=0.35, weights="bundled", image_size=SIZE, epochs=1,
                          batch_size=16, feature_cache=mode, seed=0, output=str(tmp_path / f"run{i}"))
        hashed.clear()
        result = train(cfg)
        engines.append(json.loads((result.run_dir / "manifest.json").read_text())["training"]["feature_engine"])
        hashes.append(len(hashed))
    assert hashes == [1, 1, 1]
    assert [e["cached"] for e in engines] == [False, True, True]
    assert all(e["engine"] == "tflite" and e["max_relative_diff"] <= FEATURE_TOLERANCE for e in engines)


def test_a_cached_conversion_with_its_stored_check_runs_without_tensorflow(classifier, demo_dir: Path,  # noqa: ANN001
                                                                           _own_cache: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The second pass on the same base checks the cached file against TensorFlow's stored features and never
    traces TensorFlow; its features are TensorFlow's within the tolerance. A stored check the file fails makes the
    pass delete the file and convert again; a missing one makes it check against TensorFlow again (and store it)."""
    from edgetl.core.progress import Reporter
    from edgetl.data.scan import scan_folder
    from edgetl.train import engine as engine_module
    from edgetl.train.distribute import place
    from edgetl.train.engine import CHECK_SUFFIX
    from edgetl.train.features import extract_features

    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    placement = place("default", "off")
    # 88 tiny images save less than a cached load is charged at TensorFlow's steady speed: free loads let "auto"
    # take the cached file, which is what this test is about.
    monkeypatch.setattr(engine_module, "CACHED_LOAD_SECONDS", 0.0)

    def run(engine: str) -> tuple[dict, dict]:
        record: dict = {}
        out = extract_features(classifier, splits, ["train", "val"], SIZE, 16, Reporter(), placement,
                               engine=engine, record=record)
        return out, record

    reference, keras_only = run("keras")
    assert keras_only["tensorflow_images"] == keras_only["images"]
    _, first = run("tflite")  # converts, checks against TensorFlow's probe of the first batch, keeps the check
    assert not first["cached"] and "check" not in first and first["seconds"]["trace"] > 0
    # TensorFlow computed its two probe calls only (it set its kernels up and gave its speed), TFLite the rest.
    assert first["tensorflow_images"] == 2 * engine_module.PROBE_IMAGES, first
    checks = list(_own_cache.glob(f"*{CHECK_SUFFIX}"))
    assert len(checks) == 1 and (_own_cache / checks[0].name.replace(CHECK_SUFFIX, ".tflite")).is_file()
    for engine in ("tflite", "auto"):
        out, record = run(engine)
        assert record["engine"] == "tflite" and record["cached"] and record["check"] == "stored", record
        assert record["tensorflow_images"] == 0
        assert record["seconds"]["trace"] == 0.0 and "trace_cpu_seconds" not in record
        assert record["max_relative_diff"] <= FEATURE_TOLERANCE
        for name in ("train", "val"):
            np.testing.assert_array_equal(out[name][1], reference[name][1])
            assert max_relative_diff(reference[name][0], out[name][0]) <= FEATURE_TOLERANCE
    # Stored features that the file does not give: the file and its check are deleted, the base converted again.
    with np.load(checks[0]) as data:
        stored = dict(data)
    np.savez(checks[0], **{**stored, "features": stored["features"] + 1.0})
    out, record = run("tflite")
    assert not record["cached"] and "check" not in record and record["seconds"]["trace"] > 0
    assert max_relative_diff(reference["train"][0], out["train"][0]) <= FEATURE_TOLERANCE
    # No stored check (an older cache): TensorFlow's first batch checks the file, and the check is stored again.
    checks[0].unlink()
    _, record = run("auto")
    assert record["cached"] and "check" not in record and record["seconds"]["trace"] > 0
    assert checks[0].is_file()
    _, record = run("auto")
    assert record["check"] == "stored"


def test_passes_of_several_sizes_share_one_trace_and_conversion(demo_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's candidates of one backbone at several sizes: one base built for any size, one trace and one
    conversion (AnySizeForward) for their passes, and at each size the features a pass of its own gives."""
    import keras

    import edgetl.train.conversion as conversion
    from edgetl.core.progress import Reporter
    from edgetl.data.scan import scan_folder
    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier
    from edgetl.train.distribute import place
    from edgetl.train.features import extract_features

    conversions = []
    real_convert = conversion.convert_frozen
    monkeypatch.setattr(conversion, "convert_frozen", lambda c: conversions.append(c) or real_convert(c))
    monkeypatch.setenv("EDGETL_CACHE_DIR", "off")  # every pass converts, unless it shares a conversion
    splits = scan_folder(demo_dir, val_split=0.2, test_split=0.1, seed=0)
    placement = place("default", "off")
    spec = resolve_backbone("mobilenet_v2")

    def classifier(base: object, size: int | None) -> object:
        return build_classifier(base, image_size=size, num_classes=4, preprocessing="tf", dropout=0.0)

    any_base = build_base(spec, weights="bundled", alpha=0.35, image_size=None)
    shared = conversion.AnySizeForward(classifier(any_base, None).extractor)
    got = {}
    for size in (32, 64):
        record: dict = {}
        got[size] = extract_features(classifier(any_base, size), splits, ["train"], size, 16, Reporter(), placement,
                                     engine="tflite", record=record, any_size=shared)["train"][0]
        assert record["engine"] == "tflite" and record["max_relative_diff"] <= FEATURE_TOLERANCE
    assert len(conversions) == 1  # the first size's pass converted, for both
    for size in (32, 64):
        keras.backend.clear_session()
        own = classifier(build_base(spec, weights="bundled", alpha=0.35, image_size=size), size)
        alone = extract_features(own, splits, ["train"], size, 16, Reporter(), placement, engine="tflite")["train"][0]
        np.testing.assert_array_equal(got[size], alone)
    assert len(conversions) == 3
