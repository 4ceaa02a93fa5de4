"""edgetl search: candidates, the budget and the Pareto front, successive halving, resume, weights, --train.

The end-to-end search runs once per module (two tiny MobileNetV2 candidates at 32-40 px on the generated data
set, weights from a folder of Keras-named files made from the bundled ones); the rounds' logic runs on
constructed results (the per-candidate work replaced), so it costs no TensorFlow time.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.core.errors import RunExistsError, UsageError
from edgetl.core.progress import Reporter
from edgetl.data import scan_folder
from edgetl.search import job as search_job
from edgetl.search.candidates import Candidate, default_candidates, find_weights, keras_file_name, parse_candidates
from edgetl.search.config import Budget
from edgetl.search.study import pareto_ranks, prepare_folder

KEYS = {"backbone", "alpha", "image_size", "accuracy", "latency_ms", "size_mb", "within_budget", "pareto"}


def _row(key: str, accuracy: float, latency: float, size: float) -> dict[str, Any]:
    return {"key": key, "accuracy": accuracy, "latency_ms": latency, "size_mb": size}


# --- candidates and weights -----------------------------------------------------------------------------------

def test_candidates_from_a_list_a_yaml_file_and_the_target(tmp_path: Path) -> None:
    assert parse_candidates("mobilenet_v2:0.35@96, efficientnet_b0@224,mobilenet_v2:0.35@96") == [
        Candidate("mobilenet_v2", 0.35, 96), Candidate("efficientnet_b0", None, 224)]
    assert parse_candidates("mobilenet_v2@128") == [Candidate("mobilenet_v2", 1.0, 128)]
    recipe = tmp_path / "c.yaml"
    recipe.write_text("candidates:\n  - mobilenet:0.25@128\n"
                      "  - {backbone: mobilenet_v2, alpha: 1.0, image_size: 160}\n")
    assert [c.key for c in parse_candidates(str(recipe))] == ["mobilenet:0.25@128", "mobilenet_v2:1@160"]
    for bad, says in (("mobilenet_v2:0.35", "BACKBONE[:ALPHA]@SIZE"), ("mobilenet_v3:1.0@96", "Did you mean"),
                      ("mobilenet_v2:0.6@96", "no width 0.6"), ("resnet50:0.5@224", "no width multiplier"),
                      ("inception_v3@64", "out of range")):
        with pytest.raises(UsageError, match=r"^[^\n]*$") as err:
            parse_candidates(bad)
        assert says in str(err.value)
    cpu = default_candidates("cpu")
    assert len(cpu) == 8 and {c.alpha for c in cpu} == {0.35, 1.0} and {c.image_size for c in cpu} == {96, 128, 160,
                                                                                                         224}
    assert all(c.image_size <= 128 for c in default_candidates("mcu"))


def test_weights_exact_nearest_size_or_none(tmp_path: Path) -> None:
    c96, c112 = Candidate("mobilenet_v2", 0.35, 96), Candidate("mobilenet_v2", 0.35, 112)
    assert keras_file_name(c96) == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"
    assert find_weights(c96, "imagenet", str(tmp_path)) is None  # nothing in the folder: skipped
    (tmp_path / keras_file_name(c96, 128)).write_bytes(b"x")
    (tmp_path / keras_file_name(c96, 96)).write_bytes(b"x")
    exact = find_weights(c96, "imagenet", str(tmp_path))
    assert exact is not None and exact.value.endswith("_96_no_top.h5") and not exact.note
    nearest = find_weights(c112, "imagenet", str(tmp_path))  # 96 and 128 are as near: the larger file
    assert nearest is not None and nearest.value.endswith("_128_no_top.h5")
    assert "no 112-pixel weights" in nearest.note and "128-pixel" in nearest.note
    assert find_weights(Candidate("mobilenet", 0.25, 96), "bundled", None) is None
    assert find_weights(c96, "bundled", None) is not None


# --- the budget and the Pareto front --------------------------------------------------------------------------

def test_pareto_front_and_budget_filter_on_constructed_results() -> None:
    rows = [_row("a", 0.90, 10.0, 9.0), _row("b", 0.85, 4.0, 3.0), _row("c", 0.80, 5.0, 2.0),
            _row("d", 0.70, 1.0, 0.5), _row("e", 0.60, 2.0, 0.4)]
    # No budget: a, b, d are on the front (c is beaten by b on both, e by d); then c and e.
    assert pareto_ranks(rows, Budget()) == [1, 1, 2, 1, 2]
    # A latency budget drops a; a size budget drops b too, which puts c on the front.
    assert pareto_ranks(rows, Budget(latency_ms=6)) == [None, 1, 2, 1, 2]
    assert pareto_ranks(rows, Budget(latency_ms=6, size_mb=2.5)) == [None, None, 1, 1, 2]
    assert pareto_ranks(rows, Budget(size_mb=0.1)) == [None] * 5
    assert Budget(latency_ms=2.0).excess({"latency_ms": 3.0}) == {"latency_ms": 0.5}


# --- successive halving on constructed results ------------------------------------------------------------------

def _fake_evaluate(truth: dict[str, tuple[float, float, float]], calls: list[tuple[str, int]],
                   stderr: float = 0.005) -> Any:
    """An evaluate() that returns constructed figures: accuracy grows with the round's images."""
    def evaluate(c: Candidate, weights: Any, fid: Any, shared: Any, file_figures: Any) -> dict[str, Any]:
        calls.append((c.key, fid.round))
        acc, latency, size = truth[c.key]
        accuracy = round(acc - 0.1 / fid.round, 4)
        return {"key": c.key, "backbone": c.backbone, "alpha": c.alpha, "image_size": c.image_size,
                "weights": "none", "round": fid.round, "per_class": fid.per_class,
                "train_images": len(fid.train), "val_images": len(fid.val), "head_epochs": 1,
                "accuracy": accuracy, "accuracy_stderr": stderr, "latency_ms": latency, "size_mb": size,
                "ram_kb": None, "file": None, "mode": "tflite int8", "seconds": {"head": 0.1}}
    return evaluate


TRUTH = {  # accuracy, latency ms, size MB of eight constructed candidates
    "mobilenet_v2:0.35@96": (0.60, 1.0, 0.6), "mobilenet_v2:0.35@128": (0.65, 1.5, 0.6),
    "mobilenet_v2:0.35@160": (0.68, 2.2, 0.6), "mobilenet_v2:0.35@224": (0.70, 4.0, 0.6),
    "mobilenet_v2:1@96": (0.66, 2.5, 2.7), "mobilenet_v2:1@128": (0.70, 4.0, 2.7),
    "mobilenet_v2:1@160": (0.74, 6.0, 2.7), "mobilenet_v2:1@224": (0.80, 11.0, 2.7),
}


def _search_cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, ["search", *args])


def test_rounds_keep_the_promising_candidates_and_recommend_within_the_budget(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(search_job, "evaluate", _fake_evaluate(TRUTH, calls))
    out = tmp_path / "s"
    res = _search_cli([str(demo_dir), "--weights", "none", "--images-per-class", "2", "--max-latency-ms", "5",
                       "--candidates", ",".join(TRUTH), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rounds = doc["rounds"]
    assert [len(r["candidates"]) for r in rounds] == [8, 4, 2]
    assert [r["train_images"] for r in rounds[:2]] == [8, 16]  # 4 classes x 2, then 4 images a class
    # The last round (two left) measures on the whole splits, as `edgetl train` would: not 8 a class.
    splits = scan_folder(str(demo_dir), val_split=0.2, test_split=0.1, seed=42)
    assert [r["whole"] for r in rounds] == [False, False, True]
    assert (rounds[2]["train_images"], rounds[2]["val_images"]) == (len(splits.train), len(splits.val)) != (32, 32)
    assert rounds[2]["per_class"] is None
    # Over the budget (6 and 11 ms) never goes on; round 2 holds the within-budget front first.
    assert not {"mobilenet_v2:1@160", "mobilenet_v2:1@224"} & set(rounds[1]["candidates"])
    assert set(rounds[2]["candidates"]) == {"mobilenet_v2:1@128", "mobilenet_v2:0.35@224"}
    assert doc["recommended"]["key"] in rounds[2]["candidates"] and doc["recommended"]["within_budget"]
    assert len(calls) == 14 and len(set(calls)) == 14  # nothing measured twice
    by_key = {r["key"]: r for r in doc["candidates"]}
    assert by_key["mobilenet_v2:1@224"]["within_budget"] is False and by_key["mobilenet_v2:1@224"]["pareto"] is False
    assert all(set(r) >= KEYS for r in doc["candidates"])
    assert doc["candidates"][0]["pareto"] and not doc["candidates"][-1]["within_budget"]
    assert (out / "search.png").stat().st_size > 0 and (out / "recipe.yaml").is_file()
    # A budget nothing meets: exit 1, the closest candidate named, recommended null; every result reused.
    calls.clear()
    res = _search_cli([str(demo_dir), "--weights", "none", "--images-per-class", "2", "--max-latency-ms", "0.5",
                       "--candidates", ",".join(TRUTH), "-o", str(out), "--json"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["recommended"] is None and calls == []
    assert "closest is mobilenet_v2:0.35@96" in res.stderr and res.stderr.count("error:") == 1


CROSSING = {**TRUTH,  # constructed candidates whose learning curves cross
            "mobilenet_v2:1@128": (0.75, 4.0, 2.7),  # the most accurate on samples; dominates the slower ones
            "mobilenet_v2:1@160": (0.76, 6.0, 2.7),  # 3 points below 1@128 on samples (below), first on the whole
            "mobilenet_v2:1@224": (0.70, 11.0, 2.7)}  # 5 points below: outside 2 x 2.1 points


def _crossing_evaluate() -> Any:
    """CROSSING's figures (standard error 0.015), with 1@160 4 points lower on every sample than on the whole."""
    fake = _fake_evaluate(CROSSING, [], stderr=0.015)

    def evaluate(c: Candidate, weights: Any, fid: Any, *args: Any) -> dict[str, Any]:
        figures = fake(c, weights, fid, *args)
        if c.key == "mobilenet_v2:1@160" and not fid.whole:
            figures["accuracy"] = round(figures["accuracy"] - 0.04, 4)
        return figures

    return evaluate


def test_kept_and_shared_classifiers_start_as_train_builds_them(tmp_path: Path) -> None:
    """A candidate's classifier kept between rounds starts each round's head from its initial variables (weights
    and dropout seed), and a candidate at another size built on the base its backbone and width share computes the
    same features: both train their heads to the weights `edgetl train`'s own build of that candidate gets."""
    from dataclasses import replace
    from types import SimpleNamespace

    import keras

    from edgetl.model.backbones import build_base, resolve_backbone
    from edgetl.model.classifier import build_classifier
    from edgetl.search.trial import Shared, _built, scratch_fit
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import place
    from edgetl.train.fit import fit_stage

    tcfg = replace(TrainConfig(data="x"), weights="none", epochs=4)
    shared = Shared(cfg=None, train_cfg=tcfg, splits=SimpleNamespace(class_names=list("abc")), folder=tmp_path,
                    placement=place("default", "off"), reporter=Reporter(), threads=1)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 1280)).astype(np.float32), rng.integers(0, 3, 64).astype(np.int32)
    vx, vy = rng.normal(size=(32, 1280)).astype(np.float32), rng.integers(0, 3, 32).astype(np.int32)

    def trained(clf: Any) -> list[np.ndarray]:
        history, ckpt = scratch_fit(tmp_path)
        fit_stage(clf.head, (x, y), (vx, vy), tcfg, tcfg.lr, tcfg.epochs, "head", history, Reporter(),
                  shared.placement, ckpt, None)
        return [np.array(w) for w in clf.head.get_weights()]

    def as_train_builds(size: int) -> Any:  # edgetl.train.job's sequence
        spec = resolve_backbone("mobilenet_v2")
        keras.utils.set_random_seed(tcfg.seed)
        base = build_base(spec, weights=tcfg.weights, alpha=0.35, image_size=size)
        return build_classifier(base, image_size=size, num_classes=3, preprocessing=spec.default_preprocessing,
                                dropout=tcfg.dropout, seed=tcfg.seed, normalization=spec.normalization)

    first = _built(Candidate("mobilenet_v2", 0.35, 32), tcfg, shared)[0]
    after_round_1 = trained(first)
    keras.backend.clear_session()  # as the search does after each candidate
    again = _built(Candidate("mobilenet_v2", 0.35, 32), tcfg, shared)[0]
    assert again is first  # kept, not built again
    after_round_2 = trained(again)
    keras.backend.clear_session()
    other = _built(Candidate("mobilenet_v2", 0.35, 64), tcfg, shared)[0]
    assert other.base is first.base and len(shared.bases) == 1  # one base for both sizes
    # 48 pixels: a stride-2 stage sees an odd size, which a base built for any size pads otherwise: its own base.
    assert _built(Candidate("mobilenet_v2", 0.35, 48), tcfg, shared)[0].base is not first.base
    other_trained = trained(other)
    keras.backend.clear_session()
    for got, size in ((after_round_1, 32), (after_round_2, 32), (other_trained, 64)):
        own = as_train_builds(size)
        for a, b in zip(got, trained(own), strict=True):
            np.testing.assert_array_equal(a, b)
        images = rng.uniform(0, 255, (4, size, size, 3)).astype(np.float32)
        model = first if size == 32 else other
        np.testing.assert_array_equal(np.asarray(model.extractor(images)), np.asarray(own.extractor(images)))
        keras.backend.clear_session()
    shared.keep_built(set())
    assert shared.built == {} and shared.bases == {}


def test_a_sample_of_every_image_is_measured_as_the_whole_splits(demo_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--images-per-class above every class: one round, on the splits in `edgetl train`'s order (its figures are
    then training's own), not a class-balanced reordering of them."""
    seen: list[Any] = []
    fake = _fake_evaluate(TRUTH, [])

    def recording(c: Candidate, weights: Any, fid: Any, *args: Any) -> dict[str, Any]:
        seen.append(fid)
        return fake(c, weights, fid, *args)

    monkeypatch.setattr(search_job, "evaluate", recording)
    keys = ["mobilenet_v2:0.35@96", "mobilenet_v2:0.35@128", "mobilenet_v2:1@160", "mobilenet_v2:1@224"]  # 4 go on
    res = _search_cli([str(demo_dir), "--weights", "none", "--images-per-class", "1000", "--candidates", ",".join(keys),
                       "-o", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    rounds = json.loads(res.stdout)["rounds"]
    assert len(rounds) == 1 and rounds[0]["whole"] and rounds[0]["per_class"] is None
    splits = scan_folder(str(demo_dir), val_split=0.2, test_split=0.1, seed=42)
    assert len(seen) == 4
    for fid in seen:
        assert [it.path for it in fid.train] == [it.path for it in splits.train]
        assert [it.path for it in fid.val] == [it.path for it in splits.val]


def test_candidates_the_sample_cannot_tell_from_the_best_go_on_to_the_whole_splits(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slower candidate that small samples put just below the best is not dropped for its Pareto rank: trained on
    the whole splits it can come first (learning curves cross). One clearly below the best is dropped."""
    monkeypatch.setattr(search_job, "evaluate", _crossing_evaluate())
    res = _search_cli([str(demo_dir), "--weights", "none", "--images-per-class", "2",
                       "--candidates", ",".join(CROSSING), "-o", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rounds = doc["rounds"]
    # 1@160 stays within the noise of 1@128 on every sample: the samples grow until one would hold a quarter of the
    # training split (4 classes x 8 x 2**2 here), and that round is the whole splits.
    splits = scan_folder(str(demo_dir), val_split=0.2, test_split=0.1, seed=42)
    assert [r["whole"] for r in rounds] == [False, False, True]
    assert [r["per_class"] for r in rounds[:2]] == [2, 4] and 4 * 8 * 4 >= len(splits.train) > 4 * 4 * 4
    # Round 1's front is the four kept (0.35 at 96-160 and 1@128); 1@160 is dominated by 1@128 but within the noise.
    assert [r["within_noise"] for r in rounds[:2]] == [["mobilenet_v2:1@160"]] * 2
    assert set(rounds[1]["candidates"]) == {"mobilenet_v2:0.35@96", "mobilenet_v2:0.35@128", "mobilenet_v2:0.35@160",
                                            "mobilenet_v2:1@128", "mobilenet_v2:1@160"}
    # The halving's finalists (1@128, 0.35@160) and 1@160, on the whole splits, where 1@160 comes first.
    assert set(rounds[2]["candidates"]) == {"mobilenet_v2:1@128", "mobilenet_v2:0.35@160", "mobilenet_v2:1@160"}
    assert res.stderr.count("within the noise of the most accurate, going on too: mobilenet_v2:1@160") == 2
    assert doc["recommended"]["key"] == "mobilenet_v2:1@160"


def test_after_the_finalists_samples_grow_while_candidates_are_within_the_noise(
        demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The halving has its finalists, but a candidate is still within the noise: one more sample round (the best
    one and those within the noise), not the whole splits, until a sample would be a large part of them."""
    monkeypatch.setattr(search_job, "evaluate", _crossing_evaluate())
    monkeypatch.setattr(search_job, "_fills", lambda shared, per_class: per_class >= 16)  # a larger folder
    res = _search_cli([str(demo_dir), "--weights", "none", "--images-per-class", "2",
                       "--candidates", ",".join(CROSSING), "-o", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rounds = doc["rounds"]
    assert [r["whole"] for r in rounds] == [False, False, False, True]
    assert [r["per_class"] for r in rounds[:3]] == [2, 4, 8]
    # Round 3 holds the halving's two finalists and 1@160; the round after, the best one and 1@160 only.
    assert set(rounds[2]["candidates"]) == {"mobilenet_v2:1@128", "mobilenet_v2:0.35@160", "mobilenet_v2:1@160"}
    assert set(rounds[3]["candidates"]) == {"mobilenet_v2:1@128", "mobilenet_v2:1@160"}
    assert doc["recommended"]["key"] == "mobilenet_v2:1@160"


def test_a_candidate_whose_weights_cannot_be_fetched_is_skipped(demo_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --weights-dir a file missing from Keras' cache is downloaded; offline that fails: one line, skipped."""
    from edgetl.core.errors import ModelError

    fake = _fake_evaluate(TRUTH, [])

    def offline(c: Candidate, weights: Any, *args: Any) -> dict[str, Any]:
        if c.key == "mobilenet_v2:1@224":
            raise ModelError("cannot download ImageNet weights for mobilenet_v2 (no network)")
        return fake(c, weights, *args)

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # an empty cache
    monkeypatch.setattr(search_job, "evaluate", offline)
    res = _search_cli([str(demo_dir), "--candidates", "mobilenet_v2:0.35@96,mobilenet_v2:1@224", "-o",
                       str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [r["key"] for r in doc["candidates"]] == ["mobilenet_v2:0.35@96"]
    assert doc["skipped"] == ["skipping mobilenet_v2:1@224: cannot download ImageNet weights for mobilenet_v2 (no "
                              "network)"]
    assert res.stderr.count("skipping mobilenet_v2:1@224") == 1


def test_the_search_folder_is_never_overwritten_silently(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(RunExistsError, match="holds no edgetl search"):
            prepare_folder(other, force)
    assert (other / "notes.txt").read_text() == "mine"


def test_bad_options_are_one_line(demo_dir: Path, tmp_path: Path) -> None:
    for args, says in ((["--target", "toaster"], "Invalid value for '--target'"),
                       (["--max-latency-ms", "-1"], "--max-latency-ms -1.0 is out of range"),
                       (["--max-ram-kb", "200"], "--max-ram-kb needs RAM figures"),
                       (["--weights-dir", str(tmp_path / "nowhere")], "is not a folder"),
                       (["--candidates", "mobilenet_v2@"], "BACKBONE[:ALPHA]@SIZE")):
        res = _search_cli([str(demo_dir), "-o", str(tmp_path / "s"), *args])
        assert res.exit_code == 2 and says in res.output and "Traceback" not in res.output, (args, res.output)


# --- the real thing, once: tiny candidates, Keras-named weight files, --train ----------------------------------

@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keras' file for MobileNetV2 0.35 at 96 px (legacy HDF5, as Keras downloads it), made from the bundled
    weights; no file for MobileNet v1."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from edgetl.model.backbones import bundled_weights_path, resolve_backbone

    folder = tmp_path_factory.mktemp("weights")
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(96, 96, 3),
                                          pooling="avg")
    base.load_weights(str(bundled_weights_path(resolve_backbone("mobilenet_v2"), 0.35)))
    name = keras_file_name(Candidate("mobilenet_v2", 0.35, 96))
    with h5py.File(folder / name, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return folder


@pytest.fixture(scope="module")
def searched(demo_dir: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("search") / "s"
    args = [str(demo_dir), "--weights-dir", str(weights_dir), "--images-per-class", "4", "--candidates",
            "mobilenet_v2:0.35@32,mobilenet:0.25@32,mobilenet_v2:0.35@40", "-o", str(out), "--train", "--json"]
    res = _search_cli(args)
    assert res.exit_code == 0, res.output
    return {"out": out, "args": args, "doc": json.loads(res.stdout), "stderr": res.stderr}


def _trials(folder: Path) -> int:
    with sqlite3.connect(folder / "study.db") as db:
        return int(db.execute("select count(*) from trials").fetchone()[0])


def test_search_json_skips_candidates_without_weights_and_names_the_nearest_file(searched: dict[str, Any]) -> None:
    doc, stderr = searched["doc"], searched["stderr"]
    skipped = [line for line in stderr.splitlines() if "mobilenet:0.25@32" in line]
    assert skipped == [f"warning: skipping mobilenet:0.25@32: no weights file for it in '{searched['args'][2]}'"]
    assert "no 32-pixel weights" in stderr and "96-pixel file" in stderr
    assert [r["key"] for r in doc["candidates"]] and all(set(r) >= KEYS for r in doc["candidates"])
    assert {r["key"] for r in doc["candidates"]} == {"mobilenet_v2:0.35@32", "mobilenet_v2:0.35@40"}
    for r in doc["candidates"]:
        assert 0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0 and r["size_mb"] > 0 and r["within_budget"]
        assert Path(r["file"]).suffix == ".tflite" and r["mode"] == "tflite int8"
    assert doc["recommended"] in doc["candidates"] and doc["recommended"]["pareto"]
    assert doc["machine"]["threads"] >= 1 and doc["machine"]["cpu"]
    assert any("not measured" in n for n in doc["notes"])
    assert "edgetl train" in doc["train_command"] and "--image-size" in doc["train_command"]


def test_train_writes_a_run_that_export_takes(searched: dict[str, Any]) -> None:
    from edgetl.export import export_run
    from edgetl.rundir import load_run
    from edgetl.runtime import open_model

    run = load_run(searched["doc"]["run"])
    rec = searched["doc"]["recommended"]
    assert run.image_size == rec["image_size"] and run.manifest["backbone"]["alpha"] == rec["alpha"]
    # Trained fully: the whole training split, which the search's last round measured the candidate on.
    assert len(run.splits().train) == rec["train_images"] and rec["per_class"] is None
    report = export_run(run, formats="tflite", quantize="none", verify=False, output=run.path / "x")
    with open_model(report.rows[0].path) as runner:
        assert runner.predict(__import__("numpy").zeros((1, rec["image_size"], rec["image_size"], 3))).shape[1] == 4


def test_rerunning_the_search_reuses_its_results(searched: dict[str, Any]) -> None:
    out = searched["out"]
    before = _trials(out)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    res = _search_cli(searched["args"])
    assert res.exit_code == 0, res.output
    assert _trials(out) == before
    assert {p: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == stamps
    assert "reused" in res.stderr and "already holds" in res.stderr
    assert json.loads(res.stdout)["recommended"]["key"] == searched["doc"]["recommended"]["key"]


def test_a_candidate_head_trains_with_early_stopping_and_writes_no_files(tmp_path: Path) -> None:
    """The search fits heads it never resumes: the train job's head stage, without per-epoch checkpoints or rows."""
    import keras
    import numpy as np

    from edgetl.core.progress import Reporter
    from edgetl.search.trial import scratch_fit
    from edgetl.train.config import TrainConfig
    from edgetl.train.distribute import place
    from edgetl.train.fit import fit_stage

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120).astype(np.int32)
    x = (np.eye(3, 16)[y] * 3 + rng.normal(0, 0.3, (120, 16))).astype(np.float32)  # separable features
    head = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3, activation="softmax")])
    history, ckpt = scratch_fit(tmp_path)
    cfg = TrainConfig(data=str(tmp_path), batch_size=16, patience=2, seed=0)
    epochs = fit_stage(head, (x[:90], y[:90]), (x[90:], y[90:]), cfg, 0.05, 40, "head", history, Reporter(),
                       place("default", "off"), ckpt, None)
    assert 0 < epochs == len(history.rows) and all(r["stage"] == "head" for r in history.rows)
    assert float((head.predict(x[90:], verbose=0).argmax(1) == y[90:]).mean()) > 0.9
    assert list(tmp_path.iterdir()) == []  # nothing written: no checkpoints, no history.csv
