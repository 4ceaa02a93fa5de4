"""Bad input end to end, through the CLI: one 'error:' line, the right exit code, no traceback, nothing left behind.

Also: disk full / read-only outputs (simulated with monkeypatch), Keras safe mode, TF-Hub handle schemes.
Most cases run in-process with CliRunner; two subprocesses prove that a real process prints no traceback.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from edgetl.cli import main

ROOT = Path(__file__).resolve().parent.parent
TIGHT = ["--min-seconds", "0", "--max-seconds", "1", "--runs", "1", "--warmup", "0"]  # benchmark: fast


# ----------------------------------------------------------------------------------------------
# helpers


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(result: Result, code: int = 2, *needles: str) -> str:
    """Exit `code`, exactly one 'error: ' line (warnings may precede it), no traceback; return the line."""
    out = result.output
    assert "Traceback" not in out, out
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    assert result.exit_code == code, (result.exit_code, out)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    line = errors[0]
    assert "internal error" not in line, line
    for n in needles:
        assert n.lower() in line.lower(), (n, line)
    return line


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under folder with its size and mtime: to prove that nothing was added or touched."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()}


def bomb_png(path: Path, w: int = 100_000, h: int = 100_000) -> None:
    """A valid PNG header claiming w x h pixels (10 gigapixels) with a tiny body: a decompression bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny clean data set (4 classes x 6 images) to copy and spoil."""
    from edgetl.data.demo import write_demo_data

    d = tmp_path_factory.mktemp("rel") / "clean"
    write_demo_data(d, per_class=6, seed=1, size_range=(40, 64))
    return d


def spoiled(small_data: Path, tmp: Path, how: str) -> Path:
    """A copy of the clean data set spoiled in one way."""
    from edgetl.data.demo import write_messy_files

    d = tmp / f"data-{how}"
    shutil.copytree(small_data, d, symlinks=True)
    cls = d / sorted(os.listdir(d))[0]
    if how == "messy":  # zero-byte, truncated, text-named-png, plus readable odd ones (1x1, CMYK, 16-bit...)
        write_messy_files(cls)
    elif how == "bomb":
        bomb_png(cls / "bomb.png")
    elif how == "empty-class":
        (d / "zz_empty").mkdir()
    elif how == "only-bad":
        shutil.rmtree(d)
        for name in ("a", "b"):
            (d / name).mkdir(parents=True)
            (d / name / "x.jpg").write_bytes(b"")
            (d / name / "y.png").write_text("not a picture")
    elif how == "no-classes":
        shutil.rmtree(d)
        d.mkdir()
    elif how == "missing":
        shutil.rmtree(d)
    return d


# ----------------------------------------------------------------------------------------------
# train: options, recipes, data


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--epochs", "10000000", "--epochs 10000000"),
    ("--epochs", "-1", "--epochs -1"),
    ("--batch-size", "0", "--batch-size 0"),
    ("--image-size", "100000", "--image-size 100000"),
    ("--image-size", "0", "--image-size 0"),
    ("--lr", "-1", "--lr"),
    ("--lr", "nan", "--lr nan"),
    ("--dropout", "1.5", "--dropout"),
    ("--val-split", "2", "--val-split"),
    ("--max-bad-fraction", "inf", "--max-bad-fraction"),
    ("--seed", "-5", "--seed -5"),
    ("--seed", str(2**40), "--seed"),
    ("--alpha", "-1", "--alpha"),
    ("--patience", "-2", "--patience"),
    ("--fine-tune-layers", "-3", "--fine-tune-layers"),
])
def test_train_absurd_option_values(small_data: Path, tmp_path: Path, flag: str, value: str, needle: str) -> None:
    out = tmp_path / "run"
    r = invoke("train", small_data, "--weights", "none", "--image-size", "32", "-o", out, flag, value)
    assert_one_error(r, 2, needle)
    assert not out.exists()


RECIPES = {
    "unclosed-list": ("epochs: [1, 2\n", "not valid YAML"),
    "a-list": ("- 1\n- 2\n", "must be a mapping"),
    "a-scalar": ("just words\n", "must be a mapping"),
    "unknown-key": ("epoch: 3\n", "did you mean 'epochs'"),
    "wrong-type": ("epochs: many\n", "must be int"),
    "bool-for-int": ("batch_size: true\n", "must be int"),
    "nested": ("lr: {a: 1}\n", "must be float"),
    "tabs": ("epochs:\t3\n\tfoo: 1\n", "not valid YAML"),
    "binary": (b"\xff\xfe\x00\x01bad", "not UTF-8"),
    "negative": ("epochs: -3\n", "--epochs -3"),
    "huge-int-for-float": ("lr: " + "9" * 400 + "\n", "too large"),
    "null-key": ("~: 3\n", "unknown key"),
    "recursive-anchor": ("a: &a [*a]\n", "unknown key"),
    "python-tag": ("epochs: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_train_malformed_recipes(small_data: Path, tmp_path: Path, name: str) -> None:
    text, needle = RECIPES[name]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    r = invoke("train", small_data, "--config", recipe, "-o", tmp_path / "run")
    assert_one_error(r, 2, needle)
    assert not (tmp_path / "run").exists()


def test_train_recipe_missing_or_a_folder(small_data: Path, tmp_path: Path) -> None:
    assert_one_error(invoke("train", small_data, "--config", tmp_path / "nope.yaml"), 2, "does not exist")
    assert_one_error(invoke("train", small_data, "--config", tmp_path), 2, "is a folder")


@pytest.mark.parametrize(("how", "needle"), [
    ("messy", "--max-bad-fraction"),
    ("bomb", "too large"),
    ("empty-class", "has no readable images"),
    ("only-bad", "unreadable"),
    ("no-classes", "no class folders"),
    ("missing", "does not exist"),
])
def test_train_bad_data_folders(small_data: Path, tmp_path: Path, how: str, needle: str) -> None:
    data = spoiled(small_data, tmp_path, how)
    before = snapshot(data) if data.exists() else {}
    out = tmp_path / "run"
    extra = ["--max-bad-fraction", "0"] if how == "bomb" else []
    r = invoke("train", data, "--weights", "none", "--image-size", "32", "--epochs", "1", "-o", out, *extra)
    assert_one_error(r, 2, needle)
    assert not out.exists()
    assert (snapshot(data) if data.exists() else {}) == before  # the data is never touched


def test_scan_survives_symlink_loops_and_reports_unreadable_files(small_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink loop ends (no hang), a linked-to-itself file and an unreadable file are reported, not fatal."""
    from PIL import Image

    import edgetl.data as data_mod

    d = spoiled(small_data, tmp_path, "clean")
    cls = d / sorted(os.listdir(d))[0]
    os.symlink("..", cls / "loop")  # a folder loop back to the data root
    os.symlink("b.jpg", cls / "a.jpg")  # a file loop
    os.symlink("a.jpg", cls / "b.jpg")
    secret = cls / sorted(p.name for p in cls.iterdir() if p.suffix in (".png", ".jpg") and not p.is_symlink())[0]
    # Tests run as root, where mode 000 is not enforced: simulate EACCES at open instead.
    real_open = Image.open

    def guarded(fp: Any, *a: Any, **k: Any) -> Any:
        if str(fp) == str(secret):
            raise PermissionError(errno.EACCES, "Permission denied", str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(data_mod.decode.Image, "open", guarded)
    splits = data_mod.scan_folder(str(d), val_split=0.2, test_split=0.1, seed=0, max_bad_fraction=0.5)
    reasons = dict(splits.skipped)
    assert any("symlink loop" in r for r in reasons.values()), reasons
    assert any("permission denied" in r for r in reasons.values()), reasons
    all_items = splits.train + splits.val + splits.test
    assert all("loop/" not in it.path for it in all_items)


# ----------------------------------------------------------------------------------------------
# evaluate / predict / inspect / benchmark / export on files that are not models


def _not_models(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in (".tflite", ".onnx", ".keras"):
        (folder / f"random{ext}").write_bytes(os.urandom(4096))
        (folder / f"empty{ext}").write_bytes(b"")
        out[f"random{ext}"] = folder / f"random{ext}"
        out[f"empty{ext}"] = folder / f"empty{ext}"
    with zipfile.ZipFile(folder / "zip.keras", "w") as z:  # a zip, but not a Keras archive
        z.writestr("hello.txt", "hi")
    out["zip.keras"] = folder / "zip.keras"
    sm = folder / "saved_model"
    sm.mkdir(exist_ok=True)
    (sm / "saved_model.pb").write_bytes(os.urandom(256))
    out["saved_model-random"] = sm
    (folder / "weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    out["legacy.h5"] = folder / "weights.h5"
    (folder / "notes.txt").write_text("hello")
    out["text-file"] = folder / "notes.txt"
    out["missing"] = folder / "missing.tflite"
    return out


@pytest.fixture(scope="module")
def not_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _not_models(tmp_path_factory.mktemp("notmodels"))


NOT_MODELS = ["random.tflite", "empty.tflite", "random.onnx", "empty.onnx", "random.keras", "empty.keras",
              "zip.keras", "saved_model-random", "legacy.h5", "text-file", "missing"]


@pytest.mark.parametrize("command", ["evaluate", "predict", "inspect", "benchmark"])
@pytest.mark.parametrize("name", NOT_MODELS)
def test_not_a_model(not_models: dict[str, Path], small_data: Path, command: str, name: str) -> None:
    model = not_models[name]
    image = next((small_data / sorted(os.listdir(small_data))[0]).iterdir())
    args = {"evaluate": ["--data", small_data], "predict": [image], "inspect": [], "benchmark": TIGHT}[command]
    before = snapshot(model.parent)
    line = assert_one_error(invoke(command, model, *args), 2)
    assert model.name in line, line  # the line names the file it is about
    assert snapshot(model.parent) == before


def test_empty_model_file_says_so(not_models: dict[str, Path]) -> None:
    assert_one_error(invoke("inspect", not_models["empty.tflite"]), 2, "empty (0 bytes)")


def test_unreadable_model_file(not_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, mode 000 is not enforced: simulate EACCES on the model file where edgetl opens it.
    import builtins

    target = str(not_models["random.tflite"])
    real_open = builtins.open

    def guarded(file: Any, *a: Any, **k: Any) -> Any:
        if str(file) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    assert_one_error(invoke("inspect", target), 2, "permission denied")


@pytest.mark.parametrize("name", ["random.keras", "empty.tflite", "missing", "saved_model-random"])
def test_export_of_something_that_is_not_a_run(not_models: dict[str, Path], tmp_path: Path, name: str) -> None:
    out = tmp_path / "export"
    assert_one_error(invoke("export", not_models[name], "-o", out), 2)
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# with a real model: absurd options, bad images, foreign classes, mismatched sizes


@pytest.mark.parametrize(("args", "needle"), [
    (["evaluate", "{run}", "--threads", "-1"], "--threads -1"),
    (["evaluate", "{run}", "--batch-size", "0"], "--batch-size 0"),
    (["evaluate", "{run}", "--top-k", "0"], "--top-k 0"),
    (["evaluate", "{run}", "--max-bad-fraction", "7"], "--max-bad-fraction 7"),
    (["evaluate", "{run}", "--min-accuracy", "1.5"], "--min-accuracy"),
    (["evaluate", "{run}", "--errors", "-1"], "--errors -1"),
    (["evaluate", "{run}", "--image-size", "100000"], "--image-size 100000"),
    (["predict", "{run}", "{image}", "--threads", "-1"], "--threads -1"),
    (["predict", "{run}", "{image}", "--batch-size", "0"], "--batch-size 0"),
    (["predict", "{run}", "{image}", "--top-k", "-5"], "--top-k -5"),
    (["predict", "{run}", "{image}", "--image-size", "100000"], "--image-size 100000"),
    (["inspect", "{run}", "--image-size", "-3"], "--image-size -3"),
    (["benchmark", "{run}", "--threads", "-1"], "--threads -1"),
    (["benchmark", "{run}", "--batch", "0"], "--batch 0"),
    (["benchmark", "{run}", "--runs", "100000000"], "--runs 100000000"),
    (["benchmark", "{run}", "--warmup", "-1"], "--warmup -1"),
    (["benchmark", "{run}", "--min-seconds", "-1"], "--min-seconds"),
    (["benchmark", "{run}", "--max-seconds", "nan"], "--max-seconds"),
    (["export", "{run}", "-q", "int8", "--calibration-samples", "0", "-o", "{tmp}/x"], "--calibration-samples 0"),
    (["export", "{run}", "--threads", "-1", "-o", "{tmp}/x"], "--threads -1"),
    (["export", "{run}", "-f", "onnx", "--opset", "99", "-o", "{tmp}/x"], "--opset 99"),
    (["export", "{run}", "--max-drop", "-1", "-o", "{tmp}/x"], "--max-drop"),
    (["export", "{run}", "-q", "int9", "-o", "{tmp}/x"], "int9"),
])
def test_absurd_option_values_with_a_model(trained_run: Path, demo_dir: Path, tmp_path: Path, args: list[str],
                                           needle: str) -> None:
    image = next(p for p in (demo_dir / sorted(os.listdir(demo_dir))[0]).iterdir() if p.is_file())
    before = snapshot(trained_run)
    filled = [a.format(run=trained_run, image=image, tmp=tmp_path) for a in args]
    assert_one_error(invoke(*filled), 2, needle)
    assert not (tmp_path / "x").exists()
    assert snapshot(trained_run) == before


def test_predict_reports_every_bad_image_and_still_predicts_the_rest(trained_run: Path, demo_dir: Path,
                                                                    tmp_path: Path) -> None:
    from edgetl.data.demo import write_messy_files

    folder = tmp_path / "imgs"
    write_messy_files(folder)
    bomb_png(folder / "bomb.png")
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    r = invoke("predict", trained_run, folder, "--json")
    line = assert_one_error(r, 2, "could not be read")
    assert "6 of" in line  # empty, truncated, text, bomb, two loop links
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    by_name = {Path(x["path"]).name: x for x in rows}
    assert "too large" in by_name["bomb.png"]["error"]
    assert "symlink loop" in by_name["loop_a.png"]["error"]
    assert "predictions" in by_name["tiny.png"]  # a 1x1 image is resized and predicted
    assert "predictions" in by_name["gray16.png"]


def test_images_of_any_size_are_resized_to_the_model(trained_run: Path, tmp_path: Path) -> None:
    """Data of another size than the model's input is fine: images are resized (1x1 up to 2000x1500)."""
    from PIL import Image

    names = json.loads((trained_run / "manifest.json").read_text())["class_names"]
    data = tmp_path / "sizes"
    for i, size in enumerate([(1, 1), (7, 300), (2000, 1500), (48, 48)]):
        d = data / names[i % len(names)]
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 30, 30)).save(d / f"img{i}.png")
    r = invoke("evaluate", trained_run, "--data", data, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["samples"] == 4


def test_evaluation_classes_the_model_does_not_know(trained_run: Path, demo_dir: Path, tmp_path: Path) -> None:
    names = json.loads((trained_run / "manifest.json").read_text())["class_names"]
    image = next(p for p in (demo_dir / names[0]).iterdir() if p.is_file())
    data = tmp_path / "foreign"
    for cls in (names[0], "zebra"):
        (data / cls).mkdir(parents=True)
        shutil.copy(image, data / cls / image.name)
    junit = tmp_path / "report.xml"
    r = invoke("evaluate", trained_run, "--data", data, "--junit", junit)
    assert_one_error(r, 2, "zebra", "the model knows")
    assert "zebra" in junit.read_text()  # CI still gets a report saying why
    empty = tmp_path / "emptycls"
    (empty / names[0]).mkdir(parents=True)
    assert_one_error(invoke("evaluate", trained_run, "--data", empty), 2, "no readable images")


@pytest.fixture()
def mismatched_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the run whose manifest says 64 px while its model takes 48 px."""
    run = tmp_path / "mismatch"
    shutil.copytree(trained_run, run)
    m = json.loads((run / "manifest.json").read_text())
    m["input"]["image_size"] = [64, 64]
    (run / "manifest.json").write_text(json.dumps(m))
    return run


@pytest.mark.parametrize("command", ["evaluate", "predict", "inspect", "benchmark", "export"])
def test_run_whose_manifest_and_model_disagree_on_size(mismatched_run: Path, demo_dir: Path, command: str) -> None:
    image = next(p for p in (demo_dir / sorted(os.listdir(demo_dir))[0]).iterdir() if p.is_file())
    args = {"evaluate": [], "predict": [image], "inspect": [], "benchmark": TIGHT,
            "export": ["--no-verify", "-o", str(mismatched_run / "x")]}[command]
    assert_one_error(invoke(command, mismatched_run, *args), 2, "takes 48x48", "says 64")


# ----------------------------------------------------------------------------------------------
# Never lose data: existing outputs, disk full, read-only folders


def test_existing_run_directory_is_not_overwritten(trained_run: Path, demo_dir: Path) -> None:
    before = snapshot(trained_run)
    r = invoke("train", demo_dir, "--weights", "none", "--image-size", "32", "-o", trained_run)
    assert_one_error(r, 2, "--force")
    assert snapshot(trained_run) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["write", "replace"])
def test_atomic_path_turns_os_errors_into_one_line_and_leaves_nothing(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     code: int, where: str) -> None:
    from edgetl.core import fileio
    from edgetl.core.errors import EdgetlError

    target = tmp_path / "out.json"
    target.write_text("old")
    if where == "replace":
        monkeypatch.setattr(fileio.os, "replace", _raiser(code))
        with pytest.raises(EdgetlError) as info:
            fileio.write_json(target, {"a": 1})
    else:
        with pytest.raises(EdgetlError) as info, fileio.atomic_path(target) as tmp, open(tmp, "wb") as f:
            f.write(b"half")
            raise OSError(code, os.strerror(code))
    msg = str(info.value)
    assert "\n" not in msg and str(target) in msg and os.strerror(code) in msg
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_path_on_a_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.core import fileio
    from edgetl.core.errors import EdgetlError

    monkeypatch.setattr(fileio.tempfile, "mkstemp", _raiser(errno.EROFS))
    with pytest.raises(EdgetlError, match="Read-only file system"):
        fileio.write_text(tmp_path / "x.txt", "hi")
    assert list(tmp_path.iterdir()) == []


def test_prepare_output_on_a_read_only_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl import rundir
    from edgetl.core.errors import EdgetlError

    monkeypatch.setattr(Path, "mkdir", _raiser(errno.EROFS))
    with pytest.raises(EdgetlError, match="cannot create output folder .*Read-only file system"):
        rundir.prepare_output(tmp_path / "ro" / "run", force=False)


def _raiser(code: int) -> Any:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("output", ["--junit", "--save-baseline", "--plots"])
def test_evaluate_outputs_on_a_full_disk(trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         output: str) -> None:
    from edgetl.core import fileio

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    name = {"--junit": "report.xml", "--save-baseline": "base.json", "--plots": "plots"}[output]
    existing = out_dir / "keep.txt"
    existing.write_text("mine")
    monkeypatch.setattr(fileio.os, "replace", _raiser(errno.ENOSPC))
    r = invoke("evaluate", trained_run, output, out_dir / name)
    assert_one_error(r, 2, "No space left on device")
    assert sorted(p.name for p in out_dir.iterdir()) == ["keep.txt"]  # no temp file, no partial target
    assert existing.read_text() == "mine"


def test_train_on_a_read_only_output_parent(small_data: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_mkdir = Path.mkdir
    ro = tmp_path / "ro"

    def mkdir(self: Path, *a: Any, **k: Any) -> None:
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    r = invoke("train", small_data, "--weights", "none", "--image-size", "32", "--epochs", "1", "-o", ro / "run")
    assert_one_error(r, 2, "Read-only file system")
    assert not ro.exists()


# ----------------------------------------------------------------------------------------------
# Security: Keras safe mode, TF-Hub handles


@pytest.fixture(scope="module")
def lambda_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .keras classifier with a Lambda layer: code that safe mode refuses to deserialise."""
    from edgetl.cli.kit import load_tensorflow

    load_tensorflow()
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    folder = tmp_path_factory.mktemp("lambda")
    path = folder / "lambda.keras"
    model.save(path)
    (folder / "labels.txt").write_text("a\nb\n")
    return path


@pytest.mark.parametrize("command", ["evaluate", "predict", "inspect", "benchmark"])
def test_keras_lambda_needs_unsafe(lambda_model: Path, demo_dir: Path, command: str) -> None:
    image = next(p for p in (demo_dir / sorted(os.listdir(demo_dir))[0]).iterdir() if p.is_file())
    args = {"evaluate": ["--data", demo_dir], "predict": [image], "inspect": [], "benchmark": TIGHT}[command]
    assert_one_error(invoke(command, lambda_model, *args), 2, "safe mode", "--unsafe")


def test_keras_lambda_loads_with_unsafe(lambda_model: Path) -> None:
    r = invoke("inspect", lambda_model, "--unsafe", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == 2


@pytest.mark.parametrize("handle", ["http://tfhub.dev/x/1", "ftp://host/model", "file:///etc/passwd",
                                    "gs://bucket/model", "HTTP://tfhub.dev/x"])
def test_hub_handles_other_than_https_are_refused(handle: str, small_data: Path, tmp_path: Path) -> None:
    from edgetl.core.errors import UsageError
    from edgetl.model.backbones import resolve_backbone

    with pytest.raises(UsageError, match="https"):
        resolve_backbone(f"hub:{handle}")
    r = invoke("train", small_data, "--backbone", f"hub:{handle}", "-o", tmp_path / "run")
    assert_one_error(r, 2, "https")
    assert not (tmp_path / "run").exists()


def test_hub_https_and_local_paths_are_accepted(tmp_path: Path) -> None:
    from edgetl.model.backbones import resolve_backbone

    assert resolve_backbone("hub:https://tfhub.dev/google/x/1").kind == "hub"
    assert resolve_backbone(f"hub:{tmp_path}").name == str(tmp_path)


# ----------------------------------------------------------------------------------------------
# Real processes: no traceback reaches the terminal


def _cli(*args: Any, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGETL_DEBUG": ""}
    env.pop("EDGETL_DEBUG")
    return subprocess.run([sys.executable, "-m", "edgetl", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.fixture()
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_subprocess_bad_recipe_and_bad_model_print_one_line(small_data: Path, not_models: dict[str, Path],
                                                            workdir: Path) -> None:
    recipe = workdir / "r.yaml"
    recipe.write_text("epochs: [1, 2\n")
    for args in (["train", small_data, "--config", recipe], ["inspect", not_models["random.onnx"]],
                 ["evaluate", not_models["random.tflite"], "--data", small_data]):
        p = _cli(*args, cwd=workdir)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr + p.stdout
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert sorted(x.name for x in workdir.iterdir()) == ["r.yaml"]


def test_export_on_a_full_disk_leaves_nothing(trained_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while a .tflite is written: one line, exit 2, no file and no staging file left."""
    import errno

    import edgetl.export.formats.tflite as tfl
    from edgetl.core.fileio import atomic_path

    def full_disk(path: Any, data: bytes) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tfl, "write_bytes", full_disk)
    out = tmp_path / "export"
    line = assert_one_error(invoke("export", trained_run, "--no-verify", "-o", out), 2, "No space left")
    assert "export" in line and out.name in line, line  # which write failed, and where
    left = [p.name for p in out.rglob("*")] if out.exists() else []
    assert not [n for n in left if n.endswith(".tflite") or n.startswith(".")], left


# ----------------------------------------------------------------------------------------------
# What a newcomer meets (#30): outputs that cannot be created, damaged artifacts, degenerate numbers.
# Each is closed as a class: every command with an output, every kind of artifact.


def _uncreatable(tmp_path: Path, how: str) -> Path:
    """A folder path that cannot be created: under /proc (the kernel refuses it), or under a file."""
    if how == "proc":
        return Path("/proc/edgetl-nope")
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    return blocker / "sub"


OUTPUTS = {
    "train": lambda run, data, out: ["train", data, "--weights", "none", "--image-size", "32", "--epochs", "1",
                                     "--output", out],
    "export": lambda run, data, out: ["export", run, "--output", out],
    "optimize": lambda run, data, out: ["optimize", run, "--method", "prune", "--output", out],
    "evaluate --junit": lambda run, data, out: ["evaluate", run, "--junit", out / "gate.xml"],
    "evaluate --save-baseline": lambda run, data, out: ["evaluate", run, "--save-baseline", out / "base.json"],
    "evaluate --plots": lambda run, data, out: ["evaluate", run, "--plots", out],
    "benchmark --plot": lambda run, data, out: ["benchmark", run, "--plot", out / "bench.png", *TIGHT],
    "demo-data": lambda run, data, out: ["demo-data", out, "--per-class", "3"],
}


@pytest.mark.parametrize("how", ["proc", "under-a-file"])
@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_every_output_that_cannot_be_created(trained_run: Path, small_data: Path, tmp_path: Path, command: str,
                                             how: str) -> None:
    out = _uncreatable(tmp_path, how)
    before = snapshot(tmp_path), snapshot(trained_run)
    line = assert_one_error(invoke(*OUTPUTS[command](trained_run, small_data, out)), 2)
    assert str(out) in line and "internal error" not in line
    assert (snapshot(tmp_path), snapshot(trained_run)) == before, "a refused command leaves nothing behind"


@pytest.fixture(scope="module")
def damaged_runs(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the shared run, each with one artifact spoiled the way a bad copy or a full disk spoils it."""
    root = tmp_path_factory.mktemp("damaged")
    model = (trained_run / "model.keras").read_bytes()
    spoils = {"garbage model.keras": ("model.keras", os.urandom(2048)),
              "truncated model.keras": ("model.keras", model[: len(model) // 2]),
              "empty model.keras": ("model.keras", b""),
              "garbage manifest.json": ("manifest.json", b"\x00\x01{not json"),
              "manifest.json a list": ("manifest.json", b"[1, 2]")}
    out = {}
    for i, (name, (file, data)) in enumerate(spoils.items()):
        d = root / f"run{i}"
        shutil.copytree(trained_run, d, ignore=shutil.ignore_patterns("export", "edgetl-test-exports"))
        (d / file).write_bytes(data)
        out[name] = d
    return out


DAMAGE_COMMANDS = {
    "export": lambda run, data, tmp: ["export", run, "-f", "tflite", "--no-verify", "-o", tmp / "x"],
    "evaluate": lambda run, data, tmp: ["evaluate", run, "--data", data],
    "predict": lambda run, data, tmp: ["predict", run, data],
    "inspect": lambda run, data, tmp: ["inspect", run],
    "benchmark": lambda run, data, tmp: ["benchmark", run, *TIGHT],
    "optimize": lambda run, data, tmp: ["optimize", run, "--method", "qat", "-o", tmp / "x"],
    "train --resume": lambda run, data, tmp: ["train", "--resume", run],
}


@pytest.mark.parametrize("command", sorted(DAMAGE_COMMANDS))
@pytest.mark.parametrize("damage", ["garbage model.keras", "truncated model.keras", "empty model.keras",
                                    "garbage manifest.json", "manifest.json a list"])
def test_every_command_on_a_damaged_run(damaged_runs: dict[str, Path], small_data: Path, tmp_path: Path,
                                        command: str, damage: str) -> None:
    run = damaged_runs[damage]
    before = snapshot(run)
    r = invoke(*DAMAGE_COMMANDS[command](run, small_data, tmp_path))
    if command == "train --resume" and r.exit_code == 0:  # a complete run: resume never opens its model
        assert "already complete" in r.output and "model.keras" in damage
        return
    line = assert_one_error(r, 2)
    artifact = "model.keras" if "model.keras" in damage else "manifest.json"
    assert artifact in line, line
    assert "file not found" not in line.lower(), "the file is there: say it is damaged"
    assert not (tmp_path / "x").exists() and snapshot(run) == before


@pytest.mark.parametrize(("flag", "name", "data", "needle"), [
    ("--backbone", "base.keras", os.urandom(1024), "damaged or not a Keras file"),
    ("--backbone", "empty.keras", b"", "damaged or not a Keras file"),
    ("--weights", "weights.h5", os.urandom(1024), "cannot load weights"),
    ("--weights", "truncated.h5", b"\x89HDF\r\n\x1a\n", "cannot load weights"),
    ("--class-weights", "weights.yaml", b"\xff\xfe\x00[", "--class-weights"),
])
def test_train_on_damaged_input_files(small_data: Path, tmp_path: Path, flag: str, name: str, data: bytes,
                                      needle: str) -> None:
    (tmp_path / name).write_bytes(data)
    extra = ["--alpha", "0.35"] if flag == "--weights" else ["--weights", "none"]
    r = invoke("train", small_data, "--image-size", "32", "--epochs", "1", "-o", tmp_path / "run", flag,
               tmp_path / name, *extra)
    line = assert_one_error(r, 2, needle)
    assert "file not found" not in line.lower()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--epochs", "0"], "--epochs 0"),
    (["--fine-tune-layers", "2", "--fine-tune-epochs", "0"], "fine-tunes nothing"),
])
def test_train_degenerate_numbers(small_data: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "run"
    r = invoke("train", small_data, "--weights", "none", "--image-size", "32", "-o", out, *args)
    assert_one_error(r, 2, needle)
    assert not out.exists()
