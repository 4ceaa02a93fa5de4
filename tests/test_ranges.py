"""Least-squared-error activation ranges for 8-bit files (edgetl.export.ranges; issue #27).

A min/max range is set by the one most extreme value of any calibration image; the MSE range trades a few
clipped outliers for a finer step on everything else. Checked on histograms directly, and on a tiny classifier
quantized by ONNX Runtime as `edgetl export -f onnx -q int8` does, calibrated with one outlier picture among
ordinary ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pictures import smooth_pictures

from edgetl.core.errors import UsageError
from edgetl.export.ranges import BINS, VALUES_PER_IMAGE, Histograms, mse_range


def _quant_error(values: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    step = (hi - lo) / (levels - 1)
    q = np.clip(np.rint((values - lo) / step), 0, levels - 1) * step + lo
    return float(np.mean((values - q) ** 2))


def _hist(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(values.min()), float(values.max())
    return np.histogram(values, BINS, (lo, hi))[0], lo, hi


def test_outliers_no_longer_set_the_step() -> None:
    """A bulk within +-3 and a few values out to +-40 (a linear bottleneck's output): the range shrinks, and the
    values' own rounding-plus-clipping error falls."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [-40.0, 38.0, 25.0, -30.0]])
    counts, lo, hi = _hist(values)
    low, high = mse_range(counts, lo, hi)
    assert lo < low < 0 < high < hi
    assert high < 0.75 * hi and low > 0.75 * lo, (low, high)  # measured: (-40, 38) -> (-28, 24.7)
    # Measured 0.0052 against 0.0078: the best of the whole grid, computed on the values themselves.
    assert _quant_error(values, low, high) < 0.75 * _quant_error(values, lo, hi)


def test_a_well_spread_tensor_keeps_its_min_max() -> None:
    """Values filling their range evenly (a saturating ReLU6, an image) lose more to clipping than they gain."""
    values = np.random.default_rng(1).uniform(0, 6, 100_000)
    counts, lo, hi = _hist(values)
    low, high = mse_range(counts, lo, hi)
    assert (low, high) == (lo, hi)


def test_zero_stays_inside_and_one_sided_ranges_keep_their_sign() -> None:
    values = np.random.default_rng(2).exponential(1.0, 200_000) + 0.5  # a long tail, all above 0
    counts, lo, hi = _hist(values)
    low, high = mse_range(counts, lo, hi)
    assert low == lo > 0 and 0 < high < hi


def test_histograms_bound_their_sample_and_keep_the_ends() -> None:
    hist = Histograms({"t": (-1.0, 1.0), "empty": (0.0, 0.0)})
    hist.add("t", np.linspace(-2, 2, 10 * VALUES_PER_IMAGE, dtype=np.float32))
    hist.add("other", np.ones(3))  # not asked for: ignored
    counts = hist.counts["t"]
    assert counts.sum() <= VALUES_PER_IMAGE and counts.sum() > 0.9 * VALUES_PER_IMAGE
    assert counts[0] > counts[BINS // 2] and counts[-1] > counts[BINS // 2]  # beyond the range: the end bins
    assert "empty" not in hist.counts


# ------------------------------------------------------------------------------------------------------------------
# On a quantized ONNX classifier

SIZE = 32


def _classifier() -> Any:
    """Pixels -> probabilities: a stem, a depthwise block, a linear 1x1 projection (no activation, as MobileNetV2's
    bottlenecks), a dense head."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="stem")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(16, 1, name="project")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    model = keras.Model(inp, keras.layers.Softmax(name="predictions")(logits))
    z = np.asarray(keras.Model(inp, logits)(smooth_pictures(48, 1, SIZE), training=False))
    dense = model.get_layer("logits")
    kernel, bias = (np.asarray(v) for v in dense.get_weights())
    dense.set_weights([kernel * 3 / z.std(0), (bias - z.mean(0)) * 3 / z.std(0)])  # logits' std about 3
    return model


def _calibration() -> np.ndarray:
    """Smooth pictures and one of white noise, whose edges drive the linear projection far past the others."""
    calib = smooth_pictures(128, 2, SIZE)
    calib[5] = np.random.default_rng(3).choice([0.0, 255.0], size=(SIZE, SIZE, 3))
    return calib


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.export.formats.onnx import export_onnx
    from edgetl.export.formats.saved_model import save_serving
    from edgetl.export.onnx_quant import quantize_onnx

    work = tmp_path_factory.mktemp("ranges")
    float_file, pre = work / "float.onnx", work / "pre.onnx"
    export_onnx(save_serving(_classifier(), work / "saved_model"), float_file, "none")
    quant_pre_process(str(float_file), str(pre), skip_symbolic_shape=True)
    out: dict[str, Any] = {"none": float_file, "pre": pre}
    for method in ("minmax", "mse"):
        out[method] = work / f"int8-{method}.onnx"
        quantize_onnx(str(pre), str(out[method]), "int8", calibration=_calibration(), input_name="image",
                      ranges=method)
    out["models"] = {k: onnx.load(str(out[k])) for k in ("minmax", "mse")}
    return out


def _probs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0]


def _scales(model: Any) -> dict[str, float]:
    """Each activation QuantizeLinear's scale, by the tensor it quantizes."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits and inits[n.input[1]].size == 1}


def test_mse_file_is_nearer_float_on_ordinary_pictures(files: dict[str, Any]) -> None:
    """One outlier calibration picture no longer coarsens every ordinary picture's step."""
    x = smooth_pictures(96, 9, SIZE)
    ref = _probs(files["none"], x)
    err = {k: float(np.abs(_probs(files[k], x) - ref).sum(1).mean()) for k in ("minmax", "mse")}
    # Measured: mean |probability error| 0.050 -> 0.047 (the logits' own step, untouched, dominates here).
    assert err["mse"] < 0.97 * err["minmax"], err


def test_only_the_narrowed_tensors_change(files: dict[str, Any]) -> None:
    """Same graph; the projection's (linear, outlier-driven) step is finer; the scaled input, quantized exactly on
    whole pixel values, and the probabilities keep theirs."""
    from edgetl.export.onnx_quant import input_scaling_nodes

    minmax, mse = files["models"]["minmax"], files["models"]["mse"]
    assert [n.op_type for n in minmax.graph.node] == [n.op_type for n in mse.graph.node]
    before, after = _scales(minmax), _scales(mse)
    assert set(before) == set(after)
    scaled = [n.output[0] for n in mse.graph.node if n.name in set(input_scaling_nodes(files["models"]["mse"],
                                                                                         "image"))]
    projection = [t for t in before if "project" in t.lower()]
    assert projection and all(after[t] < 0.95 * before[t] for t in projection), (before, after)
    assert all(after[t] <= before[t] * (1 + 1e-6) for t in before)  # narrowed or kept, never widened
    for t in before:
        if t in scaled or t == "probabilities":
            assert after[t] == before[t], t


def test_sixteen_bit_and_minmax_keep_the_measured_ranges(files: dict[str, Any]) -> None:
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from edgetl.export.onnx_bias import collect_statistics
    from edgetl.export.onnx_quant import calibrated_ranges

    model = load_model_with_shape_infer(files["pre"])
    calib = _calibration()
    ranges = collect_statistics(model, calib, "image").ranges
    assert calibrated_ranges(model, ranges, calib, "image", "minmax") == ranges
    assert calibrated_ranges(model, ranges, calib, "image", "mse", levels=65536) == ranges
    narrowed = calibrated_ranges(model, ranges, calib, "image", "mse")
    assert narrowed != ranges and set(narrowed) == set(ranges)
    with pytest.raises(UsageError, match="minmax"):
        calibrated_ranges(model, ranges, calib, "image", "percentile")
