"""TensorFlow Lite Micro: the microcontroller file runs in TFLM's interpreter, with its arena, flash and op resolver."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.core.errors import ModelError

IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def mcu_export(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`edgetl export RUN --target mcu` within budgets, verified: its report row (TFLite int8-full, int8 I/O)."""
    from click.testing import CliRunner

    from edgetl.cli.main import main

    out = tmp_path_factory.mktemp("mcu")
    res = CliRunner().invoke(main, ["export", str(trained_run), "--target", "mcu", "--output", str(out),
                                    "--max-ram-kb", "4096", "--max-flash-kb", "4096"])
    assert res.exit_code == 0, res.output
    assert "RAM KB" in res.output and "TensorFlow Lite Micro" in res.output
    (row,) = json.loads((out / "export_report.json").read_text())["rows"]
    return dict(row, path=str(out / row["path"]))  # the report names files relative to its own folder


@pytest.fixture(scope="module")
def mcu_file(mcu_export: dict) -> Path:
    assert (mcu_export["mode"], mcu_export["io_type"]) == ("int8-full", "int8")
    return Path(mcu_export["path"])


@pytest.fixture(scope="module")
def held_out(trained_run: Path) -> tuple[np.ndarray, np.ndarray]:
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    splits = load_run(trained_run).splits()
    items = splits.val + splits.test
    return load_images(splits.root, items, (IMAGE_SIZE, IMAGE_SIZE)), np.array([it.label for it in items])


def test_tflm_runs_the_mcu_file_in_the_smallest_arena(mcu_file: Path, trained_run: Path) -> None:
    from edgetl.runtime.tflm import ARENA_ALIGNMENT, load_runtime, open_tflm

    with open_tflm(mcu_file) as r:
        assert r.kind == "tflm" and r.input_dtype == "int8" and r.image_size == IMAGE_SIZE
        assert r.class_names == json.loads((trained_run / "manifest.json").read_text())["class_names"]
        assert r.flash_bytes == mcu_file.stat().st_size
        arena = r.arena_bytes
        assert 10_000 < arena < r.flash_bytes  # activations of a 48 px MobileNetV2: tens of KB, less than the weights
        assert r.describe()["arena_bytes"] == arena
    # The figure is the smallest: TFLM allocates the file at it, and refuses one alignment step less.
    runtime = load_runtime()
    data = mcu_file.read_bytes()
    runtime.Interpreter.from_bytes(data, arena_size=arena)
    with pytest.raises(RuntimeError):
        runtime.Interpreter.from_bytes(data, arena_size=arena - ARENA_ALIGNMENT)


def test_tflm_top1_agrees_with_litert(mcu_file: Path, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    from edgetl.export.tflm_check import reference_kernel_outputs, softmax_logits
    from edgetl.runtime import open_model
    from edgetl.runtime.tflm import open_tflm

    x, y = held_out
    with open_tflm(mcu_file) as micro, open_model(mcu_file) as litert:
        a, b = micro.predict(x), litert.predict(x)
        step = float(micro.out["quantization_parameters"]["scales"][0])
    assert a.shape == b.shape == (len(x), 4)
    assert np.allclose(a.sum(1), 1.0, atol=0.05)  # int8 softmax probabilities
    # LiteRT's XNNPACK kernels round otherwise than TFLM's: near ties may flip, the rest agrees.
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.85
    assert (a.argmax(1) == y).mean() > 0.5  # 4 classes: far above chance
    # TFLM's kernels are ports of TFLite's reference kernels: the same outputs as LiteRT's, to the quantization step,
    # except where a kernel rounds a logit one step otherwise; the softmax then moves as far as that step moves it.
    ref, z, z_step = reference_kernel_outputs(mcu_file, x, softmax_logits(mcu_file))
    assert z is not None and z.shape == a.shape and z_step > 0
    assert (np.abs(a - ref) <= _one_logit_step_range(z, z_step) + step + 1e-6).all()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _one_logit_step_range(z: np.ndarray, z_step: float) -> np.ndarray:
    """By brute force: how far each softmax output moves at most when each logit moves by up to one step (its
    extremes are where its own logit goes one way and every other the other way)."""
    p = _softmax(z.astype(np.float64))
    out = np.zeros_like(p)
    for i in range(z.shape[1]):
        push = np.full(z.shape[1], -z_step)
        push[i] = z_step
        out[:, i] = np.maximum(_softmax(z + push)[:, i] - p[:, i], p[:, i] - _softmax(z - push)[:, i])
    return out


def test_softmax_slack_is_the_reach_of_one_logit_step() -> None:
    from edgetl.export.tflm_check import softmax_slack

    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (200, 5))
    z[0] = [30.0, -30.0, 0.0, 0.0, 1.0]  # saturated: no overflow, the tiny outputs barely move
    for z_step in (0.02, 0.23, 1.5):
        assert np.allclose(softmax_slack(z, z_step), _one_logit_step_range(z, z_step), atol=1e-12)
    # Its widest: tanh(step / 2) (0.114 for a step of 0.23), where two logits lie one step apart.
    apart = np.stack([np.zeros(401), np.linspace(-2, 2, 401)], axis=1)
    assert softmax_slack(apart, 0.23).max() == pytest.approx(np.tanh(0.115), rel=1e-4)
    assert softmax_slack(np.array([[0.0, 0.23]]), 0.23)[0, 0] == pytest.approx(np.tanh(0.115))


class _ShiftedTflm:
    """TFLM's runner with its outputs replaced: the reference kernels' plus `shift(reference, logits, step)`."""

    def __init__(self, real: object, path: Path, shift: object) -> None:
        self.real, self.path, self.shift = real, path, shift
        self.arena_bytes, self.out = real.arena_bytes, real.out

    def predict(self, images: np.ndarray) -> np.ndarray:
        from edgetl.export.tflm_check import reference_kernel_outputs, softmax_logits

        ref, z, z_step = reference_kernel_outputs(self.path, images, softmax_logits(self.path))
        return ref + self.shift(ref, z, z_step)

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize("departure", ["one logit step", "classes swapped"])
def test_tflm_check_takes_a_logit_step_and_fails_a_departure(mcu_file: Path, held_out: tuple[np.ndarray, np.ndarray],
                                                            monkeypatch: pytest.MonkeyPatch, departure: str) -> None:
    """A kernel that rounds one logit a step otherwise moves a softmax output by many output steps (seen on CI with
    TFLM's FULLY_CONNECTED): the check takes that, and fails outputs no logit step explains."""
    import edgetl.runtime.tflm as tflm
    from edgetl.export.report import ExportRow
    from edgetl.export.tflm_check import check_tflm

    step = 1 / 256

    def one_logit_step(ref: np.ndarray, z: np.ndarray, z_step: float) -> np.ndarray:
        push = np.zeros_like(z)
        push[:, 1] = z_step  # class 1's logit one step up in every image: TFLM's rounding, not another model
        return np.rint((_softmax(z + push) - _softmax(z)) / step) * step

    def swapped(ref: np.ndarray, z: np.ndarray, z_step: float) -> np.ndarray:
        return ref[:, ::-1] - ref

    real_open = tflm.open_tflm
    monkeypatch.setattr(tflm, "open_tflm", lambda path: _ShiftedTflm(
        real_open(path), Path(path), one_logit_step if departure == "one logit step" else swapped))
    row = ExportRow(format="tflite", mode="int8-full", path=str(mcu_file), io_type="int8")
    check_tflm(row, mcu_file, images=held_out)
    figures = row.to_dict()["tflm"]
    assert figures["reference_kernels_max_steps"] > 1  # the raw outputs are many steps apart either way
    if departure == "one logit step":
        assert not row.failed, row.status
        assert figures["status"] == "ok" and figures["reference_kernels_steps_beyond_a_logit_step"] <= 1
    else:
        assert row.failed and row.failure == "tflm" and "\n" not in row.status
        assert "beyond what one step of its logits explains" in row.status


def test_tflm_check_fills_the_row_and_a_budget_below_fails(mcu_file: Path,
                                                           held_out: tuple[np.ndarray, np.ndarray]) -> None:
    from edgetl.export.report import ExportRow
    from edgetl.export.tflm_check import Budgets, check_tflm

    row = ExportRow(format="tflite", mode="int8-full", path=str(mcu_file), io_type="int8")
    check_tflm(row, mcu_file, images=held_out, budgets=Budgets(max_ram_kb=4096, max_flash_kb=4096))
    d = row.to_dict()
    assert not row.failed and d["tflm"]["status"] == "ok"
    assert d["flash_kb"] == round(mcu_file.stat().st_size / 1024, 1)
    assert d["ram_kb"] == round(d["tflm"]["arena_bytes"] / 1024, 1)
    assert d["tflm"]["samples"] == len(held_out[0]) and d["tflm"]["agreement"] >= 0.85
    assert d["tflm"]["reference_kernels_steps_beyond_a_logit_step"] <= 1 and d["tflm"]["accuracy"] > 0.5
    ram = d["ram_kb"]

    row = ExportRow(format="tflite", mode="int8-full", path=str(mcu_file), io_type="int8")
    check_tflm(row, mcu_file, images=None, budgets=Budgets(max_ram_kb=ram - 1))
    assert row.failed and row.failure == "budget"
    assert f"{ram:.1f} KB" in row.status and "--max-ram-kb allows" in row.status and "\n" not in row.status


def _tile_model(path: Path) -> Path:
    """A float .tflite with an image input and a class output whose TILE op TFLM has no kernel for."""
    from edgetl.core.tf import load_tensorflow

    load_tensorflow()
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
    def fn(x: object) -> object:
        tiled = tf.tile(x, [1, 1, 1, 2])
        return tf.nn.softmax(tf.reduce_mean(tiled, axis=[1, 2]))

    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    path.write_bytes(conv.convert())
    return path


def test_compat_names_the_op_tflm_lacks(tmp_path: Path, mcu_file: Path) -> None:
    from click.testing import CliRunner

    from edgetl.cli.main import main
    from edgetl.runtime.tflm import open_tflm
    from edgetl.runtime.tflm_ops import mcu_compatibility

    model = _tile_model(tmp_path / "tile.tflite")
    c = mcu_compatibility(model)
    assert not c["compatible"] and c["unsupported_ops"] == ["TILE"]
    assert "arena_bytes" not in c
    with pytest.raises(ModelError, match="TILE"):
        open_tflm(model)
    res = CliRunner().invoke(main, ["inspect", str(model), "--compat"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # the table's title wraps on a narrow terminal
    assert "TensorFlow Lite Micro" in text and "│ TILE │ 1 │" in text

    ok = mcu_compatibility(mcu_file)
    assert ok["compatible"] and not ok["unsupported_ops"]
    assert {"AddConv2D", "AddDepthwiseConv2D", "AddFullyConnected", "AddSoftmax"} <= set(ok["resolver"])


def test_export_reports_ram_and_flash(mcu_export: dict, mcu_file: Path) -> None:
    t = mcu_export["tflm"]
    assert mcu_export["status"] == "ok" and t["status"] == "ok"
    assert mcu_export["flash_kb"] == round(mcu_file.stat().st_size / 1024, 1)
    assert mcu_export["ram_kb"] == round(t["arena_bytes"] / 1024, 1) > 0
    assert t["samples"] > 0 and t["accuracy"] > 0.5 and t["reference_kernels_steps_beyond_a_logit_step"] <= 1


def test_export_over_budget_fails_with_both_figures(trained_run: Path, mcu_export: dict, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgetl.cli.main import main

    res = CliRunner().invoke(main, ["export", str(trained_run), "--target", "mcu", "--output", str(tmp_path),
                                    "--max-ram-kb", "20", "--max-flash-kb", "100000", "--no-verify"])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert f"needs a {mcu_export['ram_kb']:.1f} KB tensor arena (RAM)" in errors[0]
    assert "--max-ram-kb allows 20" in errors[0] and "flash" not in errors[0]  # the flash budget is met
    assert not list(tmp_path.glob("*.tflite")) and not list(tmp_path.glob(".edgetl-staging-*"))

    res = CliRunner().invoke(main, ["export", str(trained_run), "--target", "cpu", "--output", str(tmp_path),
                                    "--max-ram-kb", "20"])
    assert res.exit_code == 2 and "--target mcu" in res.output


def test_evaluate_predict_and_benchmark_run_in_tflm(mcu_file: Path, demo_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgetl.cli.main import main

    res = CliRunner().invoke(main, ["evaluate", str(mcu_file), "--runtime", "tflm", "--data", str(demo_dir),
                                    "--min-accuracy", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    assert result["model"]["kind"] == "tflm" and result["passed"]
    res = CliRunner().invoke(main, ["evaluate", str(mcu_file), "--runtime", "tflm", "--data", str(demo_dir),
                                    "--min-accuracy", "0.999"])
    assert res.exit_code == 1

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not empty")
    res = CliRunner().invoke(main, ["evaluate", str(onnx), "--runtime", "tflm", "--data", str(demo_dir)])
    assert res.exit_code == 2 and "--runtime tflm opens a .tflite file only" in res.output
    res = CliRunner().invoke(main, ["benchmark", str(mcu_file), "--runtime", "tflm", "--json", "--warmup", "0",
                                    "--runs", "2", "--min-seconds", "0", "--max-seconds", "1", "--batch", "2"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads(res.output)["results"]
    assert row["format"] == "tflm" and row["latency"]["p50_ms"] > 0
    res = CliRunner().invoke(main, ["predict", str(mcu_file), str(demo_dir), "--runtime", "tlfm"])
    assert res.exit_code == 2 and "Did you mean 'tflm'" in res.output


def test_without_tflite_micro_the_file_is_written_unchecked_unless_a_ram_budget_asks(
        mcu_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgetl.export.report import ExportRow
    from edgetl.export.tflm_check import Budgets, check_tflm
    from edgetl.runtime import tflm

    monkeypatch.setattr(tflm, "version", lambda: "")  # as on a machine without its wheel (Linux x86-64 only)
    row = ExportRow(format="tflite", mode="int8-full", path=str(mcu_file), io_type="int8")
    warnings = check_tflm(row, mcu_file, budgets=Budgets(max_flash_kb=4096))
    assert not row.failed and row.get("ram_kb") is None and row["flash_kb"] > 0
    assert len(warnings) == 1 and "pip install tflite-micro==" in warnings[0]

    row = ExportRow(format="tflite", mode="int8-full", path=str(mcu_file), io_type="int8")
    check_tflm(row, mcu_file, budgets=Budgets(max_ram_kb=256))
    assert row.failed and row.failure == "tflm" and "pip install tflite-micro==" in row.status
