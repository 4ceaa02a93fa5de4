"""The CI recipes in examples/ci, run as a team would copy them, and baselines read across edgetl versions.

Each recipe file is read as its CI system reads it (YAML): its variables, the `edgetl` commands its job
runs, the command its header says records the baseline, and the JUnit file it uploads. The commands run
in real processes on a tiny exported file, so a recipe that drifts from the CLI fails here.
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
import yaml
from click.testing import CliRunner

from edgetl.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "examples" / "ci"


def _github(doc: dict[str, Any]) -> tuple[dict[str, str], list[str], str]:
    (job,) = doc["jobs"].values()
    runs = [s["run"] for s in job["steps"] if "run" in s]
    junit = next(s["with"]["report_paths"] for s in job["steps"] if "junit" in str(s.get("uses", "")))
    return {k: str(v) for k, v in job["env"].items()}, runs, junit


def _gitlab(doc: dict[str, Any]) -> tuple[dict[str, str], list[str], str]:
    (job,) = [v for v in doc.values() if isinstance(v, dict) and "script" in v]
    assert job["artifacts"]["when"] == "always", "the JUnit file must be kept when the gate fails"
    return {k: str(v) for k, v in job["variables"].items()}, list(job["script"]), job["artifacts"]["reports"]["junit"]


READERS = {"github-actions.yml": _github, "gitlab-ci.yml": _gitlab}


def test_every_recipe_is_tested_and_documented() -> None:
    assert sorted(p.name for p in RECIPES.iterdir()) == sorted(READERS)
    readme = (ROOT / "README.md").read_text()
    for name in READERS:
        assert f"examples/ci/{name}" in readme, f"README does not point to {name}"


def _recipe(name: str) -> tuple[dict[str, str], list[str], str, str]:
    text = (RECIPES / name).read_text()
    env, commands, junit = READERS[name](yaml.safe_load(text))
    lines = [ln.strip() for c in commands for ln in c.splitlines() if ln.strip()]
    installs = [ln for ln in lines if "pip install" in ln]
    assert installs and all('"edgetl' in ln for ln in installs), installs
    gates = [ln for ln in lines if ln.startswith("edgetl ")]
    assert len(gates) == 1 and "--junit" in gates[0] and "--baseline" in gates[0] and "--max-drop" in gates[0]
    (record,) = [ln.lstrip("# ").strip() for ln in text.splitlines() if "--save-baseline" in ln]
    return env, gates[0], record, junit


def _shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command as the CI runner's shell runs it, with the recipe's variables, the argument names
    of the header (MODEL, HOLDOUT, BASELINE) standing for them, and this environment's edgetl first on PATH."""
    for var in ("MODEL", "HOLDOUT", "BASELINE"):
        command = command.replace(f" {var} ", f' "${var}" ').replace(f" {var}", f' "${var}"')
    full = dict(os.environ, **env, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=full, capture_output=True, text=True, timeout=300)


def _junit(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and int(root.get("tests", "0")) >= 1
    return root


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.demo import write_demo_data

    dest = tmp_path_factory.mktemp("ci-holdout") / "holdout"
    write_demo_data(dest, per_class=6, seed=1, size_range=(40, 96))
    return dest


@pytest.mark.parametrize("name", sorted(READERS))
def test_recipe_gates_a_model_as_copied(name: str, files: dict[str, Path], holdout: Path, tmp_path: Path) -> None:
    env, gate, record, junit = _recipe(name)
    # The repository the recipe is copied into: the exported file, the held-out folder, the baseline.
    (tmp_path / env["MODEL"]).parent.mkdir(parents=True)
    shutil.copy(files["tflite-int8-full"], tmp_path / env["MODEL"])
    shutil.copytree(holdout, tmp_path / env["HOLDOUT"])
    (tmp_path / env["BASELINE"]).parent.mkdir(parents=True)
    done = _shell(record, tmp_path, env)
    assert done.returncode == 0, done.stderr
    baseline = json.loads((tmp_path / env["BASELINE"]).read_text())
    assert str(tmp_path) not in json.dumps(baseline), "a committed baseline must not name this machine's folders"

    # The same model against its own baseline: exit 0, every check a passing test case.
    done = _shell(gate, tmp_path, env)
    assert done.returncode == 0, done.stderr
    root = _junit(tmp_path / junit)
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert "max_drop_vs_baseline" in {tc.get("name") for tc in root.iter("testcase")}

    # A regression (every held-out image now labelled as the next class, so the model is mostly wrong):
    # exit 1, the failure in the JUnit file.
    folder = tmp_path / env["HOLDOUT"]
    classes = sorted(p.name for p in folder.iterdir())
    for c in classes:
        (folder / c).rename(folder / f"{c}.old")
    for c, nxt in zip(classes, classes[1:] + classes[:1], strict=True):
        (folder / f"{c}.old").rename(folder / nxt)
    done = _shell(gate, tmp_path, env)
    assert done.returncode == 1, done.stderr
    assert int(_junit(tmp_path / junit).get("failures")) >= 1
    assert "error: " in done.stderr and "Traceback" not in done.stderr

    # Bad input (the held-out folder is missing): exit 2, the reason as a JUnit error.
    shutil.rmtree(tmp_path / env["HOLDOUT"])
    done = _shell(gate, tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert _junit(tmp_path / junit).get("errors") == "1"
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr


def _evaluate(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["evaluate", *map(str, args)])
    return result.exit_code, result.output


def test_baseline_of_edgetl_0_1_0_still_gates(files: dict[str, Path], holdout: Path) -> None:
    """A baseline as edgetl 0.1.0 wrote it (this machine's paths in it) is read and gates as before."""
    old = ROOT / "tests" / "expected" / "baseline-edgetl-0.1.0.json"
    code, out = _evaluate(files["tflite-int8-full"], "--data", holdout, "--baseline", old, "--max-drop", "0.5",
                          "--json")
    assert code in (0, 1), out
    result = json.loads(out.splitlines()[-1])
    assert result["baseline"]["accuracy"] == json.loads(old.read_text())["accuracy"]
    assert any(c["name"] == "max_drop_vs_baseline" for c in result["checks"])


@pytest.mark.parametrize(("change", "needle"), [
    ({"edgetl_baseline": 2, "edgetl_version": "9.0.0"}, "Upgrade edgetl, or write the baseline again"),
    ({"edgetl_baseline": "one"}, "not a version number"),
    ({"accuracy": "high"}, "is not an edgetl baseline"),
])
def test_baseline_from_elsewhere_fails_in_one_line(files: dict[str, Path], holdout: Path, tmp_path: Path,
                                                  change: dict[str, Any], needle: str) -> None:
    base = json.loads((ROOT / "tests" / "expected" / "baseline-edgetl-0.1.0.json").read_text())
    (tmp_path / "b.json").write_text(json.dumps(dict(base, **change)))
    code, out = _evaluate(files["tflite-int8-full"], "--data", holdout, "--baseline", tmp_path / "b.json",
                          "--max-drop", "0.01")
    assert code == 2 and out.startswith("error: ") and out.count("\n") == 1 and needle in out, out
