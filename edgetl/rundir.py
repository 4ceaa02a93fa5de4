"""The run directory: the contract between train and export, evaluate, predict."""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import __version__
from edgetl.card import CARD_FILE, write_card
from edgetl.core.errors import EdgetlError, ModelError, RunExistsError

if TYPE_CHECKING:
    import keras

MANIFEST = "manifest.json"
MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
QAT_SAVED_MODEL = "qat_saved_model"
SCHEMA_VERSION = 1
FILES = {"model": MODEL_FILE, "labels": LABELS_FILE, "history": HISTORY_FILE, "metrics": METRICS_FILE}
HISTORY_COLUMNS = ["stage", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def now() -> str:
    """Current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of edgetl and its main dependencies (imports TensorFlow: call when it is loaded)."""
    import keras
    import tensorflow as tf

    return {"edgetl": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version()}


def prepare_output(path: str | Path, force: bool) -> Path:
    """Check that a run may be written at `path`; with force, clear the old run.

    Raises:
        RunExistsError: `path` holds files and force is off.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunExistsError(f"output '{p}' exists and is a file. Choose another --output.")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            state = ""
            m = p / MANIFEST
            if m.is_file():
                try:
                    state = " (an unfinished run)" if json.loads(m.read_text()).get("status") != "complete" else ""
                except (OSError, ValueError):
                    state = ""
            if state:
                raise RunExistsError(f"output folder '{p}' holds an unfinished run. Continue it with 'edgetl train "
                                     f"--resume {p}', replace it with --force, or choose another --output.")
            raise RunExistsError(
                f"output folder '{p}' is not empty. Pass --force to replace it, or choose another --output."
            )
        if not (p / MANIFEST).is_file():
            # --force replaces runs, never an arbitrary folder of the user's.
            raise RunExistsError(
                f"output folder '{p}' holds files that are not an edgetl run; edgetl will not delete them even "
                "with --force. Choose another --output."
            )
        try:
            shutil.rmtree(p)
        except OSError as exc:
            raise RunExistsError(f"cannot replace output folder '{p}': {exc.strerror or exc}. "
                                 "Check its permissions or choose another --output.") from None
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # A read-only or full disk: one line naming the folder, not a traceback from mkdir.
        raise EdgetlError(f"cannot create output folder '{p}': {exc.strerror or exc}. Choose a writable folder "
                          "with free space (--output).") from None
    return p


@dataclass
class Run:
    """A run directory written by `edgetl train` (or `optimize`)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["input"]["image_size"][0])

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.get("files", {}).get("model", MODEL_FILE)

    def splits(self) -> Any:
        """The data splits recorded at training time (a DataSplits)."""
        from edgetl.data import DataSplits

        return DataSplits.from_manifest(self.manifest["data"])

    def load_model(self, safe_mode: bool = True) -> Any:
        """The trained Keras classifier."""
        from edgetl.model.classifier import load_model

        return load_model(str(self.model_path), safe_mode=safe_mode)

    def qat_saved_model(self) -> Path | None:
        """The fake-quantized SavedModel of a run written by `edgetl optimize --method qat`, else None.

        Raises:
            ModelError: the manifest names one and it is missing.
        """
        opt = self.manifest.get("optimize") or {}
        if opt.get("method") != "qat" or not opt.get("saved_model"):
            return None
        p = self.path / opt["saved_model"]
        if not (p / "saved_model.pb").is_file():
            raise ModelError(f"QAT run '{self.path}' lacks its {opt['saved_model']}/ SavedModel. The run is damaged; "
                             "run edgetl optimize again.")
        return p


def load_run(path: str | Path, *, require_complete: bool = True) -> Run:
    """Open a run directory and check it is one.

    Raises:
        ModelError: not a run directory, unfinished, or damaged.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"'{p}' is not a run directory. Pass the folder that 'edgetl train --output' wrote.")
    m = p / MANIFEST
    if not m.is_file():
        raise ModelError(f"'{p}' is not an edgetl run directory (no {MANIFEST}). "
                         "Pass the folder that 'edgetl train --output' wrote.")
    try:
        manifest = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"'{m}' cannot be read ({exc.__class__.__name__}). The run is damaged; train it again.") \
            from None
    if not isinstance(manifest, dict) or manifest.get("edgetl_run") != SCHEMA_VERSION:
        raise ModelError(f"'{m}' is not an edgetl manifest of version {SCHEMA_VERSION}. Train the run again.")
    if require_complete and manifest.get("status") != "complete":
        raise ModelError(f"run '{p}' did not finish training (status: {manifest.get('status')}). "
                         "Train it again (or resume it) before using it.")
    run = Run(p, manifest)
    if require_complete and not run.model_path.is_file():
        raise ModelError(f"run '{p}' has no {run.model_path.name}. The run is damaged; train it again.")
    return run


def run_header() -> dict[str, Any]:
    """The manifest keys every new run starts with (status running until `finish_run`)."""
    return {"edgetl_run": SCHEMA_VERSION, "status": "running", "created": now(), "versions": versions(),
            "files": dict(FILES)}


def start_run(path: Path, manifest: dict[str, Any], class_names: list[str]) -> None:
    """Write a new run's manifest (status running) and labels.txt: from here on it reads as an unfinished run."""
    from edgetl.core.fileio import write_json, write_text

    write_json(path / MANIFEST, manifest)
    write_text(path / LABELS_FILE, "\n".join(class_names) + "\n")


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """history.csv written whole (atomically), one row per epoch."""
    import csv

    from edgetl.core.fileio import atomic_path

    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def finish_run(path: Path, manifest: dict[str, Any], *, model: keras.Model, metrics: dict[str, Any],
               history_rows: list[dict[str, Any]], title: str, updates: dict[str, Any]) -> dict[str, Any]:
    """Write what completes a run, then mark it complete: the one way train and optimize end a run.

    model.keras, metrics.json, the plots and the model card (README.md, edgetl.card) are written
    first; the manifest last, with status "complete", so an interrupted run never reads as a finished one.

    Args:
        model: the Keras classifier to save (float32, preprocessing inside).
        metrics: per split name, classification_metrics(...) or None.
        history_rows: the rows of history.csv (for the plots).
        title: the plots' title.
        updates: manifest keys this kind of run adds (training, optimize, ...).

    Returns:
        The manifest as written.
    """
    from edgetl.core.fileio import atomic_path, write_json
    from edgetl.core.plots import plot_run

    with atomic_path(path / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
    class_names = list(manifest["class_names"])
    write_json(path / METRICS_FILE, {"class_names": class_names, **metrics})
    plots = plot_run(path, history_rows, metrics, class_names, title)
    manifest.update({"status": "complete", "finished": now(), **updates,
                     "metrics": {name: (m["accuracy"] if m else None) for name, m in metrics.items()}})
    manifest["files"]["plots"] = plots
    manifest["files"]["card"] = CARD_FILE
    write_card(path, manifest, {"class_names": class_names, **metrics})
    write_json(path / MANIFEST, manifest)
    return manifest
