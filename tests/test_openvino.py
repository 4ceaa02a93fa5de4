"""OpenVINO IR files: each mode written from the frozen float graph, run in OpenVINO Runtime against Keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgetl.core.errors import ExportError, ModelError, UsageError
from tests.conftest import IMAGE_SIZE

pytest.importorskip("openvino")

CALIBRATION = 32  # training images: enough for the int8 ranges on the tiny model, cheap on 2 cores


@pytest.fixture(scope="module")
def held_and_calib(trained_run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(held-out uint8 images, labels, Keras probabilities on them, uint8 calibration images) of the run."""
    from edgetl.core.progress import Reporter
    from edgetl.export.images import ExportImages
    from edgetl.rundir import load_run

    run = load_run(trained_run)
    images = ExportImages(run, CALIBRATION, verify=True)
    x, y, _ = images.held_out()
    calib = images.calibration(Reporter(), np.uint8)
    probs = np.asarray(run.load_model().predict(x.astype(np.float32), verbose=0))
    assert y is not None
    return x, y, probs, calib


@pytest.fixture(scope="module")
def ir(trained_run: Path, held_and_calib: tuple[np.ndarray, ...], tmp_path_factory: pytest.TempPathFactory
       ) -> dict[str, Path]:
    """The run's IR folders in each mode, converted from the frozen forward pass (as the export does without ONNX)."""
    from edgetl.export.formats.openvino import export_openvino
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.export.metadata import build_metadata
    from edgetl.rundir import load_run

    run = load_run(trained_run)
    source = frozen_forward(run.load_model(), batch=None)
    out = tmp_path_factory.mktemp("openvino")
    return {mode: export_openvino(source, out / f"m-{mode}", mode, calibration=held_and_calib[3],
                                  meta=build_metadata(run, fmt="openvino", quantization=mode))
            for mode in ("none", "float16", "int8")}


def test_each_mode_runs_in_openvino_and_matches_keras(ir: dict[str, Path], trained_run: Path,
                                                      held_and_calib: tuple[np.ndarray, ...]) -> None:
    from edgetl.rundir import load_run
    from edgetl.runtime.openvino import open_openvino

    x, y, keras_probs, _ = held_and_calib
    names = load_run(trained_run).class_names
    sizes = {}
    for mode, folder in ir.items():
        assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
        with open_openvino(folder, threads=1) as r:
            assert (r.kind, r.image_size, r.class_names, r.quantization) == ("openvino", IMAGE_SIZE, names, mode)
            assert r.metadata["format"] == "openvino" and r.input_dtype == "float32"
            assert r.compiled_threads() == 1  # --threads reaches OpenVINO's CPU plugin
            probs = r.predict(x)
            sizes[mode] = r.size_bytes
            precisions = r.kernel_precisions()
        assert probs.shape == keras_probs.shape
        agreement = float(np.mean(probs.argmax(1) == keras_probs.argmax(1)))
        if mode == "none":
            np.testing.assert_allclose(probs, keras_probs, atol=1e-5)  # the float graph, exactly
        elif mode == "float16":
            np.testing.assert_allclose(probs, keras_probs, atol=2e-2)
        else:
            # edgetl's int8 graph: close to Keras, not equal (on this tiny model: 0.9+ agreement, max diff 0.1-0.3).
            assert agreement >= 0.75, agreement
            assert not np.allclose(probs, keras_probs, atol=1e-3)
        # The CPU plugin runs every convolution and the classifier on int8 kernels in the int8 IR, none in the others
        # (its execution graph names the float16 IR's kernels by their f16 weights).
        allowed = {"int8": {"u8", "i8"}, "float16": {"f16", "f32"}, "none": {"f32"}}[mode]
        assert set(precisions) <= allowed, (mode, precisions)
        assert sum(precisions.values()) >= 10, precisions
    # float16 weights halve the weights file; int8 quarters it (the int8 .xml is bigger: its FakeQuantize nodes).
    bins = {m: (ir[m] / "model.bin").stat().st_size for m in ir}
    assert bins["float16"] < 0.6 * bins["none"] and bins["int8"] < 0.4 * bins["none"], bins
    assert sizes["none"] == sum(p.stat().st_size for p in ir["none"].iterdir())


def test_int8_ir_holds_quantize_nodes_and_any_batch_gives_the_same_answers(ir: dict[str, Path],
                                                                           held_and_calib: tuple[np.ndarray, ...]
                                                                           ) -> None:
    from edgetl.export.formats.openvino import unquantized_ops
    from edgetl.runtime.openvino import open_openvino

    text = (ir["int8"] / "model.xml").read_text(encoding="utf-8")
    assert text.count('type="FakeQuantize"') >= 20
    assert 'type="FakeQuantize"' not in (ir["none"] / "model.xml").read_text(encoding="utf-8")
    x = held_and_calib[0][:5]
    with open_openvino(ir["int8"] / "model.xml") as r:  # the .xml itself opens as well as its folder
        assert unquantized_ops(r.model) == []  # edgetl's graph quantizes the first convolution and the classifier too
        whole = r.predict(x)
        one_by_one = np.concatenate([r.predict(x[i]) for i in range(len(x))])
        floats = r.predict(x.astype(np.float32), batch_size=2)
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)
    np.testing.assert_allclose(whole, floats, atol=1e-5)


def test_int8_ir_carries_edgetl_bias_correction(trained_run: Path, ir: dict[str, Path],
                                                held_and_calib: tuple[np.ndarray, ...], tmp_path: Path) -> None:
    """--no-bias-correction reaches the IR: the int8 graph is edgetl's, not a quantizer's the option cannot touch."""
    from edgetl.export.formats.openvino import export_openvino
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.rundir import load_run
    from edgetl.runtime.openvino import open_openvino

    source = frozen_forward(load_run(trained_run).load_model(), batch=None)
    plain = export_openvino(source, tmp_path / "plain", "int8", calibration=held_and_calib[3], bias_correction=False)
    x = held_and_calib[0]
    with open_openvino(plain) as a, open_openvino(ir["int8"]) as b:
        pa, pb = a.predict(x), b.predict(x)
    assert (plain / "model.bin").read_bytes() != (ir["int8"] / "model.bin").read_bytes()
    assert not np.allclose(pa, pb, atol=1e-4)


def test_ir_from_the_float_onnx_file_matches_too(trained_run: Path, held_and_calib: tuple[np.ndarray, ...],
                                                  tmp_path: Path) -> None:
    """The export converts the float .onnx it already wrote when there is one (faster than the GraphDef)."""
    import onnx

    from edgetl.export.formats.onnx import convert_onnx
    from edgetl.export.formats.openvino import export_openvino
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.rundir import load_run
    from edgetl.runtime.openvino import open_openvino, read_openvino_metadata

    run = load_run(trained_run)
    onnx.save(convert_onnx(frozen_forward(run.load_model(), batch=None)), str(tmp_path / "f.onnx"))
    out = export_openvino(tmp_path / "f.onnx", tmp_path / "ir", "none", meta={"class_names": run.class_names,
                                                                           "quantization": "none"})
    assert read_openvino_metadata(out) == {"class_names": run.class_names, "quantization": "none"}
    x, _, keras_probs, _ = held_and_calib
    with open_openvino(out) as r:
        np.testing.assert_allclose(r.predict(x), keras_probs, atol=1e-5)
    # Nothing of this machine in the file: convert_model's record of its temporary source is dropped.
    assert "f.onnx" not in (out / "model.xml").read_text(encoding="utf-8")


def test_bad_input_is_one_line(ir: dict[str, Path], tmp_path: Path) -> None:
    from edgetl.export.formats.openvino import export_openvino
    from edgetl.runtime.openvino import open_openvino

    (tmp_path / "empty").mkdir()
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.xml").write_bytes((ir["none"] / "model.xml").read_bytes())  # no .bin beside it
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "model.xml").write_text("<net name='x'><layers><broken")
    (junk / "model.bin").write_bytes(b"\0" * 16)
    cases = {tmp_path / "empty": "holds 0 .xml files", lone: "model.bin beside it", junk: "not a valid OpenVINO IR",
             tmp_path / "x.onnx": "not an OpenVINO IR"}
    for path, expected in cases.items():
        with pytest.raises(ModelError) as info:
            open_openvino(path)
        assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
    with open_openvino(ir["none"]) as r, pytest.raises(UsageError, match="Resize the images to 48 px"):
        r.predict(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(UsageError, match="openvino modes: none, float16, int8"):
        export_openvino("unused.onnx", tmp_path / "a", "dynamic")
    with pytest.raises(UsageError, match="needs calibration images"):
        export_openvino("unused.onnx", tmp_path / "b", "int8", calibration=np.zeros((0, 48, 48, 3), np.uint8))
    with pytest.raises(ExportError, match="OpenVINO conversion failed") as info:
        export_openvino(junk / "model.xml", tmp_path / "c", "none")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-written folder left


def test_accuracy_controlled_int8_reports_nncf_figures(trained_run: Path, held_and_calib: tuple[np.ndarray, ...]
                                                        ) -> None:
    """--auto's path: NNCF measures the float IR and its int8 model on the held-out images (a budget every file
    meets here, so no layer is reverted: the tight-budget search costs minutes, it is in BENCHMARKS.md)."""
    from edgetl.export.formats.openvino import convert_openvino, quantize_int8_within, unquantized_ops
    from edgetl.export.formats.saved_model import frozen_forward
    from edgetl.rundir import load_run

    x, y, keras_probs, calib = held_and_calib
    model = convert_openvino(frozen_forward(load_run(trained_run).load_model(), batch=None))
    out, figures = quantize_int8_within(model, calib, x, y, max_drop=1.0, threads=1)
    assert figures["float_accuracy"] == round(float(np.mean(keras_probs.argmax(1) == y)), 4)
    assert figures["drop"] == round(figures["float_accuracy"] - figures["accuracy"], 4)
    assert figures["float_ops"] == unquantized_ops(out) and len(figures["float_ops"]) <= 3
    assert sum(op.get_type_name() == "FakeQuantize" for op in out.get_ops()) >= 20
    with pytest.raises(UsageError, match="test or val split"):
        quantize_int8_within(model, calib, x, None, max_drop=0.01)


def test_export_writes_verified_openvino_rows_that_evaluate_predict_and_inspect_take(trained_run: Path,
                                                                                    tmp_path: Path) -> None:
    """`edgetl export RUN -f onnx -f openvino -q none -q int8`: rows of format openvino, verified in OpenVINO Runtime
    (the IR converted from the export's own float ONNX file), then the CI gate and the other commands take them."""
    import json

    from click.testing import CliRunner

    from edgetl.cli import main as cli
    from edgetl.runtime import detect_kind, read_metadata

    out = tmp_path / "export"
    res = CliRunner().invoke(cli, ["export", str(trained_run), "-f", "onnx", "-f", "openvino", "-q", "none", "-q",
                                   "float16", "-q", "int8", "--calibration-samples", "32", "--threads", "2",
                                   "--output", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rows = {(r["format"], r["mode"]): r for r in json.loads(res.stdout)["rows"]}
    assert set(rows) == {("onnx", "none"), ("onnx", "int8"), ("openvino", "none"), ("openvino", "float16"),
                         ("openvino", "int8")}
    for mode, tag in (("none", "float32"), ("float16", "float16"), ("int8", "int8")):
        row = rows[("openvino", mode)]
        assert row["status"] == "ok" and row["written"] and row["samples"] > 0, row
        folder = Path(row["path"])
        assert folder.name == f"mobilenet_v2_a0.35-{IMAGE_SIZE}-{tag}-openvino"
        assert sorted(p.name for p in folder.iterdir()) == ["model.bin", "model.xml"]
        assert detect_kind(folder) == detect_kind(folder / "model.xml") == "openvino"
        assert read_metadata(folder / "model.xml")["quantization"] == mode
    assert rows[("openvino", "none")]["max_abs_diff"] <= 1e-4  # float parity, as every float file
    assert rows[("openvino", "int8")]["agreement"] >= 0.75
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    int8 = Path(rows[("openvino", "int8")]["path"])
    data = json.loads((trained_run / "manifest.json").read_text())["data"]["root"]
    gate = CliRunner().invoke(cli, ["evaluate", str(int8 / "model.xml"), "--data", data, "--reference",
                                    str(trained_run), "--max-drop", "1.0", "--min-accuracy", "0.0", "--json"])
    assert gate.exit_code == 0, gate.output
    assert 0.5 < json.loads(gate.stdout)["accuracy"] < 1.0, gate.stdout
    strict = CliRunner().invoke(cli, ["evaluate", str(int8), "--data", data, "--min-accuracy", "1.0"])
    assert strict.exit_code == 1 and "error:" in strict.output  # the gate fails an openvino file like any other
    info = CliRunner().invoke(cli, ["inspect", str(int8), "--json"])
    assert info.exit_code == 0, info.output
    described = json.loads(info.stdout)
    assert described["kind"] == "openvino" and described["quantized"] and described["ops"]["FakeQuantize"] >= 20
    assert described["inputs"][0]["shape"] == [None, IMAGE_SIZE, IMAGE_SIZE, 3]
    pred = CliRunner().invoke(cli, ["predict", str(Path(rows[("openvino", "none")]["path"])), data, "--json"])
    assert pred.exit_code == 0, pred.output


def test_auto_keeps_edgetl_int8_ir_within_the_budget(trained_run: Path, tmp_path: Path) -> None:
    """--auto measures edgetl's int8 IR first and writes it when it meets --max-drop (NNCF's slower search only
    when it does not): its figures are the verification's, on the same held-out images."""
    from edgetl.export import export_run

    rep = export_run(trained_run, formats=("openvino",), quantize=("int8",), max_drop=1.0, accuracy_control=True,
                     calibration_samples=32, output=tmp_path, threads=2)
    row = rep.rows[0]
    figures = row["accuracy_control"]
    assert row["status"] == "ok" and row["written"], row
    assert figures["quantizer"] == "edgetl" and figures["float_ops"] == [], figures
    assert figures["accuracy"] == round(row["accuracy"], 4) and figures["drop"] == round(row["drop"], 4), (figures, row)


def test_accuracy_control_is_refused_where_it_does_not_apply(trained_run: Path, tmp_path: Path) -> None:
    from edgetl.export import export_run

    with pytest.raises(UsageError, match="applies to --format openvino") as info:
        export_run(trained_run, formats=("tflite",), quantize=("int8",), max_drop=0.01, accuracy_control=True,
                   output=tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="--auto needs --max-drop"):
        export_run(trained_run, formats=("openvino",), quantize=("int8",), accuracy_control=True, output=tmp_path)
    assert not any(tmp_path.iterdir())
