"""Qualcomm Hexagon NPU files (issue #27): written from the float ONNX file, run on the QNN provider's HTP backend
(emulated on x86) with CPU fallback disabled, against ONNX Runtime's CPU kernels and the Keras model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgetl.core.errors import ExportError, ModelError, UsageError
from edgetl.runtime import qnn
from edgetl.runtime.kinds import detect_kind

IMAGE_SIZE = 48
HELD_OUT = 24  # images the emulated HTP runs per file (about 0.1 s each at 48 px)
# Top-1 agreement of the HTP's outputs with ONNX Runtime's CPU kernels on the same QDQ file (measured 0.79 on the
# 24 images; the issue measured 0.967 on 60 demo images at 96 px), and with the float file (measured 0.96).
MIN_CPU_AGREEMENT = 0.75
MIN_FLOAT_AGREEMENT = 0.9

needs_qnn = pytest.mark.skipif(qnn.unavailable() is not None, reason=str(qnn.unavailable()))


@pytest.fixture(scope="module")
def images(trained_run: Path) -> dict[str, np.ndarray]:
    """Calibration images (training split) and held-out ones (validation + test), uint8, with their labels."""
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    splits = load_run(trained_run).splits()
    held = (splits.val + splits.test)[:HELD_OUT]
    return {"calibration": load_images(splits.root, splits.train[:32], (IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8),
            "x": load_images(splits.root, held, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.uint8),
            "y": np.array([it.label for it in held])}


def _meta(float_onnx: Path, mode: str) -> dict[str, Any]:
    from edgetl.runtime.metadata import read_onnx_metadata

    meta = read_onnx_metadata(float_onnx)
    assert meta is not None
    return {**meta, "format": "qnn", "quantization": mode}


def _export(files: dict[str, Path], out: Path, mode: str = "int8", **kwargs: Any) -> Any:
    from edgetl.export.formats.qnn import export_qnn

    src = files["onnx-none"]
    return export_qnn(src, out / f"model-{mode}.onnx", mode, meta=_meta(src, mode), **kwargs)


@pytest.fixture(scope="module")
def int8_files(files: dict[str, Path], images: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Any:
    if qnn.unavailable():
        pytest.skip(str(qnn.unavailable()))
    return _export(files, tmp_path_factory.mktemp("qnn"), calibration=images["calibration"])


def _probs(runner_cls: type, path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of a file, its runner closed afterwards (the emulated HTP runs one session of a graph at a time)."""
    runner = runner_cls(path, None)
    try:
        runner.finish_metadata(None, runner.spatial_size(), runner.num_outputs, None, None)
        return runner.predict(x)
    finally:
        runner.close()


@needs_qnn
def test_qnn_file_runs_wholly_on_the_htp_and_agrees_with_cpu_kernels(int8_files: Any, images: dict[str, np.ndarray],
                                                                      files: dict[str, Path]) -> None:
    from edgetl.runtime.onnxrt import OnnxRunner

    support = qnn.htp_support(int8_files.portable)
    assert support["compatible"] and not support["rejected"] and support["error"] is None
    assert {"Conv", "Gemm", "Softmax"} <= {s["op"] for s in support["supported"]}
    runner = qnn.QnnRunner(int8_files.portable, None)
    try:  # CPU fallback disabled, and the QNN provider is the one that runs the file
        assert runner.session.get_session_options().get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
        assert runner.session.get_providers()[0] == qnn.EP_NAME
        assert runner.batch_fixed == 1 and runner.input_dtype == "float32"
    finally:
        runner.close()
    x = images["x"]
    htp = _probs(qnn.QnnRunner, int8_files.portable, x)
    cpu = _probs(OnnxRunner, int8_files.portable, x)
    float32 = _probs(OnnxRunner, files["onnx-none"], x)
    assert htp.shape == (len(x), 4)
    np.testing.assert_allclose(htp.sum(axis=1), 1.0, atol=0.05)
    # The same QDQ graph in two runtimes: near-ties may flip (ONNX Runtime's x86 U8S8 kernels round differently;
    # here they were further from float than the HTP: 0.83 against 0.96 top-1), a broken contract would not agree.
    assert np.mean(htp.argmax(1) == cpu.argmax(1)) >= MIN_CPU_AGREEMENT
    assert np.abs(htp - cpu).mean() < 0.1
    assert np.mean(htp.argmax(1) == float32.argmax(1)) >= MIN_FLOAT_AGREEMENT
    assert np.abs(htp - float32).max() < 0.2


@needs_qnn
def test_qdq_file_is_in_the_htps_types_with_edgetls_metadata(int8_files: Any) -> None:
    import onnx
    from onnx import TensorProto, numpy_helper

    from edgetl.runtime.metadata import read_onnx_metadata

    model = onnx.load(str(int8_files.portable))
    inits = {i.name: i for i in model.graph.initializer}
    dq_types = {inits[n.input[0]].data_type for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    assert TensorProto.INT8 in dq_types and TensorProto.INT32 in dq_types  # int8 weights, int32 biases
    conv_scales = [numpy_helper.to_array(inits[n.input[1]]) for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits
                   and inits[n.input[0]].data_type == TensorProto.INT8 and len(inits[n.input[0]].dims) == 4]
    assert conv_scales and all(s.size > 1 for s in conv_scales)  # per output channel
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert int8_files.figures["bias_corrected"] > 0
    for path, kind in ((int8_files.portable, "portable"), (int8_files.context, "context")):
        meta = read_onnx_metadata(path)
        assert meta is not None and meta["format"] == "qnn" and len(meta["class_names"]) == 4
        assert meta["image_size"] == [IMAGE_SIZE, IMAGE_SIZE] and meta["batch"] == 1
        assert meta["qnn"]["file"] == kind and meta["qnn"]["soc"] == qnn.DEFAULT_SOC
        assert meta["qnn"]["activations"] == "uint8"
        assert detect_kind(path) == "qnn"  # the context by its EPContext node, the portable file by its metadata
    assert qnn.has_qnn_context(int8_files.context) and not qnn.has_qnn_context(int8_files.portable)
    assert not qnn.has_qnn_context(int8_files.portable.parent.parent / "nothing.onnx")


@needs_qnn
def test_epcontext_file_loads_and_matches_the_qdq_file(int8_files: Any, images: dict[str, np.ndarray]) -> None:
    import onnx

    model = onnx.load(str(int8_files.context))
    assert [n.op_type for n in model.graph.node] == ["EPContext"]  # the whole graph compiled for the SoC
    compat = {p.key: p.value for p in model.metadata_props}["ep_compatibility_info.QNNExecutionProvider"]
    assert f":{qnn.SOCS[qnn.DEFAULT_SOC].soc_model}:" in compat
    x = images["x"][:12]
    context = _probs(qnn.QnnRunner, int8_files.context, x)
    portable = _probs(qnn.QnnRunner, int8_files.portable, x)
    assert np.mean(context.argmax(1) == portable.argmax(1)) >= 0.9
    assert np.abs(context - portable).max() < 0.1


@needs_qnn
def test_sixteen_bit_activations_are_nearer_float_than_eight(files: dict[str, Path], images: dict[str, np.ndarray],
                                                             int8_files: Any, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto

    from edgetl.runtime.onnxrt import OnnxRunner

    out = _export(files, tmp_path, "int16x8", calibration=images["calibration"])
    model = onnx.load(str(out.portable))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = {inits[n.input[2]].data_type for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}
    assert zero_points == {TensorProto.UINT16}
    x = images["x"][:8]
    float32 = _probs(OnnxRunner, files["onnx-none"], x)
    int16 = np.abs(_probs(qnn.QnnRunner, out.context, x) - float32)
    int8 = np.abs(_probs(qnn.QnnRunner, int8_files.context, x) - float32)
    assert int16.max() < 0.1 and int16.mean() < int8.mean()


def _with_erf(src: Path, dst: Path) -> Path:
    """The float model with an Erf (which the QNN provider does not take) before its Softmax."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    erf = helper.make_node("Erf", [softmax.input[0]], ["logits_erf"], name="test_erf")
    softmax.input[0] = "logits_erf"
    model.graph.node.insert(list(model.graph.node).index(softmax), erf)
    onnx.save(model, str(dst))
    return dst


@needs_qnn
def test_an_op_the_htp_rejects_is_named(files: dict[str, Path], images: dict[str, np.ndarray], tmp_path: Path) -> None:
    from edgetl.export.formats.qnn import export_qnn

    model = _with_erf(files["onnx-none"], tmp_path / "erf.onnx")
    support = qnn.htp_support(model)
    assert {"op": "Erf", "node": "test_erf"} in [{k: r[k] for k in ("op", "node")} for r in support["rejected"]]
    assert "Erf" in next(r["reason"] for r in support["rejected"] if r["node"] == "test_erf")
    assert not support["compatible"]
    out = tmp_path / "out"
    with pytest.raises(ExportError) as err:
        export_qnn(model, out / "erf-int8.onnx", "int8", meta=_meta(files["onnx-none"], "int8"),
                   calibration=images["calibration"][:8])
    message = str(err.value)
    assert "Erf" in message and "\n" not in message and "fall back to the CPU" in message
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    with pytest.raises(ModelError) as err:  # the float file: its free batch axis fails every node
        qnn.QnnRunner(files["onnx-none"], None)
    assert "Cannot get shape" in str(err.value) and "Conv" in str(err.value)


def test_unknown_soc_is_one_line_listing_the_known_ones() -> None:
    with pytest.raises(UsageError) as err:
        qnn.get_soc("SM1234")
    message = str(err.value)
    assert "'SM1234'" in message and "\n" not in message
    assert all(name in message for name in qnn.SOCS)
    assert qnn.get_soc("sm8650") == qnn.get_soc(57) == qnn.SOCS["SM8650"]
    assert qnn.get_soc(None).name == qnn.DEFAULT_SOC


@needs_qnn
def test_soc_table_is_the_providers(tmp_path: Path) -> None:
    """Each chip name in the table is one the provider knows, with the soc_model id it records for it."""
    import onnx
    from onnx import TensorProto, helper

    # A quantized Relu (some of the SoCs, 8s Gen 3 and 7+ Gen 3, take no float ops at all).
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 3])
    qp = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("z", TensorProto.UINT8, [], [128])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q0"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq0"),
             helper.make_node("Relu", ["xd"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q1"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"], name="dq1")]
    graph = helper.make_graph(nodes, "g", [x], [y], qp)
    src = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ort, devices, htp = qnn.provider()
    for soc in qnn.SOCS.values():
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_provider_for_devices(devices, {"backend_path": htp, "soc_model": soc.name})
        out = tmp_path / f"{soc.name}.onnx"
        ort.ModelCompiler(opts, str(src), embed_compiled_data_into_model=True,
                          flags=int(ort.OrtCompileApiFlags.ERROR_IF_NO_NODES_COMPILED)).compile_to_file(str(out))
        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert f"ep_compatibility_info.{qnn.EP_NAME}" in props, (soc, props)
        compat = props[f"ep_compatibility_info.{qnn.EP_NAME}"]
        assert compat.split(":")[5] == str(soc.soc_model), soc


def test_missing_package_is_one_line_with_the_pip_command(monkeypatch: pytest.MonkeyPatch, files: dict[str, Path],
                                                          tmp_path: Path) -> None:
    from edgetl.export.formats.qnn import export_qnn

    monkeypatch.setattr(qnn, "_state", {})
    monkeypatch.setitem(sys.modules, "onnxruntime_qnn", None)  # import onnxruntime_qnn raises ImportError
    with pytest.raises(UsageError) as err:
        export_qnn(files["onnx-none"], tmp_path / "m.onnx", meta=None, calibration=np.zeros((1, 48, 48, 3), np.uint8))
    assert qnn.PIP_COMMAND in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError) as err:
        qnn.QnnRunner(files["onnx-none"], None)
    assert qnn.PIP_COMMAND in str(err.value)
    assert not list(tmp_path.iterdir())


def test_validation_log_is_read_per_node_unit() -> None:
    log = [
        "2026-12-07 07:09:10 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation PASSED for "
        "3 nodes in OrtNodeUnit (Conv) :",
        "\tOperator type: DequantizeLinear Node name: w_dq Node index: 1",
        "\tOperator type: Conv Node name: conv_1 Node index: 2",
        "\tOperator type: QuantizeLinear Node name: conv_1_q Node index: 3",
        "",
        "2026-12-07 07:09:10 [V:onnxruntime:, qnn_execution_provider.cc:1713 LogNodeSupport] Validation FAILED for "
        "1 nodes in OrtNodeUnit (Erf) :",
        "\tOperator type: Erf Node name: my_erf Node index: 4",
        "\tREASON : Operators of type `Erf` are not supported by QNN EP.",
        "2026-12-07 07:09:10 [V:onnxruntime:, base_op_builder.cc:40 AddToModelBuilder] trying to add node.",
        "\tOperator type: Mul Node name: not_a_unit Node index: 5",
    ]
    passed, failed = qnn.parse_validation(log)
    assert passed == [{"op": "Conv", "node": "conv_1"}]
    assert failed == [{"op": "Erf", "node": "my_erf", "reason": "Operators of type `Erf` are not supported by QNN EP."}]
    assert qnn.fallback_summary(failed + failed) == "Erf x2 (Operators of type `Erf` are not supported by QNN EP)"


@needs_qnn
def test_export_cli_writes_a_qnn_row_and_evaluate_gates_the_file(trained_run: Path, demo_dir: Path,
                                                                 tmp_path: Path) -> None:
    """`edgetl export RUN -f qnn --soc` -> a verified `qnn` row and both files -> `edgetl evaluate` gates the file."""
    import json
    import shutil

    from click.testing import CliRunner

    from edgetl.cli import main
    from edgetl.runtime.kinds import detect_kind

    out = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(trained_run), "-f", "qnn", "--soc", "SM8650", "-o", str(out),
                                       "--calibration-samples", "32", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "export_report.json").read_text())["rows"][0]
    assert (row["format"], row["mode"], row["status"]) == ("qnn", "int8", "ok")
    assert row["qnn"]["soc"] == "SM8650" and row["qnn"]["emulator_samples"] >= 1
    assert row["qnn"]["context_max_diff"] <= 0.15 and row["accuracy"] is not None
    context = out / row["path"]  # the report names files relative to its own folder
    portable = out / row["qnn"]["portable"]
    assert context.is_file() and portable.is_file() and context.name.endswith("-int8-qnn.onnx")
    assert detect_kind(context) == detect_kind(portable) == "qnn"  # by metadata: both are .onnx files

    holdout = tmp_path / "holdout"
    for folder in sorted(p for p in demo_dir.iterdir() if p.is_dir()):
        (holdout / folder.name).mkdir(parents=True)
        for f in sorted(folder.iterdir())[:3]:
            shutil.copy(f, holdout / folder.name / f.name)
    result = CliRunner().invoke(main, ["evaluate", str(context), "--data", str(holdout), "--min-accuracy", "0.0",
                                       "--json"])
    assert result.exit_code == 0, result.output
    accuracy = json.loads(result.output[result.output.index("{"):])["accuracy"]
    if accuracy < 1.0:
        result = CliRunner().invoke(main, ["evaluate", str(context), "--data", str(holdout), "--min-accuracy",
                                           f"{min(1.0, accuracy + 0.01):.4f}"])
        assert result.exit_code == 1, result.output
    result = CliRunner().invoke(main, ["export", str(trained_run), "-f", "qnn", "--soc", "SM1234", "-o",
                                       str(tmp_path / "bad")])
    assert result.exit_code == 2 and "unknown --soc 'SM1234'" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_int8_ranges_are_narrowed_where_it_pays_and_int16_keeps_min_max(files: dict[str, Path],
                                                                        images: dict[str, np.ndarray],
                                                                        tmp_path: Path) -> None:
    """uint8 activations get their least-error ranges (never wider than min/max; the scaled input and the
    probabilities exact); uint16 ones keep min/max, whose step is already fine."""
    import onnx
    from onnx import numpy_helper

    from edgetl.export.formats.qnn import preprocess, quantize_htp
    from edgetl.export.onnx_quant import input_scaling_nodes

    def scales(path: Path) -> dict[str, float]:
        model = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return {n.input[0]: float(inits[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"
                and n.input[0] not in inits and inits[n.input[1]].size == 1}

    pre = tmp_path / "pre.onnx"
    preprocess(files["onnx-none"], pre)
    got = {}
    for mode in ("int8", "int16x8"):
        for method in ("minmax", "mse"):
            dst = tmp_path / f"{mode}-{method}.onnx"
            quantize_htp(pre, dst, images["calibration"], mode, ranges=method)
            got[mode, method] = scales(dst)
    before, after = got["int8", "minmax"], got["int8", "mse"]
    assert set(before) == set(after)
    assert all(after[t] <= before[t] * (1 + 1e-6) for t in before)
    assert sum(after[t] < 0.99 * before[t] for t in before) >= 1, (before, after)
    model = onnx.load(str(pre))
    scaling = set(input_scaling_nodes(model, model.graph.input[0].name))
    scaled = [o for n in model.graph.node if n.name in scaling for o in n.output if o in before]
    output = model.graph.output[0].name
    exact = scaled[-1:] + [t for t in (output, f"{output}_QuantizeLinear_Input") if t in before]
    assert len(exact) == 2 and all(after[t] == before[t] for t in exact), exact
    assert got["int16x8", "mse"] == got["int16x8", "minmax"]
