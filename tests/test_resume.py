"""Resume: a run killed (even with SIGKILL) continues from its last completed epoch."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.core.errors import DataError
from edgetl.core.progress import Reporter
from edgetl.train import AlreadyComplete, resume, train
from edgetl.train.config import TrainConfig


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def rows_written(run: Path) -> int:
    try:
        return len(history(run))
    except (OSError, csv.Error):
        return 0


def test_sigkill_then_resume_gives_one_row_per_epoch(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "edgetl", "train", str(demo_dir), "--backbone", "mobilenet_v2", "--alpha", "0.35",
            "--weights", "bundled", "--image-size", "32", "--epochs", "10", "--patience", "10", "--feature-cache",
            "off", "--seed", "0", "--output", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.time() + 300
    while rows_written(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows_written(out) < 10, "the run finished before it could be killed"
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"

    code = CliRunner().invoke(main, ["train", str(demo_dir), "--output", str(out), "--weights", "none"])
    assert code.exit_code == 2 and "--resume" in code.output  # an unfinished run is pointed at --resume

    result = CliRunner().invoke(main, ["train", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    rows = history(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 11))
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    assert not (out / "checkpoints").exists() and not (out / "cache").exists()

    again = CliRunner().invoke(main, ["train", "--resume", str(out)])
    assert again.exit_code == 0 and "already complete" in again.output


class CrashAt(Reporter):
    """Simulates a crash right after an epoch's checkpoint (the reporter hears of it last)."""

    def __init__(self, stage: str, epoch: int) -> None:
        self.stage, self.at = stage, epoch

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict) -> None:
        if stage == self.stage and epoch == self.at:
            raise KeyboardInterrupt


def test_resume_during_fine_tuning_with_cached_features(demo_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=str(demo_dir), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=32,
                      epochs=4, patience=4, fine_tune_layers="3", fine_tune_epochs=3, batch_size=16, seed=0,
                      output=str(tmp_path / "ft"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, CrashAt("fine_tune", 2))
    assert (tmp_path / "ft" / "cache" / "train.npy").is_file()  # features survive for the head stage
    result = resume(tmp_path / "ft")
    stages = [(r["stage"], int(r["epoch"])) for r in history(result.run_dir)]
    assert stages == [("head", 1), ("head", 2), ("head", 3), ("head", 4), ("fine_tune", 5), ("fine_tune", 6),
                      ("fine_tune", 7)]
    assert result.epochs_run == {"head": 4, "fine_tune": 3}
    with pytest.raises(AlreadyComplete):
        resume(result.run_dir)


def test_resume_refuses_changed_data_and_says_what_changed(demo_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    cfg = TrainConfig(data=str(data), backbone="mobilenet_v2", alpha=0.35, weights="bundled", image_size=32,
                      epochs=3, patience=3, seed=0, output=str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, CrashAt("head", 1))
    first_class = sorted(p for p in data.iterdir() if p.is_dir())[0]
    victim = sorted(first_class.iterdir())[0]
    shutil.copy(victim, first_class / ("zz_new" + victim.suffix))
    with pytest.raises(DataError, match=r"changed since the run started: 1 added \(e\.g\. .*zz_new"):
        resume(tmp_path / "run")
    victim.unlink()
    with pytest.raises(DataError, match=r"1 missing"):
        resume(tmp_path / "run")


def test_resume_takes_no_other_options(trained_run: Path) -> None:
    result = CliRunner().invoke(main, ["train", "--resume", str(trained_run), "--epochs", "3"])
    assert result.exit_code == 2 and "drop --epochs" in result.output
