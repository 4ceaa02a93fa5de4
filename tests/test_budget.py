"""The int8 accuracy-budget search (edgetl.export.auto, `edgetl export -q int8-full --max-drop X --auto`).

The case that needs the search: a float model with one outlier activation channel. Post-training
int8 gives each activation tensor one scale, sized by its largest channel; a channel 1000x larger
than the rest leaves the others with a step as large as their values, so int8 loses them and the
classifier falls to chance, while the float model is unchanged. That is the commonest real cause
of post-training int8 loss; here it is made by hand, exactly, on the session's trained run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main

# A linear bottleneck output: no ReLU6 after it (a clip would break the equivalence) and one reader,
# the 1x1 Conv_1, whose input weights undo the scaling.
OUTLIER_BN = "block_16_project_BN"
READER = "Conv_1"
CHANNEL = 0  # any channel: the tensor's one scale follows whichever is largest
FACTOR = 1000.0
# The held-out split of the session run is 8 images (0.875 accuracy): 0.25 allows two images, while
# int8 with the outlier falls to chance (a drop near 0.6).
MAX_DROP = 0.25


def _held_out(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels the search measures accuracy on (test split, else val)."""
    from edgetl.data import load_images
    from edgetl.rundir import load_run

    run = load_run(run_dir)
    splits = run.splits()
    items = splits.test or splits.val
    x = load_images(splits.root, items, (run.image_size, run.image_size)).astype(np.float32)
    return x, np.array([i.label for i in items])


def _tflite_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of a .tflite file in the LiteRT interpreter, one image at a time (float or integer input)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    preds = []
    for img in x:
        batch = img[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            batch = np.clip(np.round(batch / scale + zero), np.iinfo(inp["dtype"]).min,
                            np.iinfo(inp["dtype"]).max).astype(inp["dtype"])
        it.set_tensor(inp["index"], batch)
        it.invoke()
        preds.append(int(it.get_tensor(out["index"])[0].argmax()))
    return float((np.array(preds) == y).mean())


@pytest.fixture(scope="module")
def outlier_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained run whose model has one outlier channel and the same float outputs."""
    import keras

    from edgetl.rundir import load_run

    dest = tmp_path_factory.mktemp("budget") / "outlier"
    shutil.copytree(trained_run, dest)
    run = load_run(dest)
    model = run.load_model()
    base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    bn, conv = base.get_layer(OUTLIER_BN), base.get_layer(READER)
    x, _ = _held_out(dest)
    before = np.asarray(model.predict(x, verbose=0))
    gamma, beta, mean, var = bn.get_weights()
    gamma[CHANNEL] *= FACTOR  # the BN output channel is gamma * x_hat + beta: both scale it
    beta[CHANNEL] *= FACTOR
    bn.set_weights([gamma, beta, mean, var])
    weights = conv.get_weights()
    weights[0][:, :, CHANNEL, :] /= FACTOR  # Conv_1 reads the channel with weights 1000x smaller
    conv.set_weights(weights)
    after = np.asarray(model.predict(x, verbose=0))
    assert np.abs(after - before).max() < 1e-4, "the outlier model must give the trained run's probabilities"
    # Same file name, input, classes and data: the manifest still describes the run, and export's
    # checks (input size, data fingerprint) hold. Only the weights file changes.
    model.save(run.model_path)
    return dest


def test_search_keeps_the_outlier_tensor_in_float(outlier_run: Path, tmp_path: Path) -> None:
    from edgetl.export.auto import search_int8
    from edgetl.export.metadata import read_tflite_metadata

    res = search_int8(outlier_run, max_drop=MAX_DROP, calibration_samples=32, output=tmp_path / "b")
    plain = res.rows[0]
    assert plain["mode"] == "int8-full" and plain["float_layers"] == []
    assert plain["drop"] > MAX_DROP and not plain["meets"], res.rows
    # The per-channel ranking names the outlier tensor among the first few (the debugger's RMSE per
    # step cannot: it is about 0.29 for every tensor, the outlier one included).
    top = [w["tensor_name"] for w in res.worst_layers[:3]]
    assert any(OUTLIER_BN in name for name in top), top
    outlier = next(w for w in res.worst_layers if OUTLIER_BN in w["tensor_name"])
    assert outlier["channel_nsr"] > 0.5 and any(READER in r for r in outlier["readers"])

    chosen = res.chosen
    assert chosen is not None and chosen["meets"] and chosen["drop"] <= MAX_DROP, res.rows
    # Kept in float, the tensor never goes through int8: the op writing it and the one reading it.
    assert chosen["mode"] == "int8", res.rows
    assert any(OUTLIER_BN in n for n in chosen["float_layers"]) and any(READER in n for n in chosen["float_layers"])
    assert chosen is not plain and chosen["name"] == next(r["name"] for r in res.rows if r["meets"])

    # The written file, measured here in the LiteRT interpreter rather than trusted from the search.
    assert res.path is not None and res.path.is_file() and res.path.parent == tmp_path / "b"
    x, y = _held_out(outlier_run)
    acc = _tflite_accuracy(res.path, x, y)
    assert acc == pytest.approx(chosen["accuracy"], abs=1e-4)
    assert res.reference["accuracy"] - acc <= MAX_DROP
    meta = read_tflite_metadata(res.path)
    assert meta is not None and meta["budget"]["float_layers"] == chosen["float_layers"]


def test_export_auto_through_the_cli_on_the_outlier_run(outlier_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    res = CliRunner().invoke(main, ["export", str(outlier_run), "-q", "int8-full", "--max-drop", str(MAX_DROP),
                                    "--auto", "--calibration-samples", "32", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report: dict[str, Any] = json.loads(res.stdout)
    assert report["rows"][0]["mode"] == "int8-full" and not report["rows"][0]["meets"]
    assert report["rows"][0]["drop"] > MAX_DROP
    chosen = report["chosen"]
    assert chosen is not None and chosen["mode"] in ("int8", "int16x8") and chosen["drop"] <= MAX_DROP
    written = list(out.glob("*.tflite"))
    assert [str(p) for p in written] == [report["path"]]
    x, y = _held_out(outlier_run)
    assert report["reference"]["accuracy"] - _tflite_accuracy(written[0], x, y) <= MAX_DROP


def test_search_stops_at_plain_int8_on_the_unmodified_model(trained_run: Path, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgetl.export.auto import _float_nodes, _selective, _worst_tensors, search_int8
    from edgetl.export.formats.saved_model import save_serving
    from edgetl.rundir import load_run

    res = search_int8(trained_run, max_drop=0.5, calibration_samples=32, output=tmp_path / "b")
    assert len(res.rows) == 1 and res.rows[0]["mode"] == "int8-full" and res.rows[0]["meets"]
    assert res.worst_layers == [] and res.path is not None and res.path.is_file()
    # The search's second step on its own: rank tensors by int8 error, keep the worst in float.
    run = load_run(trained_run)
    saved = save_serving(run.load_model(), tmp_path / "sm")
    calib = np.random.RandomState(0).uniform(0, 255, (8, 48, 48, 3)).astype("float32")

    def rep() -> object:
        for i in range(len(calib)):
            yield [calib[i:i + 1]]

    worst = _worst_tensors(saved, rep, calib)
    assert worst and worst[0]["channel_nsr"] >= worst[-1]["channel_nsr"]
    # The control for the outlier test: without the outlier this tensor quantizes well.
    names = [w["tensor_name"] for w in worst[:3]]
    assert not any(OUTLIER_BN in n for n in names), names
    nodes = _float_nodes(worst[:2])
    assert nodes[0] == worst[0]["tensor_name"] and set(worst[0]["readers"]) <= set(nodes)
    data = _selective(saved, rep, calib, nodes)
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    assert it.get_input_details()[0]["dtype"] == np.float32


def test_export_auto_needs_max_drop_and_writes_a_file(trained_run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", str(trained_run), "--auto", "-o", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--auto needs --max-drop" in res.output
    res = CliRunner().invoke(main, ["export", str(trained_run), "-q", "int8-full", "--max-drop", "0.5", "--auto",
                                    "--calibration-samples", "32", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "chosen: " in res.output and list((tmp_path / "a").glob("*.tflite"))
