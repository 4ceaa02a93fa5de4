"""Packaging: one `pip install` gives phone-ready files, the build is clean, the version is the package's.

The slow test builds the wheel and sdist as a release would (`python -m build`), installs the wheel into a
fresh virtual environment with pip alone, and uses it as a newcomer would: a tiny run, exported, and the
float32 and int8-full files opened in MediaPipe's ImageClassifier, which must answer with label names.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def test_version_is_the_packages() -> None:
    project_version = re.search(r'(?m)^version = "([^"]+)"', _pyproject()).group(1)
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"edgetl, version {project_version}"
    assert version("edgetl") == project_version, "the installed metadata is stale: pip install -e ."


def test_licence_is_an_spdx_string_and_the_backend_reads_it() -> None:
    text = _pyproject()
    assert re.search(r'(?m)^license = "Apache-2.0"$', text)
    # setuptools reads an SPDX string from 77 on; older ones would refuse the metadata.
    assert re.search(r'requires = \["setuptools>=(\d+)', text) and int(
        re.search(r'requires = \["setuptools>=(\d+)', text).group(1)) >= 77


def _dependencies() -> list[str]:
    block = re.search(r"(?ms)^dependencies = \[(.*?)^\]", _pyproject()).group(1)
    return [re.split(r"[<>=~!\[ ]", d)[0] for d in re.findall(r'"([^"]+)"', block)]


def test_mediapipe_is_a_dependency_and_tfmot_installs_by_the_named_command() -> None:
    from edgetl.optimize.tfmot import INSTALL_COMMAND

    deps = _dependencies()
    assert "mediapipe" in deps and "tensorflow-model-optimization" not in deps
    # requirements-app.txt (make install) and the command `edgetl optimize` names list the same packages.
    listed = [ln.strip() for ln in (ROOT / "requirements-app.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    named = shlex.split(INSTALL_COMMAND)
    assert named[:3] == ["pip", "install", "--no-deps"] and named[3:] == listed


def test_optimize_without_tfmot_names_the_install_command(trained_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from edgetl.optimize.tfmot import INSTALL_COMMAND

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow_model_optimization" else real(name, *a))
    for method in ("qat", "prune"):
        result = CliRunner().invoke(main, ["optimize", str(trained_run), "--method", method, "--output",
                                           str(tmp_path / method)])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and INSTALL_COMMAND in result.output
        assert not (tmp_path / method).exists()


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)  # type: ignore


_CLASSIFY = """
import json, sys
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python.core.base_options import BaseOptions
from mediapipe.tasks.python.vision import image_classifier as ic
from PIL import Image
files, images = sys.argv[1].split(","), sys.argv[2:]
out = {}
for f in files:
    opts = ic.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=f), max_results=1)
    with ic.ImageClassifier.create_from_options(opts) as c:
        out[f] = [c.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.asarray(
            Image.open(i).convert("RGB")))).classifications[0].categories[0].category_name for i in images]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_gives_files_mediapipe_reads(tmp_path: Path) -> None:
    # The environment's own switch, not the project's: with it on, setuptools warns that it skips byte-compiling.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    built = _run([sys.executable, "-m", "build", "--outdir", tmp_path / "dist", ROOT], env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    warnings = [ln for ln in (built.stdout + built.stderr).splitlines() if re.search(r"warn|deprecat|!!", ln, re.I)]
    assert not warnings, warnings
    wheel = next((tmp_path / "dist").glob("edgetl-*.whl"))
    sdist = next((tmp_path / "dist").glob("edgetl-*.tar.gz"))
    # The licence text travels with both (its SPDX name alone is not the licence's terms).
    with zipfile.ZipFile(wheel) as whl:
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in whl.namelist())
        assert "License-Expression: Apache-2.0" in whl.read(next(n for n in whl.namelist()
                                                                  if n.endswith(".dist-info/METADATA"))).decode()
    with tarfile.open(sdist) as tar:
        assert any(n.endswith("/LICENSE") for n in tar.getnames())

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv]).returncode == 0
    py, edgetl = venv / "bin" / "python", venv / "bin" / "edgetl"
    # pip alone, from the wheel. pip's own HTTP cache stores nothing behind this machine's package proxy, so
    # the dependencies' wheels are kept in a wheelhouse of our own: pip resolves the wheel against it offline,
    # and only when that fails (first run, or a dependency changed) resolves against the index and downloads.
    house = Path(os.environ.get("EDGETL_WHEELHOUSE") or Path.home() / ".cache" / "edgetl" / "test-wheelhouse")
    offline = [py, "-m", "pip", "install", "-q", "--no-index", "--find-links", house, wheel]
    installed = _run(offline)
    if installed.returncode != 0:
        fetched = _run([py, "-m", "pip", "download", "-q", "--dest", house, wheel])
        assert fetched.returncode == 0, fetched.stderr[-2000:]
        for old in house.glob("edgetl-*"):  # the wheel under test is always given by its path
            old.unlink()
        installed = _run(offline)
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert _run([py, "-m", "pip", "check"]).returncode == 0, "the one install must be consistent"
    assert _run([edgetl, "--version"]).stdout.strip() == f"edgetl, version {version('edgetl')}"

    work = tmp_path / "work"
    work.mkdir()
    for cmd in (["demo-data", "data", "--per-class", "8", "--seed", "0"],
                ["train", "data", "--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "bundled",
                 "--image-size", "48", "--epochs", "2", "--output", "run"],
                ["export", "run", "--format", "tflite", "--quantize", "none", "--quantize", "int8-full"]):
        done = _run([edgetl, *cmd], cwd=work)
        assert done.returncode == 0, (cmd, done.stderr[-2000:])
        assert "no standard TFLite metadata" not in done.stderr, done.stderr
    report = json.loads((work / "run" / "export" / "export_report.json").read_text())
    files = {r["mode"]: work / "run" / "export" / r["path"] for r in report["rows"]}
    assert set(files) == {"none", "int8-full"}
    assert all(r["mediapipe"]["status"] == "ok" for r in report["rows"]), [r["mediapipe"] for r in report["rows"]]

    names = (work / "run" / "labels.txt").read_text().split()
    images = [str(p) for name in names for p in sorted((work / "data" / name).iterdir())[:2]]
    done = _run([py, "-c", _CLASSIFY, ",".join(str(f) for f in files.values()), *images])
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for f in files.values():
        assert len(answers[str(f)]) == len(images) and set(answers[str(f)]) <= set(names), answers[str(f)]

    # QAT and pruning need tensorflow-model-optimization, which the one install leaves out: one line says how.
    from edgetl.optimize.tfmot import INSTALL_COMMAND

    done = _run([edgetl, "optimize", "run", "--method", "qat", "--output", "qat"], cwd=work)
    assert done.returncode == 2 and done.stderr.strip() == done.stderr.strip().splitlines()[0]
    assert INSTALL_COMMAND in done.stderr
