"""The tables: formats, checks, targets and runtime kinds are one record each, and the only place that names them.

Fast: no TensorFlow, no trained run; the .ort file is converted from a small hand-built ONNX model.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.core.errors import ModelError, UsageError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgetl"
# The tables, where format and kind names are data.
TABLES = {"edgetl/export/checks.py", "edgetl/export/targets.py", "edgetl/runtime/kinds.py",
          "edgetl/export/formats/__init__.py", "edgetl/export/formats/base.py"}


def test_unknown_names_are_one_line_errors_naming_the_known_ones() -> None:
    from edgetl.export.checks import get_check
    from edgetl.export.formats import FORMATS, get_format, plan_pairs
    from edgetl.export.targets import get_target
    from edgetl.runtime.kinds import KINDS, compatibility, get_kind

    for call, known in ((lambda: get_format("tflight"), FORMATS), (lambda: plan_pairs(["qnx"], ["none"]), FORMATS),
                        (lambda: get_target("snapdragn"), ["cpu", "gpu", "npu"]),
                        (lambda: get_check("tflmx"), ["gpu", "tflm"])):
        with pytest.raises(UsageError) as err:
            call()
        text = str(err.value)
        assert "\n" not in text and all(name in text for name in known), text
    for call in (lambda: get_kind("tensorrt"), lambda: compatibility("model.engine", "tensorrt")):
        with pytest.raises(ModelError) as err:
            call()
        assert "\n" not in str(err.value) and all(name in str(err.value) for name in KINDS)


def test_every_format_names_a_kind_modes_and_needs_that_exist() -> None:
    from edgetl.export.formats import FORMATS, NEEDS
    from edgetl.export.modes import MODES
    from edgetl.runtime.kinds import KINDS

    for f in FORMATS.values():
        assert f.kind in KINDS and f.modes and set(f.modes) <= set(MODES) and f.needs <= set(NEEDS), f.name
        assert set(f.batch_one) <= set(f.modes) and set(f.reference_graph) <= set(f.modes)
        # its files open as its kind: by suffix, or claimed by their content (a QNN .onnx file, by its metadata)
        assert KINDS[f.kind].matches_file(f.suffix, b"") or KINDS[f.kind].claims is not None or not f.suffix, f.name


def _tiny_onnx(path: Path, classes: list[str]) -> Path:
    """An image classifier in ONNX (mean colour -> softmax), with edgetl's metadata, as export writes it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(3 * len(classes), dtype=np.float32).reshape(3, len(classes)) / 100, "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(classes)])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = {"format": "ort", "quantization": "none", "class_names": classes, "image_size": [8, 8]}
    onnx.helper.set_model_props(model, {"edgetl": json.dumps(meta), "labels": "\n".join(classes)})
    onnx.save(model, str(path))
    return path


def test_an_ort_file_is_its_own_kind_and_reads_its_metadata(tmp_path: Path) -> None:
    """read_metadata on an .ort file used to fail with "not a TFLite model" while detect_kind said onnx."""
    from edgetl.export.formats.ort import export_ort
    from edgetl.runtime import detect_kind, open_model, read_metadata

    ort_path = export_ort(_tiny_onnx(tmp_path / "tiny.onnx", ["cat", "dog"]), tmp_path / "tiny.ort")
    assert detect_kind(ort_path) == "ort"
    meta = read_metadata(ort_path)
    assert meta is not None and meta["class_names"] == ["cat", "dog"] and meta["format"] == "ort"
    renamed = ort_path.rename(tmp_path / "tiny.bin")  # recognised by its file identifier, not only its suffix
    assert detect_kind(renamed) == "ort"
    with open_model(renamed) as runner:
        assert runner.kind == "ort" and runner.class_names == ["cat", "dog"] and runner.image_size == 8
        probs = runner.predict(np.full((2, 8, 8, 3), 100, np.float32))
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def _names() -> set[str]:
    from edgetl.export.formats import FORMATS

    return set(FORMATS) | {f.kind for f in FORMATS.values()}


def _literal_names(node: ast.AST) -> list[str]:
    """The string constants of a comparison's operand: a literal, or a tuple/list/set of literals."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def _engine(node: ast.AST) -> bool:
    """`engine == "tflite"`: the training's feature engine (LiteRT or TensorFlow), not a format."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
    return name == "engine"


def test_only_the_tables_and_a_formats_own_module_compare_with_its_name() -> None:
    """`fmt == "tflite"` (or `kind in ("onnx", "ort")`) outside the tables is how a new format gets forgotten."""
    names = _names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in TABLES:
            continue
        own = path.stem if rel.startswith("edgetl/export/formats/") else None
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare) or _engine(node.left):
                continue
            for operand in [node.left, *node.comparators]:
                hit = sorted(set(_literal_names(operand)) & names - {own})
                if hit:
                    found.append(f"{rel}:{node.lineno} compares with {', '.join(hit)}")
    assert not found, "ask the format/kind tables instead:\n" + "\n".join(found)


def test_the_comparison_check_catches_a_name_test() -> None:
    tree = ast.parse('if fmt in ("onnx", "ort") or kind == "tflite": pass')
    hits = [n for node in ast.walk(tree) if isinstance(node, ast.Compare)
            for o in [node.left, *node.comparators] for n in _literal_names(o) if n in _names()]
    assert sorted(hits) == ["onnx", "ort", "tflite"]


def test_a_new_format_is_its_record_and_its_writer(trained_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A format registered in the table alone is planned, written from the context's float ONNX file, verified in
    its runtime kind against Keras and reported: nothing in the job, plan or verification names it."""
    import onnx

    from edgetl.export import export_run
    from edgetl.export.formats import FLOAT_ONNX, FORMATS, ExportContext, Format, WriteRequest
    from edgetl.export.metadata import write_onnx_metadata
    from edgetl.runtime import open_model

    def write(ctx: ExportContext, req: WriteRequest) -> dict[str, str]:
        model = onnx.load(str(ctx.float_onnx()))
        write_onnx_metadata(model, req.meta)
        onnx.save(model, str(req.path))
        req.path.with_suffix(".json").write_text(json.dumps(req.meta), encoding="utf-8")  # a companion file
        return {"converted_from": ctx.float_onnx().name}

    monkeypatch.setitem(FORMATS, "onnx_copy", Format(
        name="onnx_copy", help="a copy of the float ONNX file", suffix=".onnx", modes=("none",), kind="onnx",
        write=write, needs=frozenset({FLOAT_ONNX}), file_name="{stem}-{tag}-copy{suffix}", companions=(".json",)))
    report = export_run(trained_run, formats=["onnx_copy"], output=tmp_path / "out", threads=2)
    row = report.rows[0]
    assert row["format"] == "onnx_copy" and row["status"] == "ok", row["status"]
    assert row["converted_from"] == "float32.onnx" and row["max_abs_diff"] < 1e-3
    assert ("convert", "onnx float32 (shared)") in [(p["phase"], p["file"]) for p in report.phases.rows]
    with open_model(row["path"]) as runner:
        assert runner.kind == "onnx" and runner.metadata["format"] == "onnx_copy"
    # The companion was moved into place beside the file, under its final name; nothing staged is left.
    assert json.loads(Path(row["path"]).with_suffix(".json").read_text())["format"] == "onnx_copy"
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir() if p.name.startswith(Path(row["path"]).stem)) == [
        ".json", ".onnx"]
    assert not list((tmp_path / "out").glob(".edgetl-staging-*"))


def test_a_format_option_no_planned_format_takes_is_refused(trained_run: Path) -> None:
    from edgetl.export.plan import ExportOptions, make_plan
    from edgetl.rundir import load_run

    with pytest.raises(UsageError) as err:
        make_plan(load_run(trained_run), ExportOptions(formats=("onnx",), format_options={"soc": "SM8650"}))
    assert "'soc'" in str(err.value) and "onnx" in str(err.value) and "\n" not in str(err.value)
