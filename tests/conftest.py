"""Shared fixtures: a generated data set and one small trained run that many tests reuse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgetl.core.progress import Reporter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IMAGE_SIZE = 48  # small enough for 2-core CI, large enough for MobileNetV2 to see shapes


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated data set (4 classes, mixed file kinds), written once per session."""
    from edgetl.data.demo import write_demo_data

    dest = tmp_path_factory.mktemp("demo") / "data"
    write_demo_data(dest, per_class=24, seed=0, size_range=(40, 96))
    return dest


@pytest.fixture(scope="session")
def trained_run(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run directory: MobileNetV2 alpha 0.35 with the bundled weights at 48 px."""
    from edgetl.train import train
    from edgetl.train.config import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "run"
    # The feature engine by option: "auto" decides from a timed pass and a disk cache, so the figures behind
    # most accuracy tests would depend on the machine's load (tests/test_engine.py covers the other engines).
    cfg = TrainConfig(data=str(demo_dir), backbone="mobilenet_v2", alpha=0.35, weights="bundled",
                      image_size=IMAGE_SIZE, epochs=15, batch_size=16, lr=3e-3, seed=0, feature_cache="keras",
                      output=str(out))
    train(cfg)
    return out


@pytest.fixture(scope="session")
def files(trained_run: Path) -> dict[str, Path]:
    """The run's TFLite (float32, int8-full), ONNX and SavedModel files, exported once per session."""
    import json

    from edgetl.export import export_run
    from edgetl.export.report import report_paths

    out = trained_run.parent / "edgetl-test-exports"
    export_run(trained_run, formats=("tflite", "onnx", "saved_model"), quantize=("none", "int8-full"), output=out,
               verify=False, force=True)
    return report_paths(json.loads((out / "export_report.json").read_text()), out)


class LineReporter(Reporter):
    """A Reporter that keeps every info line, for tests of what the log says."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


@pytest.fixture
def line_reporter() -> type[LineReporter]:
    """The LineReporter class (call it for each reporter a test needs)."""
    return LineReporter
