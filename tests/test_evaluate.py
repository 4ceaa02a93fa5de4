"""evaluate (the CI gate), benchmark, predict and inspect; and the project's accuracy-regression tests.

The accuracy-regression tests at the end evaluate the session's trained run (fixed demo data, seed 0)
and its exports on a fixed hold-out set (demo data, seed 1) with the `evaluate` gate, against the
figures recorded in tests/expected/accuracy.json within the tolerances stated there. To re-record
after an intended change: EDGETL_RECORD_ACCURACY=1 pytest tests/test_evaluate.py -k regression
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.core.errors import UsageError

EXPECTED = Path(__file__).parent / "expected" / "accuracy.json"


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixed evaluation images the run never saw: demo data drawn with another seed."""
    from edgetl.data.demo import write_demo_data

    dest = tmp_path_factory.mktemp("holdout") / "data"
    write_demo_data(dest, per_class=24, seed=1, size_range=(40, 96))
    return dest


def cli(*args: Any) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# The gate, on figures (no model needed)


def _result(acc: float = 0.8, recalls: dict[str, float | None] | None = None) -> dict[str, Any]:
    recalls = recalls if recalls is not None else {"a": 0.9, "b": 0.7, "c": None}
    per_class = {k: {"precision": 0.5, "recall": v, "f1": 0.5, "support": 0 if v is None else 10}
                 for k, v in recalls.items()}
    return {"model": {"path": "m.tflite", "kind": "tflite", "quantization": "int8-full"},
            "data": {"root": "d", "fingerprint": "abc"}, "accuracy": acc, "top_k": 1.0, "k": 3, "samples": 20,
            "per_class": per_class, "class_names": list(recalls), "confusion_matrix": [], "reference": None,
            "seconds": 1.5}


def test_gate_checks_and_boundaries() -> None:
    from edgetl.evaluate import gate

    checks = gate(_result(0.8), min_accuracy=0.8, max_drop=0.02, baseline={"accuracy": 0.82},
                  min_class_recall=0.75)
    by_name = {c.name: c for c in checks}
    assert by_name["min_accuracy"].passed  # equal to the threshold passes
    assert by_name["max_drop_vs_baseline"].passed and by_name["max_drop_vs_baseline"].value == pytest.approx(0.02)
    assert by_name["min_class_recall[a]"].passed
    assert not by_name["min_class_recall[b]"].passed and "recall of 'b' 0.7000 < minimum 0.7500" in \
        by_name["min_class_recall[b]"].message
    assert "min_class_recall[c]" not in by_name  # absent from the data: nothing to gate
    failed = gate(_result(0.79), min_accuracy=0.8, max_drop=0.01, baseline={"accuracy": 0.82})
    assert [c.passed for c in failed] == [False, False]
    assert "drop 0.0300 > allowed 0.0100" in failed[1].message


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"max_drop": 0.01}, "--max-drop needs something to compare with"),
    ({"min_agreement": 0.9}, "--min-agreement needs --reference"),
    ({"min_accuracy": 1.5}, "--min-accuracy 1.5 is out of range"),
    ({"min_class_recall": -0.1}, "--min-class-recall -0.1 is out of range"),
])
def test_gate_usage_errors(kwargs: dict[str, Any], expected: str) -> None:
    from edgetl.evaluate import gate

    with pytest.raises(UsageError, match=expected):
        gate(_result(), **kwargs)


def test_junit_xml_has_one_testcase_per_check_and_figures_in_failures(tmp_path: Path) -> None:
    from edgetl.evaluate import gate, write_junit

    result = _result(0.7)
    checks = gate(result, min_accuracy=0.8, min_class_recall=0.5)
    write_junit(tmp_path / "r.xml", result, checks)
    root = ET.parse(tmp_path / "r.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["min_accuracy", "min_class_recall[a]", "min_class_recall[b]"]
    assert suite.get("tests") == "3" and suite.get("failures") == "1"
    failure = cases[0].find("failure")
    assert "accuracy 0.7000 < minimum 0.8000" in failure.get("message") and "threshold: 0.8" in failure.text
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["accuracy"] == "0.7" and props["model"] == "m.tflite"
    write_junit(tmp_path / "none.xml", result, [])  # no gate asked for: one passing case
    cases = ET.parse(tmp_path / "none.xml").getroot().find("testsuite").findall("testcase")
    assert len(cases) == 1 and cases[0].find("failure") is None


def test_baseline_round_trip_and_bad_files(tmp_path: Path) -> None:
    from edgetl.evaluate import load_baseline, save_baseline

    save_baseline(_result(0.8125), tmp_path / "b.json")
    assert load_baseline(tmp_path / "b.json")["accuracy"] == 0.8125
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    for name, msg in (("missing.json", "does not exist"), ("bad.json", "cannot be read"),
                      ("other.json", "is not an edgetl baseline")):
        with pytest.raises(UsageError, match=msg):
            load_baseline(tmp_path / name)


# ----------------------------------------------------------------------------------------------
# evaluate on real files


def test_evaluate_json_junit_plots_errors_and_exit_codes(files: dict[str, Path], demo_dir: Path,
                                                         tmp_path: Path) -> None:
    model = files["tflite-none"]
    code, out, _ = cli("evaluate", model, "--data", demo_dir, "--json", "--errors", 3, "--plots", tmp_path / "p",
                       "--junit", tmp_path / "ok.xml", "--save-baseline", tmp_path / "base.json", "--top-k", 2)
    assert code == 0, out
    result = json.loads(out)  # one JSON object, nothing else on stdout
    assert 0.0 <= result["accuracy"] <= 1.0 and result["k"] == 2 and result["samples"] == 96
    assert result["model"]["kind"] == "tflite" and result["passed"] is True and result["checks"] == []
    assert set(result["per_class"]) == {"circles", "squares", "stripes", "triangles"}
    assert sum(map(sum, result["confusion_matrix"])) == 96
    wrong = 96 - round(result["accuracy"] * 96)
    assert len(result["errors"]) == min(3, wrong)
    assert (tmp_path / "p" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert ET.parse(tmp_path / "ok.xml").getroot().find("testsuite").get("failures") == "0"
    acc = result["accuracy"]
    # Same model against its own baseline: passes with any --max-drop; an impossible minimum fails with exit 1.
    code, out, err = cli("evaluate", model, "--data", demo_dir, "--baseline", tmp_path / "base.json",
                         "--max-drop", 0, "--min-accuracy", min(1.0, acc + 0.01) if acc < 1 else 1.0,
                         "--junit", tmp_path / "gate.xml")
    if acc < 1:
        assert code == 1, out + err
        assert one_error_line(err).startswith("error: accuracy gate failed (1 of 2 checks): accuracy")
        failure = ET.parse(tmp_path / "gate.xml").getroot().find("testsuite").find("testcase").find("failure")
        assert "minimum" in failure.get("message")
    code, _, err = cli("evaluate", model, "--data", demo_dir, "--min-accuracy", max(0.0, acc - 0.01),
                       "--min-class-recall", 0.0)
    assert code == 0, err


def test_evaluate_subset_unknown_classes_and_empty_data(files: dict[str, Path], demo_dir: Path,
                                                       tmp_path: Path) -> None:
    model = files["onnx-none"]
    subset = tmp_path / "subset"
    shutil.copytree(demo_dir / "circles", subset / "circles")
    code, out, err = cli("evaluate", model, "--data", subset, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 24 and result["data"]["classes"] == ["circles"]
    assert result["per_class"]["squares"]["support"] == 0
    shutil.copytree(demo_dir / "squares", subset / "sqaures")
    shutil.copytree(demo_dir / "squares", subset / "dogs")
    code, out, err = cli("evaluate", model, "--data", subset)
    assert code == 2
    line = one_error_line(err)
    assert "dogs" in line and "sqaures" in line and "circles, squares, stripes, triangles" in line
    (tmp_path / "empty").mkdir()
    code, _, err = cli("evaluate", model, "--data", tmp_path / "empty")
    assert code == 2 and "no class folders" in one_error_line(err)


def test_evaluate_int8_against_keras_reference(trained_run: Path, files: dict[str, Path], demo_dir: Path) -> None:
    """The figures against --reference are LiteRT's and Keras's own on the same images, and the gates use them."""
    import independent
    import numpy as np

    from edgetl.data import load_images, scan_folder

    every = scan_folder(demo_dir, val_split=0.0, test_split=0.0)
    x = load_images(every.root, every.train, (48, 48))
    names = json.loads((trained_run / "manifest.json").read_text())["class_names"]
    y = np.array([names.index(Path(it.path).parent.name) for it in every.train])
    keras_probs = independent.keras_probs(trained_run, x)
    mine = independent.figures(independent.runtime_probs("tflite", files["tflite-int8-full"], x), y, keras_probs)
    keras_acc = independent.figures(keras_probs, y, keras_probs).accuracy
    base = ["evaluate", files["tflite-int8-full"], "--data", demo_dir, "--reference", trained_run, "--json"]
    code, out, err = cli(*base, "--min-agreement", mine.agreement, "--max-drop", keras_acc - mine.accuracy)
    assert code == 0, err
    result = json.loads(out)
    ref = result["reference"]
    assert ref["model"]["kind"] == "keras" and result["samples"] == len(x) == 96
    assert result["accuracy"] == pytest.approx(mine.accuracy, abs=1e-4)
    assert ref["accuracy"] == pytest.approx(keras_acc, abs=1e-4)
    assert ref["agreement"] == pytest.approx(mine.agreement, abs=1e-4)
    assert ref["drop"] == pytest.approx(ref["accuracy"] - result["accuracy"])
    # One image more than measured fails each gate.
    code, _, err = cli(*base, "--min-agreement", mine.agreement + 1 / len(x))
    assert code != 0 and "agreement" in err
    code, _, err = cli(*base, "--max-drop", keras_acc - mine.accuracy - 1 / len(x))
    assert code != 0 and "drop" in err


def test_run_directory_is_evaluated_on_its_test_split(trained_run: Path) -> None:
    code, out, err = cli("evaluate", trained_run, "--json")
    assert code == 0, err
    result = json.loads(out)
    manifest = json.loads((trained_run / "manifest.json").read_text())
    assert result["data"]["source"] == "run test split"
    assert result["samples"] == len(manifest["data"]["test"])
    recorded = json.loads((trained_run / "metrics.json").read_text())["test"]["accuracy"]
    assert result["accuracy"] == pytest.approx(recorded, abs=1e-9)  # the same figure train wrote


@pytest.mark.parametrize(("args", "expected"), [
    (["--max-drop", "0.01"], "--max-drop needs something to compare with"),
    (["--min-accuracy", "90"], "--min-accuracy 90.0 is out of range"),
    (["--baseline", "/nonexistent/base.json", "--max-drop", "0.01"], "does not exist"),
    (["--top-k", "0"], "--top-k 0 is out of range"),
])
def test_evaluate_usage_errors_exit_2(args: list[str], expected: str, tmp_path: Path) -> None:
    code, _, err = cli("evaluate", tmp_path / "m.tflite", "--data", tmp_path, *args)
    assert code == 2 and expected in one_error_line(err)


def test_not_a_model_is_one_line_exit_2_without_traceback(tmp_path: Path, demo_dir: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_text("hello")
    code, _, err = cli("evaluate", bad, "--data", demo_dir, "--junit", tmp_path / "j.xml")
    assert code == 2 and "not a valid .tflite model" in one_error_line(err)
    # CI still gets a JUnit file that names the reason
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite").find("testcase").find("error") is not None
    # A real process, as CI runs it: exit 2, one line, no traceback, and no TensorFlow start-up for a .tflite.
    proc = subprocess.run([sys.executable, "-m", "edgetl", "evaluate", str(bad), "--data", str(demo_dir)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "EDGETL_DEBUG": ""})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------------
# benchmark, predict, inspect


def test_benchmark_table_json_and_plot(files: dict[str, Path], demo_dir: Path, tmp_path: Path) -> None:
    fast = ["--runs", 3, "--warmup", 1, "--min-seconds", 0, "--max-seconds", 5, "--batch", 4, "--threads", 1]
    code, out, err = cli("benchmark", files["tflite-none"], files["tflite-int8-full"], files["onnx-none"], *fast,
                         "--data", demo_dir, "--json", "--plot", tmp_path / "b.png")
    assert code == 0, err
    report = json.loads(out)
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    rows = report["results"]
    assert [r["format"] for r in rows] == ["tflite", "tflite", "onnx"]
    assert [r["mode"] for r in rows] == ["none", "int8-full", "none"]
    for r in rows:
        assert r["status"] == "ok" and r["latency"]["runs"] >= 3
        assert 0 < r["latency"]["p50_ms"] <= r["latency"]["p90_ms"]
        assert r["throughput"]["batch"] == 4 and r["throughput"]["images_per_s"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0 and r["images"] == 96
        assert r["size_bytes"] > 0
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = cli("benchmark", files["tflite-none"], *fast)
    assert code == 0 and "p50 ms" in out and "machine:" in out
    code, out, err = cli("benchmark", files["tflite-none"], tmp_path / "missing.onnx", *fast)
    assert code == 2 and "does not exist" in one_error_line(err)  # checked before anything is measured
    (tmp_path / "damaged.onnx").write_bytes(b"\x08garbage")
    code, out, err = cli("benchmark", files["tflite-none"], tmp_path / "damaged.onnx", *fast)
    assert code == 2 and "1 of 2 models could not be benchmarked" in one_error_line(err)
    assert "damaged.onnx" in out and "error" in out  # the failing row is still in the table


def test_predict_json_lines_folders_and_unreadable_images(files: dict[str, Path], demo_dir: Path,
                                                          tmp_path: Path) -> None:
    model = files["tflite-int8-full"]
    code, out, err = cli("predict", model, demo_dir / "circles", "--json", "--top-k", 2)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 24
    for line in lines:
        preds = line["predictions"]
        assert len(preds) == 2 and preds[0]["probability"] >= preds[1]["probability"]
        assert preds[0]["label"] in {"circles", "squares", "stripes", "triangles"}
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = sorted((demo_dir / "squares").iterdir())[0]
    code, out, err = cli("predict", model, good, bad)
    assert code == 2 and "1 of 2 images could not be read" in one_error_line(err)
    assert good.name in out  # the readable one was still predicted
    (tmp_path / "noimages").mkdir()
    code, _, err = cli("predict", model, tmp_path / "noimages")
    assert code == 2 and "holds no image files" in one_error_line(err)


def test_inspect_tflite_onnx_and_run(trained_run: Path, files: dict[str, Path]) -> None:
    code, out, err = cli("inspect", files["tflite-int8-full"], "--json")
    assert code == 0, err
    info = json.loads(out)
    inp = info["inputs"][0]
    assert inp["dtype"] in ("uint8", "int8") and inp["shape"][1:] == [48, 48, 3]
    assert inp["scale"] > 0 and inp["zero_point"] is not None
    assert info["ops"]["CONV_2D"] > 10 and info["op_total"] >= sum(info["ops"].values())
    assert info["parameters"] > 100_000 and info["metadata"]["quantization"] == "int8-full"
    assert info["embedded_metadata"] is True
    code, out, _ = cli("inspect", files["onnx-none"], "--json")
    onnx_info = json.loads(out)
    assert code == 0 and onnx_info["ops"]["Conv"] > 10 and onnx_info["parameters"] > 100_000
    code, out, _ = cli("inspect", trained_run)
    assert code == 0 and "Conv2D" in out and "parameters" in out and "circles" in out


# ----------------------------------------------------------------------------------------------
# Accuracy regression: the gate against recorded figures


REGRESSION_MODELS = ("keras", "tflite-none", "tflite-int8-full", "onnx-none")


def _regression_path(key: str, trained_run: Path, files: dict[str, Path]) -> Path:
    return trained_run if key == "keras" else files[key]


@pytest.mark.parametrize("key", REGRESSION_MODELS)
def test_accuracy_regression(key: str, trained_run: Path, files: dict[str, Path], holdout: Path,
                             tmp_path: Path) -> None:
    """Each artifact keeps its recorded accuracy on the fixed hold-out set, within the stated tolerance."""
    path = _regression_path(key, trained_run, files)
    if os.environ.get("EDGETL_RECORD_ACCURACY"):
        _record(key, path, holdout, tmp_path)
        pytest.skip("recorded")
    expected = json.loads(EXPECTED.read_text())
    recorded = expected["figures"][key]
    tol = expected["tolerance"]
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"edgetl_baseline": 1, "accuracy": recorded["accuracy"],
                                    "samples": recorded["samples"],
                                    "data": {"fingerprint": expected["data"]["fingerprint"]}}))
    args = ["evaluate", path, "--data", holdout, "--baseline", baseline, "--max-drop", tol["max_drop"], "--json",
            "--junit", tmp_path / "junit.xml"]
    if key == "tflite-int8-full":  # the quantized file is also gated against the Keras model it came from
        args += ["--reference", trained_run, "--min-agreement", tol["int8_min_agreement"]]
    code, out, err = cli(*args)
    result = json.loads(out)
    # Same images (names and count); byte sizes may differ with another Pillow's encoders, so the
    # fingerprint mismatch is only a warning of the gate, not a failure here.
    assert result["samples"] == recorded["samples"] == expected["data"]["images"], "the hold-out data changed"
    assert code == 0, f"{key}: {err.strip()} (recorded {recorded['accuracy']}, now {result['accuracy']})"
    # Much better than recorded is also a change to explain: re-record on purpose, not by accident.
    assert result["accuracy"] <= recorded["accuracy"] + tol["max_gain"], (
        f"{key} accuracy {result['accuracy']} is far above the recorded {recorded['accuracy']}: re-record with "
        "EDGETL_RECORD_ACCURACY=1 if the change is intended")


def _record(key: str, path: Path, holdout: Path, tmp_path: Path) -> None:
    code, out, err = cli("evaluate", path, "--data", holdout, "--json")
    assert code == 0, err
    result = json.loads(out)
    data = json.loads(EXPECTED.read_text()) if EXPECTED.is_file() else {}
    data.setdefault("about", "Accuracy of the session's trained run (tests/conftest.py trained_run: MobileNetV2 "
                    "alpha 0.35, bundled weights, 48 px, demo data seed 0) and its exports on a fixed hold-out set "
                    "(edgetl.demodata.write_demo_data per_class=24, seed=1, size_range=(40, 96)). Written by "
                    "EDGETL_RECORD_ACCURACY=1 pytest tests/test_evaluate.py -k regression.")
    # Measured spread over training seeds (see "tolerance_measured" in the file): tools/test_margins.py.
    data.setdefault("tolerance", {"max_drop": 0.12, "max_gain": 0.12, "int8_min_agreement": 0.88})
    data["data"] = {"per_class": 24, "seed": 1, "size_range": [40, 96], "images": result["samples"],
                    "fingerprint": result["data"]["fingerprint"]}
    data.setdefault("figures", {})[key] = {"accuracy": result["accuracy"], "top_k": result["top_k"],
                                           "samples": result["samples"],
                                           "recall": {k: v["recall"] for k, v in result["per_class"].items()}}
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(data, indent=2) + "\n")
