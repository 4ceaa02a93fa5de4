"""Bias correction of static int8 (QDQ) ONNX files (edgetl.export.onnx_bias; issue #13).

The shift each kernel's int8 rounding causes is computed from per-tap averages of the mean input; here it
is checked against ONNX Runtime's own convolution, and the corrected file against ORT's plain one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pictures import smooth_pictures

SIZE = 32


def _pictures(n: int, seed: int) -> np.ndarray:
    return smooth_pictures(n, seed, SIZE)


def _run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    from edgetl.runtime.onnxrt import X64_QUANT_PRECISION

    data = model if isinstance(model, (str, Path)) else model.SerializeToString()
    options = ort.SessionOptions()
    # As edgetl's runner: without it, x86 CPUs lacking VNNI saturate the int8 sums and the files' math is lost.
    options.add_session_config_entry(X64_QUANT_PRECISION, "1")
    session = ort.InferenceSession(str(data) if isinstance(data, Path) else data, options,
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in session.run(None, feeds)]


def _one_node(op: str, x_shape: list[int], weight: np.ndarray, **attrs: Any) -> Any:
    """A model of one Conv/Gemm/MatMul node reading input "x" with constant weight `weight`, no bias."""
    import onnx
    from onnx import helper, numpy_helper

    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("attrs,channels,out,group", [
    ({"pads": [1, 1, 1, 1]}, 4, 6, 1),  # SAME, stride 1
    ({"pads": [0, 0, 1, 1], "strides": [2, 2]}, 4, 6, 1),  # TF's SAME at stride 2: the extra row at the end
    ({"strides": [2, 2]}, 4, 6, 1),  # VALID, stride 2
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, 4, 6, 1),
    ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, 4, 6, 1),
    ({"auto_pad": "VALID", "dilations": [2, 2]}, 4, 6, 1),
    ({"pads": [2, 2, 2, 2], "dilations": [2, 2]}, 4, 6, 1),
    ({"pads": [1, 1, 1, 1], "strides": [2, 2]}, 4, 8, 4),  # depthwise, multiplier 2
    ({"pads": [1, 1, 1, 1]}, 4, 4, 4),  # depthwise
    ({"pads": [0, 1, 2, 1]}, 4, 6, 2),  # grouped, uneven pads
])
def test_conv_mean_shift_is_onnx_runtimes(attrs: dict[str, Any], channels: int, out: int, group: int) -> None:
    """The shift from per-tap averages equals the mean output of ORT's Conv with the kernel delta on the inputs."""
    from edgetl.export.onnx_bias import mean_shift

    rng = np.random.default_rng(5)
    x = rng.uniform(0, 6, (5, channels, 9, 11)).astype(np.float32)  # odd sizes test the padding split
    delta = rng.normal(0, 0.01, (out, channels // group, 3, 3))
    attrs = {**attrs, "group": group}
    (y,) = _run(_one_node("Conv", list(x.shape), delta, **attrs), {"x": x})
    got = mean_shift("Conv", attrs, delta, x.astype(np.float64).mean(axis=0))
    assert got is not None
    np.testing.assert_allclose(got, y.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("op,attrs,w_shape", [
    ("Gemm", {}, (8, 5)), ("Gemm", {"transB": 1, "alpha": 0.5}, (5, 8)), ("MatMul", {}, (8, 5))])
def test_gemm_and_matmul_mean_shift_is_onnx_runtimes(op: str, attrs: dict[str, Any], w_shape: tuple[int, ...]) -> None:
    from edgetl.export.onnx_bias import mean_shift

    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (7, 8) if op == "Gemm" else (7, 3, 8)).astype(np.float32)  # MatMul: a rank-3 input
    delta = rng.normal(0, 0.01, w_shape)
    (y,) = _run(_one_node(op, list(x.shape), delta, **attrs), {"x": x})
    got = mean_shift(op, attrs, delta, x.astype(np.float64).mean(axis=0))
    assert got is not None
    np.testing.assert_allclose(got, y.astype(np.float64).reshape(-1, 5).mean(axis=0), rtol=1e-5, atol=1e-8)


def test_mean_shift_refuses_shapes_that_do_not_fit() -> None:
    from edgetl.export.onnx_bias import mean_shift

    assert mean_shift("Conv", {"group": 3}, np.zeros((6, 2, 3, 3)), np.zeros((4, 8, 8))) is None
    assert mean_shift("Gemm", {"transA": 1}, np.zeros((8, 5)), np.zeros(8)) is None
    assert mean_shift("MatMul", {}, np.zeros((8, 5)), np.zeros(7)) is None


def _classifier(seed: int = 0) -> Any:
    """Pixels 0..255 -> probabilities, small: a stem, a depthwise block whose BN gains span 30x, a 1x1
    classifier reading each channel inversely to its gain (as a trained network does), a dense head.

    Rounding such kernels to int8 moves every layer's mean output, which is what the correction is for.
    """
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(16, 1, name="project")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(5, name="logits")(x)
    model = keras.Model(inp, keras.layers.Softmax(name="predictions")(logits))
    # Every kernel gets a bias (BN's beta, the projection's own): a Conv without one is left as it is.
    model.get_layer("stem_bn").set_weights([rng.uniform(0.5, 2, 64).astype("float32"),
                                            rng.uniform(0, 1, 64).astype("float32"),
                                            np.zeros(64, "float32"), np.ones(64, "float32") - 1e-3])
    gain = np.exp(rng.uniform(np.log(0.1), np.log(3.0), 64)).astype("float32")
    model.get_layer("dw_bn").set_weights([gain, rng.uniform(0, 0.5, 64).astype("float32"), np.zeros(64, "float32"),
                                          np.ones(64, "float32") - 1e-3])
    project = model.get_layer("project")
    project.set_weights([rng.normal(0, 1, (1, 1, 64, 16)).astype("float32") / gain[None, None, :, None],
                         rng.normal(0, 0.5, 16).astype("float32")])
    # Spread the logits over the pictures (std about 2) so that an error in them shows.
    z = np.asarray(keras.Model(inp, logits)(_pictures(48, 1), training=False))
    dense = model.get_layer("logits")
    kernel, bias = (np.asarray(v) for v in dense.get_weights())
    dense.set_weights([kernel * 2 / z.std(0), (bias - z.mean(0)) * 2 / z.std(0)])
    return model


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The classifier exported as `edgetl export` does: float, then int8 from it, corrected and plain."""
    from edgetl.export.formats.onnx import export_onnx
    from edgetl.export.formats.saved_model import save_serving

    work = tmp_path_factory.mktemp("onnx-bias")
    saved = save_serving(_classifier(), work / "saved_model")
    files = {"none": work / "float32.onnx", "corrected": work / "int8.onnx", "plain": work / "int8-plain.onnx"}
    export_onnx(saved, files["none"], "none")
    calib = _pictures(48, seed=2)
    export_onnx(saved, files["corrected"], "int8", calibration=calib, float_model=files["none"])
    export_onnx(saved, files["plain"], "int8", calibration=calib, float_model=files["none"], bias_correction=False)
    return files


def _log_probs(path: Path, x: np.ndarray) -> np.ndarray:
    (p,) = _run(path, {"image": x})
    return np.log(np.maximum(p, 1e-12))


def test_corrected_file_is_closer_to_float(int8_files: dict[str, Path]) -> None:
    """On other pictures the outputs move toward float's, and the mean logit shift is mostly gone."""
    x = _pictures(64, seed=9)
    ref = _log_probs(int8_files["none"], x)
    plain, corrected = _log_probs(int8_files["plain"], x), _log_probs(int8_files["corrected"], x)

    def shift(logp: np.ndarray) -> float:
        d = (logp - ref).mean(axis=0)  # log-probabilities: logits up to one constant per picture
        return float(np.abs(d - d.mean()).max())

    err_plain = np.abs(np.exp(plain) - np.exp(ref)).mean()
    err_corrected = np.abs(np.exp(corrected) - np.exp(ref)).mean()
    # Measured: mean error 0.21 -> 0.07 in probability, largest mean logit shift 11.6 -> 0.8.
    assert err_corrected < 0.5 * err_plain, (err_plain, err_corrected)
    assert shift(plain) > 1.0, "int8 rounding no longer shifts this model's mean logits"
    assert shift(corrected) < 0.2 * shift(plain), (shift(plain), shift(corrected))


def test_only_int32_biases_change(int8_files: dict[str, Path], tmp_path: Path) -> None:
    """Same nodes, same initializers but the int32 biases of the Conv and Gemm nodes: with min/max ranges
    (ranges="minmax") they are ORT's own to the bit."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.export.onnx_quant import quantize_onnx

    pre, minmax = tmp_path / "pre.onnx", tmp_path / "int8-minmax.onnx"
    quant_pre_process(str(int8_files["none"]), str(pre), skip_symbolic_shape=True)
    quantize_onnx(str(pre), str(minmax), "int8", calibration=_pictures(48, seed=2), input_name="image",
                  ranges="minmax")
    plain, corrected = onnx.load(str(int8_files["plain"])), onnx.load(str(minmax))
    onnx.checker.check_model(corrected, full_check=True)
    assert [n.SerializeToString() for n in plain.graph.node] == [n.SerializeToString() for n in corrected.graph.node]
    before = {i.name: i for i in plain.graph.initializer}
    after = {i.name: i for i in corrected.graph.initializer}
    assert set(before) == set(after)
    changed = [k for k in before if before[k].SerializeToString() != after[k].SerializeToString()]
    assert changed and all(before[k].data_type == onnx.TensorProto.INT32 for k in changed), changed
    # The stem, the depthwise kernel, the 1x1 projection and the dense head.
    assert len(changed) == 4, changed


def test_plain_int8_is_onnx_runtimes_own(int8_files: dict[str, Path], tmp_path: Path) -> None:
    """bias_correction=False: quantize_static's file with edgetl's recipe (the input scaling left in float),
    calibrated by ORT itself."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgetl.export.onnx_quant import input_scaling_nodes

    calib = _pictures(48, seed=2)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.images, None)
            return None if x is None else {"image": x[None]}

    pre, own = tmp_path / "pre.onnx", tmp_path / "own.onnx"
    quant_pre_process(str(int8_files["none"]), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(own), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    nodes_to_exclude=input_scaling_nodes(onnx.load(str(pre)), "image"))
    mine, theirs = onnx.load(str(int8_files["plain"])), onnx.load(str(own))
    assert [n.SerializeToString() for n in mine.graph.node] == [n.SerializeToString() for n in theirs.graph.node]
    assert sorted(i.SerializeToString() for i in mine.graph.initializer) == \
        sorted(i.SerializeToString() for i in theirs.graph.initializer)
    x = _pictures(8, seed=3)
    np.testing.assert_array_equal(_run(int8_files["plain"], {"image": x})[0], _run(own, {"image": x})[0])


def test_a_shared_bias_is_copied_before_it_changes(tmp_path: Path) -> None:
    """Two Convs reading one bias DequantizeLinear: each gets its own corrected bias, the file stays valid."""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    from edgetl.export.onnx_bias import collect_statistics, correct_bias, kernel_inputs
    from edgetl.export.onnx_quant import quantize_onnx

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b"], ["y1"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Conv", ["x", "w2", "b"], ["y2"], pads=[1, 1, 1, 1], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("y1", "y2")],
                              inits)
    src, dst = tmp_path / "float.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    x = rng.uniform(0, 4, (16, 3, 8, 8)).astype(np.float32)
    quantize_onnx(str(src), str(dst), "int8", calibration=x, input_name="x", bias_correction=False)
    quantized = onnx.load(str(dst))
    # Make the second Conv read the first one's bias DequantizeLinear (ORT writes one per node).
    conv = {n.name: n for n in quantized.graph.node if n.op_type == "Conv"}
    old_bias = conv["c2"].input[2]
    if old_bias != conv["c1"].input[2]:
        conv["c2"].input[2] = conv["c1"].input[2]
        for node in [n for n in quantized.graph.node if old_bias in n.output]:
            quantized.graph.node.remove(node)
            for init in [i for i in quantized.graph.initializer if i.name in node.input]:
                quantized.graph.initializer.remove(init)
    shared = onnx.ModelProto()
    shared.CopyFrom(quantized)

    source = load_model_with_shape_infer(src)
    stats = collect_statistics(source, x, "x", kernel_inputs(source))
    corrected, done = correct_bias(quantized, source, stats.means)
    assert sorted(done) == ["c1", "c2"]
    onnx.checker.check_model(corrected, full_check=True)
    conv = {n.name: n for n in corrected.graph.node if n.op_type == "Conv"}
    assert conv["c1"].input[2] != conv["c2"].input[2]
    want = _run(src, {"x": x})
    for model, bound in ((shared, None), (corrected, 0.25)):
        got = _run(model, {"x": x})
        shifts = [np.abs((g - w).mean(axis=(0, 2, 3))).max() for g, w in zip(got, want, strict=True)]
        if bound is None:
            plain_shifts = shifts
        else:
            assert all(s < bound * p for s, p in zip(shifts, plain_shifts, strict=True)), (plain_shifts, shifts)


def test_edgetl_runs_an_int8_file_as_its_own_math_on_any_x86(int8_files: dict[str, Path]) -> None:
    """edgetl's ONNX runner gives the file's exact math (QDQ unfused: DequantizeLinear, float op, QuantizeLinear)
    up to the requantization's rounding, also on x86 CPUs without VNNI whose fused uint8 x int8 kernels saturate.

    Measured on an AVX2 EPYC: mean difference 0.0008 (largest 1/255), same top-1 on 64 of 64; ORT's default session
    there: 0.23, same top-1 on 23 of 64 (the corrected file), 3 of 64 (the plain one).
    """
    import onnxruntime as ort

    from edgetl.runtime.onnxrt import OnnxRunner, int8_saturates

    x = _pictures(64, seed=9)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for path in (int8_files["corrected"], int8_files["plain"]):
        exact = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        runner = OnnxRunner(path, 1)
        assert (runner.int8_kernels() is not None) == int8_saturates()
        got = runner.session.run(None, {"image": x})[0]  # the session edgetl runs the file in
        assert np.abs(got - exact).mean() < 0.01, np.abs(got - exact).mean()
        assert (got.argmax(1) == exact.argmax(1)).mean() >= 0.95


def test_input_scaling_stays_float_and_is_quantized_once(int8_files: dict[str, Path], tmp_path: Path) -> None:
    """The model's x / 127.5 - 1 runs in float and the first Conv reads it through one QuantizeLinear, which ONNX
    Runtime's fused kernels compute as the file says: every whole pixel value lands on a tie between two uint8
    levels, and ORT's fused QLinearAdd rounded all ties down (ORT's QuantizeLinear rounds them half to even),
    shifting the whole image by half a level: MobileNetV2 1.0 at 224 lost 7.5 points more on real photos (#27)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgetl.export.formats.onnx import export_onnx
    from edgetl.export.onnx_quant import input_scaling_nodes

    scaling = input_scaling_nodes(onnx.load(str(int8_files["none"])), "image")
    # Whole pixel values with some black and white, as photos have: the scaled input's range is [-1, 1] exactly.
    calib = np.rint(_pictures(48, seed=2))
    calib[:, 0, 0], calib[:, 0, 1] = 0.0, 255.0
    path = export_onnx(None, tmp_path / "int8.onnx", "int8", calibration=calib, float_model=int8_files["none"])
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    assert [nodes[name].op_type for name in scaling] == ["Mul", "Add"]
    made = {o: n for n in model.graph.node for o in n.output}
    for name in scaling:  # float in, float out: not quantized
        assert all(made[i].op_type != "DequantizeLinear" for i in nodes[name].input if i in made)
    # The uint8 tensor the first Conv reads (through DequantizeLinear), as an output of the file.
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    first = made[made[conv.input[0]].input[0]].output[0]
    model.graph.output.append(helper.make_tensor_value_info(first, TensorProto.UINT8, None))
    x = np.rint(_pictures(8, seed=5))  # whole pixel values, as decoded photos are

    def run(level: Any) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run([first], {"image": x.astype(np.float32)})[0]

    fused, exact = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    np.testing.assert_array_equal(fused, exact)


def test_scaled_input_is_off_the_ties_where_it_is_quantized(int8_files: dict[str, Path]) -> None:
    """Where the input scaling must be quantized (qnn), its step leaves every whole pixel value at least a few
    float32 resolutions off the tie between two levels, so every runtime rounds it the same way (#27)."""
    import onnx
    from onnxruntime.quantization import QuantType

    from edgetl.export.onnx_quant import input_scaling_nodes, input_scaling_overrides

    model = onnx.load(str(int8_files["none"]))
    last = [n.output[0] for n in model.graph.node if n.name in set(input_scaling_nodes(model, "image"))][-1]
    for qtype, levels in ((QuantType.QUInt8, 255), (QuantType.QUInt16, 65535)):
        (override,) = input_scaling_overrides(model, "image", {last: (-1.0, 1.0)}, qtype)[last]
        scale, zero_point = float(override["scale"]), int(override["zero_point"])
        assert abs(scale / (2 / levels) - 1 - 1e-3) < 1e-6 and zero_point == (levels + 1) // 2
        x = np.arange(256, dtype=np.float32)
        level = (x / np.float32(127.5) - 1) / np.float32(scale) + zero_point
        assert np.abs(np.abs(level - np.floor(level) - 0.5)).min() > 1e-4  # with 2 / levels: 0.0 for every pixel
        # ... and each value still rounds to one of the tie's two levels: less than half a uint8 step from it.
        assert np.abs(level - (x / 127.5 - 1) / (2 / levels) - zero_point).max() * 255 / levels < 0.5
    assert input_scaling_overrides(model, "image", {}, QuantType.QUInt8) == {}
