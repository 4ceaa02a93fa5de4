"""Exports that drop into the app runtimes: standard TFLite metadata read by MediaPipe Tasks, accelerator
checks, ONNX Runtime Mobile's format.

Tiny models only (MobileNetV2 alpha 0.35 at 48 px from the shared run, or a few layers built here).
MediaPipe is a dependency of edgetl: a test that needs it fails when it is absent (a broken install).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODES = ("none", "float16", "int8", "int8-full")


def _need_mediapipe() -> None:
    from edgetl.runtime import app_runtime

    assert app_runtime.available(), "mediapipe is a dependency of edgetl and does not import: pip install -e ."


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The shared run exported to TFLite in the four modes apps use: the export verifies them in MediaPipe."""
    from edgetl.export import export_run

    _need_mediapipe()
    out = tmp_path_factory.mktemp("app") / "export"
    return export_run(trained_run, formats=["tflite"], quantize=list(MODES), output=out, calibration_samples=32,
                      threads=2)


@pytest.fixture(scope="module")
def tflite_files(exported: Any) -> dict[str, Path]:
    files = {row["mode"]: Path(row["path"]) for row in exported.rows if row["format"] == "tflite"}
    assert set(files) == set(MODES), files
    return files


def _held_out(run: Path) -> tuple[np.ndarray, list[str]]:
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    r = load_run(run)
    splits = r.splits()
    size = tuple(r.manifest["input"]["image_size"])
    return load_images(splits.root, splits.test, size), [r.class_names[i.label] for i in splits.test]


def _litert_top1(path: Path, images: np.ndarray) -> np.ndarray:
    from edgetl.runtime import open_model

    runner = open_model(path)
    return np.argmax(np.asarray(runner.predict(images.astype(np.float32))), axis=1)


@pytest.mark.parametrize("mode", MODES)
def test_mediapipe_classifier_returns_label_names(tflite_files: dict[str, Path], trained_run: Path, mode: str) -> None:
    from edgetl.rundir import load_run
    from edgetl.runtime.app_runtime import classify

    path = tflite_files[mode]
    images, truth = _held_out(trained_run)
    names = load_run(trained_run).class_names
    result = classify(path, images)
    assert all(n in names for n in result.names), set(result.names) - set(names)  # never an empty category_name
    litert = [names[i] for i in _litert_top1(path, images)]
    agreement = np.mean([a == b for a, b in zip(result.names, litert, strict=True)])
    assert agreement >= 0.99, (mode, agreement)
    assert np.mean([a == b for a, b in zip(result.names, truth, strict=True)]) > 1.5 / len(names)  # better than chance


def test_standard_metadata_keeps_edgetl_metadata_and_says_what_the_app_needs(tflite_files: dict[str, Path],
                                                                          trained_run: Path) -> None:
    from edgetl.rundir import load_run
    from edgetl.runtime.app_runtime import read_standard_labels, standard_metadata_json
    from edgetl.runtime.metadata import read_tflite_metadata

    names = load_run(trained_run).class_names
    for mode, path in tflite_files.items():
        assert read_standard_labels(path) == names, mode
        assert read_tflite_metadata(path)["class_names"] == names, mode  # edgetl's own entry survives
        meta = standard_metadata_json(path)
        assert meta["min_parser_version"] == "1.0.0"
        tensor = meta["subgraph_metadata"][0]["input_tensor_metadata"][0]
        assert tensor["content"]["content_properties"]["color_space"] == "RGB"
        norm = tensor["process_units"][0]["options"]
        assert (norm["mean"], norm["std"]) == ([0.0], [1.0]), mode  # edgetl models take 0..255


def test_export_reports_mediapipe_per_file(exported: Any) -> None:
    from edgetl.export.verify import APP_SAMPLES

    for row in exported.rows:
        app = row["mediapipe"]
        assert app["status"] == "ok", (row["mode"], app)
        assert app["agreement"] >= 0.99 and app["empty_labels"] == 0
        assert 0.0 <= app["accuracy"] <= 1.0 and app["samples"] == min(row["samples"], APP_SAMPLES)


def test_export_fails_below_the_agreement_threshold(trained_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.core.errors import ExportError
    from edgetl.export import export_run
    from edgetl.rundir import load_run
    from edgetl.runtime import app_runtime

    _need_mediapipe()
    real = app_runtime.classify
    names = load_run(trained_run).class_names

    def off_by_one(path: Any, images: Any) -> Any:  # an app runtime that reads the labels one line off
        got = real(path, images)
        return app_runtime.AppResult([names[(names.index(n) + 1) % len(names)] for n in got.names], got.scores,
                                     got.indices)

    monkeypatch.setattr(app_runtime, "classify", off_by_one)
    out = tmp_path / "bad"
    with pytest.raises(ExportError, match="MediaPipe") as err:
        export_run(trained_run, formats=["tflite"], quantize=["none"], output=out, threads=2)
    assert "\n" not in str(err.value)
    assert err.value.report.rows[0]["failure"] == "app_runtime"
    assert not list(out.glob("*.tflite"))  # a file that failed is not written


def test_int8_input_file_is_reported_not_failed(trained_run: Path, tmp_path: Path) -> None:
    from edgetl.core.errors import ModelError
    from edgetl.export import export_run
    from edgetl.runtime.app_runtime import classify, read_standard_labels

    _need_mediapipe()
    report = export_run(trained_run, target="mcu", output=tmp_path / "mcu", calibration_samples=16, threads=2)
    row = report.rows[0]
    assert row["status"] == "ok" and row["mediapipe"]["status"].startswith("n/a")
    path = Path(row["path"])
    assert read_standard_labels(path)  # the labels are there for tools that take int8 input
    images, _ = _held_out(trained_run)
    with pytest.raises(ModelError, match="uint8/float32") as err:
        classify(path, images[:2])
    assert "\n" not in str(err.value)


def _small_tflite(path: Path, head: Any | None = None) -> Path:
    """A few layers converted straight with TFLiteConverter: a file no edgetl export wrote."""
    import keras
    import tensorflow as tf

    inp = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3, activation="softmax")(x)
    if head is not None:
        x = keras.layers.Lambda(head)(x)
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, x)).convert())
    return path


def _like_model_maker(path: Path, labels: list[str]) -> Path:
    """Standard metadata as MediaPipe Model Maker writes it (inputs scaled to 0..1), nothing of edgetl's."""
    from edgetl.runtime.app_runtime import metadata_tools

    tools = metadata_tools()
    writer = tools.image_classifier.MetadataWriter.create(bytearray(path.read_bytes()), [0.0], [255.0],
                                                          tools.writer.Labels().add(labels))
    data, _ = writer.populate()
    del writer
    path.write_bytes(bytes(data))
    return path


def test_file_from_another_tool_has_its_labels_read(tmp_path: Path) -> None:
    from edgetl.runtime.app_runtime import classify, read_standard_labels
    from edgetl.runtime.metadata import read_tflite_metadata

    _need_mediapipe()
    path = _like_model_maker(_small_tflite(tmp_path / "other.tflite"), ["cat", "dog", "fox"])
    assert read_tflite_metadata(path) is None
    assert read_standard_labels(path) == ["cat", "dog", "fox"]
    result = classify(path, np.full((2, 16, 16, 3), 128, np.uint8))
    assert set(result.names) <= {"cat", "dog", "fox"} and all(result.names)


def test_inspect_and_predict_read_another_tools_labels(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner
    from PIL import Image

    from edgetl.cli.main import main

    _need_mediapipe()
    path = _like_model_maker(_small_tflite(tmp_path / "maker.tflite"), ["cat", "dog", "fox"])
    assert not (tmp_path / "labels.txt").exists()
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    assert info["class_names"] == ["cat", "dog", "fox"]
    assert info["metadata"]["standard_metadata"]["normalization"] == {"mean": [0.0], "std": [255.0]}
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(main, ["predict", str(path), str(tmp_path / "photo.png"), "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert {p["label"] for p in line["predictions"]} <= {"cat", "dog", "fox"}, line


def test_gpu_report_names_an_op_the_delegate_lacks(tmp_path: Path, tflite_files: dict[str, Path]) -> None:
    import tensorflow as tf

    from edgetl.runtime.kinds import compatibility

    bad = _small_tflite(tmp_path / "topk.tflite", head=lambda t: tf.math.top_k(t, 2).values)
    gpu = compatibility(bad, "tflite")["gpu"]
    assert gpu["compatible"] is False
    assert gpu["unsupported_ops"] == ["TOPK_V2"]
    assert [n["op"] for n in gpu["unsupported_nodes"]] == ["TOPK_V2"]
    plain = compatibility(tflite_files["none"], "tflite")["gpu"]
    assert plain["compatible"] is True and plain["unsupported_ops"] == []
    assert plain["ops"]["CONV_2D"] > 10 and "DEPTHWISE_CONV_2D" in plain["ops"]


def test_analyzer_warnings_are_parsed_when_a_build_prints_them() -> None:
    from edgetl.runtime.compat import parse_analyzer_report

    text = ("Subgraph#0 main(T#0) -> [T#3]\n  Op#0 CONV_2D(T#0, T#1, T#2) -> [T#3]\n"
            "  Op#1 WHILE(T#3) -> [T#4]\nGPU COMPATIBILITY WARNING: Not supported op WHILE\n\n"
            "GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 1\n")
    parsed = parse_analyzer_report(text)
    assert [o["op"] for o in parsed["ops"]] == ["CONV_2D", "WHILE"]
    assert parsed["warnings"] == [{"subgraph": 0, "index": 1, "op": "WHILE", "message": "Not supported op WHILE"}]
    assert parsed["says_compatible"] is False


@pytest.fixture(scope="module")
def onnx_file(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.export import export_run

    report = export_run(trained_run, formats=["onnx"], quantize=["none"], output=tmp_path_factory.mktemp("onnx"),
                        verify=False)
    return Path(report.rows[0]["path"])


def test_ort_file_loads_and_matches_onnx(onnx_file: Path, tmp_path: Path, trained_run: Path) -> None:
    import onnxruntime as ort

    from edgetl.export.formats.ort import export_ort

    ort_path = export_ort(onnx_file, tmp_path / "model.ort")
    assert ort_path.read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffer identifier
    images, _ = _held_out(trained_run)
    x = images.astype(np.float32)
    a = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"])
    ya = a.run(None, {a.get_inputs()[0].name: x})[0]
    yb = b.run(None, {b.get_inputs()[0].name: x})[0]
    assert np.max(np.abs(ya - yb)) < 1e-4
    assert np.array_equal(ya.argmax(1), yb.argmax(1))
    assert b.get_modelmeta().custom_metadata_map["labels"].split("\n") == a.get_modelmeta().custom_metadata_map[
        "labels"].split("\n")


def test_onnx_mobile_usability_per_provider(onnx_file: Path) -> None:
    from edgetl.runtime.kinds import compatibility

    mobile = compatibility(onnx_file, "onnx")["onnx_mobile"]
    assert set(mobile["providers"]) == {"NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"}
    assert mobile["dynamic_inputs"]  # the batch is dynamic
    nnapi = mobile["providers"]["NNAPI"]
    # NNAPI needs fixed shapes: with the batch dynamic it takes little; fixed, it takes every node in one partition.
    assert nnapi["as_is"]["verdict"] != "yes"
    assert nnapi["fixed_shapes"]["supported_fraction"] == 1.0 and nnapi["fixed_shapes"]["partitions"] == 1


def test_target_gpu_strict_fails_naming_the_ops(trained_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The export's check runs on each file; here it is pointed at a real file with an op the delegate lacks."""
    import tensorflow as tf

    from edgetl.core.errors import ExportError
    from edgetl.export import export_run
    from edgetl.runtime import compat

    bad = _small_tflite(tmp_path / "topk.tflite", head=lambda t: tf.math.top_k(t, 2).values)
    real = compat.gpu_compatibility
    monkeypatch.setattr(compat, "gpu_compatibility", lambda path: real(bad))
    with pytest.raises(ExportError, match="TOPK_V2") as err:
        export_run(trained_run, target="gpu", strict=True, output=tmp_path / "strict", verify=False)
    assert "--target gpu" in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "strict").glob("*.tflite"))
    report = export_run(trained_run, target="gpu", output=tmp_path / "warn", verify=False)  # without --strict
    assert report.rows[0]["written"] and any("TOPK_V2" in w for w in report.warnings)
    assert report.rows[0]["compatibility"]["gpu"]["unsupported_ops"] == ["TOPK_V2"]


def test_export_ort_format_and_no_build_machine_paths(trained_run: Path, tmp_path: Path) -> None:
    """Every format written from a run in a temporary folder: no file carries that folder's path."""
    import onnxruntime as ort

    from edgetl.export import export_run
    from edgetl.rundir import load_run
    from edgetl.runtime import open_model

    report = export_run(trained_run, formats=["tflite", "onnx", "ort", "saved_model"], quantize=["none", "int8"],
                        output=tmp_path / "files", calibration_samples=16, threads=2)
    ort_rows = [r for r in report.rows if r["format"] == "ort"]
    assert [r["mode"] for r in ort_rows] == ["none", "int8"] and all(r["status"] == "ok" for r in ort_rows)
    runner = open_model(ort_rows[0]["path"])
    assert runner.class_names == load_run(trained_run).class_names and runner.metadata["format"] == "ort"
    runner.close()
    assert ort.InferenceSession(ort_rows[1]["path"]).get_inputs()[0].type == "tensor(float)"
    data_root = Path(load_run(trained_run).manifest["data"]["root"])
    roots = {str(trained_run), str(trained_run.resolve()), str(tmp_path), str(tmp_path.resolve()),
             str(Path.home()), str(data_root), str(data_root.parent)}
    shipped = [f for f in (tmp_path / "files").rglob("*") if f.is_file()]
    assert "README.md" in {f.name for f in shipped}, "the model card lies beside the files"
    for f in shipped:
        data = f.read_bytes()
        for root in roots:
            assert root.encode() not in data, (f.name, root)
    # The run's own card leaves the machine too (it is what a model page shows); the data folder goes by name.
    card = (trained_run / "README.md").read_text()
    assert f"`{data_root.name}`" in card and str(data_root.parent) not in card
