"""The command line: help without TensorFlow, documented commands, one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_importing_the_cli_does_not_import_tensorflow() -> None:
    code = "import sys, edgetl.cli; sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_command_answers_help() -> None:
    for name in main.commands:
        code, out = run_cli(name, "--help")
        assert code == 0, (name, out)
        assert "Usage:" in out


def test_readme_documents_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in main.commands if not re.search(rf"edgetl {re.escape(name)}\b", readme)]
    assert not missing, f"README lacks usage for: {missing}"


def test_backbones_lists_the_required_cards() -> None:
    code, out = run_cli("backbones", "--json")
    assert code == 0
    cards = json.loads(out)
    required = ["vgg16", "vgg19", "resnet50", "resnet50_v2", "inception_v3", "xception", "mobilenet", "mobilenet_v2",
                "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2",
                "efficientnet_b3", "efficientnet_v2_b0", "densenet121", "convnext_tiny"]
    assert set(required) <= set(cards)
    assert cards["inception_v3"]["min_size"] == 75
    assert cards["mobilenet_v2"]["alpha"] == [0.35, 0.5, 0.75, 1.0, 1.3, 1.4]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backbone", "resnet5O"], "Did you mean 'resnet50'?"),
        (["--backbone", "inception_v3", "--image-size", "50"], "below inception_v3's minimum of 75"),
        (["--backbone", "resnet50", "--alpha", "0.5"], "--alpha applies only to"),
        (["--backbone", "mobilenet_v2", "--alpha", "0.6", "--weights", "imagenet"], "has no ImageNet weights"),
        (["--epochs", "-1"], "--epochs -1 is out of range"),
        (["--val-split", "0.6", "--test-split", "0.5"], "leave too little to train on"),
        (["--lr", "0"], "--lr 0.0 is out of range"),
        (["--fine-tune-layers", "some"], "--fine-tune-layers 'some' is not allowed"),
        (["--backbone", "hub:ftp://example.com/m"], "is not https"),
        (["--backbone", "mobilenet_v2", "--alpha", "0.5", "--weights", "bundled"], "ships no weights"),
    ],
)
def test_bad_options_give_one_line(demo_dir: Path, args: list[str], expected: str, tmp_path: Path) -> None:
    code, out = run_cli("train", str(demo_dir), "--output", str(tmp_path / "run"), *args)
    assert code == 2
    assert expected in out
    assert out.startswith("error: ") and out.count("\n") == 1
    assert not (tmp_path / "run").exists(), "a refused run must leave nothing behind"


def test_missing_data_folder(tmp_path: Path) -> None:
    code, out = run_cli("train", str(tmp_path / "nope"), "--weights", "none", "--output", str(tmp_path / "r"))
    assert code == 2
    assert "does not exist" in out and str(tmp_path / "nope") in out
    assert not (tmp_path / "r").exists()


def test_recipe_unknown_key_and_wrong_type(demo_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone: mobilenet_v2\nepoch: 3\n")
    code, out = run_cli("train", str(demo_dir), "--config", str(recipe))
    assert code == 2 and "unknown key 'epoch'" in out and "Did you mean 'epochs'?" in out
    recipe.write_text("epochs: many\n")
    code, out = run_cli("train", str(demo_dir), "--config", str(recipe))
    assert code == 2 and "key 'epochs'" in out and "must be int" in out
    recipe.write_text("epochs: [1, 2\n")
    code, out = run_cli("train", str(demo_dir), "--config", str(recipe))
    assert code == 2 and "not valid YAML" in out
    recipe.write_text("- a\n- b\n")
    code, out = run_cli("train", str(demo_dir), "--config", str(recipe))
    assert code == 2 and "must be a mapping" in out


def test_recipe_values_and_flags_win(demo_dir: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    out_dir = tmp_path / "run"
    recipe.write_text(f"data: {demo_dir}\nbackbone: mobilenet_v2\nalpha: 0.35\nweights: none\nimage-size: 32\n"
                      f"epochs: 5\nbatch_size: 64\noutput: {out_dir}\n")
    code, out = run_cli("train", "--config", str(recipe), "--epochs", "1")
    assert code == 0, out
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["config"]["epochs"] == 1  # the flag won
    assert manifest["config"]["batch_size"] == 64  # the recipe's value
    assert manifest["config"]["image_size"] == 32


def test_existing_run_is_not_overwritten(trained_run: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()}
    manifest = json.loads((trained_run / "manifest.json").read_text())
    code, out = run_cli("train", manifest["data"]["root"], "--weights", "none", "--output", str(trained_run))
    assert code == 2 and "--force" in out
    assert {p.name: p.stat().st_mtime_ns for p in trained_run.iterdir()} == before


def test_force_refuses_a_folder_that_is_not_a_run(demo_dir: Path, tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    code, out = run_cli("train", str(demo_dir), "--weights", "none", "--output", str(precious), "--force")
    assert code == 2 and "not an edgetl run" in out
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_errors_never_print_a_traceback_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edgetl", "train", str(tmp_path / "missing"), "--weights", "none"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ")


def test_real_process_exits_fast_with_complete_output(trained_run: Path, tmp_path: Path) -> None:
    # The console entry point skips TensorFlow's teardown with os._exit: piped output must still be
    # whole, the exit code kept, and files written before the exit complete.
    proc = subprocess.run([sys.executable, "-m", "edgetl", "evaluate", str(trained_run), "--json",
                           "--junit", str(tmp_path / "gate.xml")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 0.0 <= report["accuracy"] <= 1.0
    assert (tmp_path / "gate.xml").read_text().rstrip().endswith("</testsuites>")
    if report["accuracy"] < 1.0:  # a gate that fails after TensorFlow is loaded keeps its exit code 1
        proc = subprocess.run([sys.executable, "-m", "edgetl", "evaluate", str(trained_run), "--min-accuracy", "1"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr


def test_demo_data_command(tmp_path: Path) -> None:
    code, out = run_cli("demo-data", str(tmp_path / "d"), "--per-class", "5")
    assert code == 0, out
    classes = [p for p in (tmp_path / "d").iterdir() if p.is_dir()]
    assert len(classes) >= 3 and all(len(list(c.iterdir())) == 5 for c in classes)
    assert f"wrote {5 * len(classes)} images of {len(classes)} classes" in out
    code, out = run_cli("demo-data", str(tmp_path / "d"), "--per-class", "5")
    assert code == 2 and "--force" in out
