"""Quantized files stay close to float where the plain recipes do not (issue #13).

The trap real MobileNetV2 weights set, rebuilt small: BatchNormalization folded into a depthwise
kernel gives output channels whose ranges differ by 100x. ONNX Runtime's dynamic Conv quantizes such a
kernel with one scale per tensor and the small channels vanish (real photos scored near chance);
edgetl's ONNX dynamic mode stores Conv kernels per channel. Post-training int8 rounding shifts each
layer's mean output; the bias correction (edgetl.export.tflite_bias) takes the shift off in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pictures import smooth_pictures

SIZE = 32


def _trap_model(seed: int = 0) -> Any:
    """Pixels 0..255 -> probabilities; a depthwise block whose BN gains span 100x, as in MobileNetV2.

    The 1x1 convolution after it (the classifier: 5 channels, averaged, softmax) reads each channel with
    weights inverse to its gain, as a trained network does, so the channels the gain makes small still
    matter, and spreads the logits over the generated pictures (std about 2) so that an error shows.
    """
    import keras

    keras.utils.set_random_seed(seed)  # the stem's initial kernel too: the same model whatever ran before
    rng = np.random.default_rng(seed)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(128, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.Conv2D(5, 1, name="classify")(x)
    logits = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Softmax(name="predictions")(logits))
    gain = np.exp(rng.uniform(np.log(0.03), np.log(3.0), 128)).astype("float32")  # spread 100x
    model.get_layer("dw_bn").set_weights([gain, np.zeros(128, "float32"), np.zeros(128, "float32"),
                                          np.ones(128, "float32") - 1e-3])
    kernel = rng.normal(0, 1, (1, 1, 128, 5)).astype("float32") / gain[None, None, :, None]
    classify = model.get_layer("classify")
    classify.set_weights([kernel, np.zeros(5, "float32")])
    z = np.asarray(keras.Model(inp, logits)(_images(), training=False))
    kernel *= 2 / z.std(0)
    classify.set_weights([kernel, (-z.mean(0) * 2 / z.std(0)).astype("float32")])
    return model


def _images(n: int = 48, seed: int = 1) -> np.ndarray:
    return smooth_pictures(n, seed, SIZE)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgetl.export.formats.onnx import export_onnx
    from edgetl.export.formats.saved_model import save_serving

    work = tmp_path_factory.mktemp("quant-accuracy")
    saved = save_serving(_trap_model(), work / "saved_model")
    files = {"none": work / "float32.onnx", "dynamic": work / "dynamic.onnx"}
    export_onnx(saved, files["none"], "none")
    export_onnx(saved, files["dynamic"], "dynamic", float_model=files["none"])
    return files


def _onnx_probs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])


def test_onnx_dynamic_keeps_float_outputs_where_ort_per_tensor_conv_does_not(onnx_files: dict[str, Path],
                                                                            tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    x = _images()
    ref = _onnx_probs(onnx_files["none"], x)
    got = _onnx_probs(onnx_files["dynamic"], x)
    plain = tmp_path / "ort-dynamic.onnx"  # the recipe edgetl used before: every Conv through ConvInteger
    quantize_dynamic(str(onnx_files["none"]), str(plain), weight_type=QuantType.QUInt8)
    old = _onnx_probs(plain, x)
    assert np.abs(old - ref).max() > 0.3, "the trap no longer traps ONNX Runtime's per-tensor ConvInteger"
    assert np.abs(got - ref).max() <= 0.05
    # Top-1 may only change where float's own top two are within twice that error; elsewhere it must not.
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1
    assert clear.mean() >= 0.5  # most pictures: the check below is not empty
    assert (got.argmax(1) == ref.argmax(1))[clear].all()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_onnx_dynamic_file_is_smaller_and_standard(onnx_files: dict[str, Path]) -> None:
    import onnx

    model = onnx.load(str(onnx_files["dynamic"]))
    ops = [n.op_type for n in model.graph.node]
    assert "ConvInteger" not in ops
    # The stem (3,456 weights) and the depthwise kernel (1,152) in int8; the classifier (640) stays float.
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert len(int8) == 2 and ops.count("Conv") == 3
    assert sorted(n.op_type for n in model.graph.node if set(n.input) & int8) == ["Cast", "Cast"]
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # standard ops only
    assert onnx_files["dynamic"].stat().st_size < 0.65 * onnx_files["none"].stat().st_size


def test_onnx_runtime_folds_the_int8_kernels_when_it_loads_the_file(onnx_files: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """The .onnx form (Cast, Mul) leaves float kernels in the graph ONNX Runtime runs, so its Convs are prepacked
    as float32's; the form kept for .ort (DequantizeLinear, which ONNX Runtime keeps) gives the same outputs."""
    import onnx
    import onnxruntime as ort

    from edgetl.export.onnx_quant import weight_only_conv_int8

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as-run.onnx")
    ort.InferenceSession(str(onnx_files["dynamic"]), options, providers=["CPUExecutionProvider"])
    as_run = onnx.load(str(tmp_path / "as-run.onnx"))
    assert not [n.op_type for n in as_run.graph.node if n.op_type in ("Cast", "DequantizeLinear")]

    dq = tmp_path / "dq.onnx"
    float_model = onnx.load(str(onnx_files["none"]))
    weight_only_conv_int8(float_model, folded_at_load=False)
    onnx.save(float_model, str(dq))
    assert [n.op_type for n in float_model.graph.node].count("DequantizeLinear") == 2
    x = _images()  # the same kernels: only the Conv's summation order differs (prepacked or not)
    np.testing.assert_allclose(_onnx_probs(dq, x), _onnx_probs(onnx_files["dynamic"], x), atol=1e-5)
    # ONNX Runtime's .ort converter optimises ahead of time: it keeps DequantizeLinear's int8 kernels, and would
    # fold Cast and Mul into float ones in the file.
    from edgetl.export.formats.ort import export_ort

    sizes = {}
    for name, path in (("float", onnx_files["none"]), ("dq", dq), ("cast", onnx_files["dynamic"])):
        sizes[name] = export_ort(path, tmp_path / f"{name}.ort").stat().st_size
    saved = 3 * (3456 + 1152)  # two kernels stored in 1 byte per weight instead of 4
    assert sizes["dq"] < sizes["float"] - 0.5 * saved and sizes["cast"] > sizes["float"] - 0.2 * saved, sizes


def test_small_kernels_stay_float() -> None:
    import onnx
    from onnx import helper, numpy_helper

    from edgetl.export.onnx_quant import weight_only_conv_int8

    rng = np.random.default_rng(0)
    small = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "small")  # 216 weights
    big = numpy_helper.from_array(rng.normal(size=(64, 8, 3, 3)).astype(np.float32), "big")  # 4608 weights
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "small"], ["h"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["h", "big"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64, 8, 8])], [small, big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert weight_only_conv_int8(model) == 1
    names = {i.name for i in model.graph.initializer}
    assert "small" in names and "big" not in names
    onnx.checker.check_model(model, full_check=True)
    q = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "big_int8")
    assert q.dtype == np.int8 and np.abs(q).max() == 127


# ----------------------------------------------------------------------------------------------
# Bias correction in the quantized TFLite file (edgetl.export.tflite_bias): what `edgetl export` does


def _conv_options(kind: str, padding: str, stride: int, dilation: int) -> Any:
    from ai_edge_litert.schema_py_generated import Conv2DOptionsT, DepthwiseConv2DOptionsT, Padding

    options = Conv2DOptionsT() if kind == "conv" else DepthwiseConv2DOptionsT()
    options.padding = Padding.SAME if padding == "SAME" else Padding.VALID
    options.strideH = options.strideW = stride
    options.dilationHFactor = options.dilationWFactor = dilation
    return options


@pytest.mark.parametrize("kind,padding,stride,dilation,multiplier", [
    ("conv", "SAME", 2, 1, 1), ("conv", "VALID", 1, 2, 1), ("conv", "SAME", 1, 1, 1),
    ("depthwise", "SAME", 2, 1, 2), ("depthwise", "VALID", 1, 1, 1), ("depthwise", "SAME", 1, 2, 1)])
def test_tflite_mean_shift_is_the_convolutions_own(kind: str, padding: str, stride: int, dilation: int,
                                                   multiplier: int) -> None:
    """The shift from per-tap averages equals the mean output of TensorFlow's convolution of the mean input."""
    import tensorflow as tf

    from edgetl.export.tflite_bias import mean_shift

    rng = np.random.default_rng(5)
    mean = rng.uniform(0, 6, (9, 11, 4))  # a ReLU6 output's mean map; odd sizes test the padding split
    if kind == "conv":
        delta = rng.normal(0, 0.01, (6, 3, 3, 4))  # TFLite OHWI
        want = tf.nn.conv2d(mean[None], np.transpose(delta, (1, 2, 3, 0)), stride, padding, dilations=dilation)
    else:
        delta = rng.normal(0, 0.01, (1, 3, 3, 4 * multiplier))  # TFLite 1HW(C*M)
        kernel = delta[0].reshape(3, 3, 4, multiplier)
        want = tf.nn.depthwise_conv2d(mean[None], kernel, (1, stride, stride, 1), padding,
                                      dilations=(dilation, dilation))
    got = mean_shift(kind, delta, mean, _conv_options(kind, padding, stride, dilation))
    np.testing.assert_allclose(got, np.asarray(want).mean(axis=(0, 1, 2)), rtol=1e-9, atol=1e-12)


def test_tflite_mean_shift_of_a_dense_layer() -> None:
    from edgetl.export.tflite_bias import mean_shift

    rng = np.random.default_rng(6)
    delta, mean = rng.normal(size=(5, 8)), rng.uniform(0, 1, (3, 8))  # a rank-3 input averages its leading axes
    np.testing.assert_allclose(mean_shift("dense", delta, mean, None), delta @ mean.mean(axis=0))


def _tflite_probs(data: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.resize_tensor_input(it.get_input_details()[0]["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.astype(np.float32))
    it.invoke()
    return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


@pytest.fixture(scope="module")
def corrected_tflite() -> dict[str, Any]:
    """The trap model quantized from one LiteRT calibration pass, as `edgetl export` does, plain and corrected."""
    from edgetl.export.calibration import collect_statistics, with_ranges
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.export.formats.tflite import calibrate_tflite, quantize_calibrated
    from edgetl.export.images import representative
    from edgetl.export.tflite_bias import correct_bias, kernel_inputs

    model = _trap_model()
    calib = _images(48, seed=2)
    graph = calibrate_tflite(frozen_forward(model), representative(calib[:1]))
    wanted = kernel_inputs(graph)
    stats = collect_statistics(graph, calib, 1, means_of=wanted)
    calibrated = with_ranges(graph, stats.ranges)
    out: dict[str, Any] = {"model": model, "wanted": wanted, "means": stats.means, "calib": calib}
    for mode in ("int8", "int16x8"):
        plain = quantize_calibrated(calibrated, mode)
        out[mode] = (plain, *correct_bias(plain, calibrated, stats.means))
    return out


def test_tflite_bias_correction_measures_every_kernels_input(corrected_tflite: dict[str, Any]) -> None:
    """The stem, the depthwise kernel and the classifier: three inputs, their means from the same pass."""
    import keras

    model, means = corrected_tflite["model"], corrected_tflite["means"]
    assert len(corrected_tflite["wanted"]) == 3 and set(means) == set(corrected_tflite["wanted"].values())
    # The depthwise kernel reads the stem's ReLU6 output: its mean map is Keras's, averaged over the images.
    relu = next(layer for layer in model.layers if isinstance(layer, keras.layers.ReLU))
    want = np.asarray(keras.Model(model.input, relu.output)(corrected_tflite["calib"], training=False)).mean(axis=0)
    errors = [np.abs(m - want).max() for m in means.values() if m.shape == want.shape]  # it, and the classifier's
    assert len(errors) == 2 and min(errors) < 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_tflite_bias_correction_brings_the_file_closer_to_float(corrected_tflite: dict[str, Any], mode: str) -> None:
    """Only the quantized biases change, and the outputs on other pictures move toward the float model's."""
    plain, corrected, names = corrected_tflite[mode]
    assert len(names) == 3
    before, after = _tensors(plain), _tensors(corrected)
    changed = {name for name, b in before.items() if after[name] != b}
    assert changed and all(before[name][0] in ("INT32", "INT64") for name in changed), changed
    assert all(after[name][:3] == before[name][:3] for name in before)  # types, shapes and scales as they were
    x = _images(64, seed=9)
    ref = np.asarray(corrected_tflite["model"](x, training=False))
    err_plain = np.abs(_tflite_probs(plain, x) - ref).mean()
    err_corrected = np.abs(_tflite_probs(corrected, x) - ref).mean()
    assert err_corrected < 0.8 * err_plain, (err_plain, err_corrected)


def _tensors(data: bytes) -> dict[str, tuple[Any, ...]]:
    """Each constant tensor of a .tflite by name: (type, shape, scales, values)."""
    from ai_edge_litert.schema_py_generated import ModelT, TensorType

    kinds = {v: k for k, v in vars(TensorType).items() if not k.startswith("_")}
    model = ModelT.InitFromPackedBuf(bytearray(data), 0)
    out = {}
    for t in model.subgraphs[0].tensors:
        data_ = model.buffers[t.buffer].data
        if data_ is None or len(data_) == 0:
            continue
        scales = None if t.quantization is None or t.quantization.scale is None else list(t.quantization.scale)
        out[t.name.decode() if isinstance(t.name, bytes) else t.name] = (
            kinds[t.type], list(t.shape if t.shape is not None else []), scales, bytes(np.asarray(data_, np.uint8)))
    return out


def test_means_are_taken_over_the_first_mean_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ranges see every calibration image; the means the first MEAN_IMAGES (a batch cut part-way included)."""
    from ai_edge_litert.schema_py_generated import ModelT

    import edgetl.export.calibration as calibration
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.export.formats.tflite import calibrate_tflite
    from edgetl.export.images import representative

    monkeypatch.setattr(calibration, "MEAN_IMAGES", 5)  # LiteRT runs 4 images a call: the second call is cut at 1
    images = _images(12, seed=3)
    graph = calibrate_tflite(frozen_forward(_trap_model()), representative(images[:1]))
    source = ModelT.InitFromPackedBuf(bytearray(graph), 0).subgraphs[0].inputs[0]  # the graph's input tensor
    stats = calibration.collect_statistics(graph, images, 1, means_of={int(source): "image"})
    np.testing.assert_allclose(stats.means["image"], images[:5].mean(axis=0), rtol=1e-6)
    assert stats.ranges[int(source)] == (float(images.min()), float(images.max()))
