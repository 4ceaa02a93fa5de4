"""Each candidate's frozen-base features, kept in the search folder by image path.

A round on more images computes only the images earlier rounds did not (class-balanced samples of a
split grow by adding images: edgetl.data.sampling), and a rerun of the search computes none.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.core.fileio import atomic_path

if TYPE_CHECKING:
    from edgetl.core.progress import Reporter
    from edgetl.data.splits import DataSplits, Item
    from edgetl.model.classifier import Classifier
    from edgetl.train.conversion import AnySizeForward
    from edgetl.train.distribute import Placement

FEATURES_DIR = "features"


class FeatureStore:
    """The features of one candidate (one base, one size, one weights file), by image path."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / FEATURES_DIR / f"{name}.npz"
        self.rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self.rows = dict(zip(data["paths"].tolist(), data["x"], strict=True))
            except (OSError, ValueError, KeyError):  # a damaged cache is recomputed, never trusted
                self.rows = {}

    def missing(self, items: list[Item]) -> list[Item]:
        return [it for it in items if it.path not in self.rows]

    def get(self, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the items, in their order (all must be present)."""
        x = np.stack([self.rows[it.path] for it in items]).astype(np.float32)
        return x, np.array([it.label for it in items], dtype=np.int32)

    def fill(self, clf: Classifier, splits: DataSplits, items: list[Item], batch_size: int, reporter: Reporter,
             placement: Placement, seconds: dict[str, float], engine: str = "auto",
             any_size: AnySizeForward | None = None) -> int:
        """Compute the items' missing features with the train job's feature pass on `engine` (edgetl.train.engine's
        ENGINES), with the trace and conversion `any_size` when it shares them with other sizes; save them. Returns
        how many."""
        from edgetl.data.splits import DataSplits as Splits
        from edgetl.train.features import extract_features

        todo = self.missing(items)
        if not todo:
            return 0
        t0 = time.perf_counter()
        subset = Splits(root=splits.root, class_names=splits.class_names, train=todo)
        record: dict[str, Any] = {}
        out = extract_features(clf, subset, ["train"], clf.model.input_shape[1], batch_size, reporter, placement,
                               engine=engine, record=record, any_size=any_size)
        x, _ = out["train"]
        for it, row in zip(todo, x, strict=True):
            self.rows[it.path] = row
        seconds["features"] = seconds.get("features", 0.0) + time.perf_counter() - t0
        # The base's own forward calls within it: the rest of "features" is the pass's fixed cost (trace,
        # conversion or cache load, TensorFlow's probe, input), which tools/bench_search.py sets against it.
        seconds["features_base"] = seconds.get("features_base", 0.0) + float(record.get("seconds", {}).get("base", 0))
        t0 = time.perf_counter()
        self._save()
        seconds["save"] = seconds.get("save", 0.0) + time.perf_counter() - t0
        return len(todo)

    def _save(self) -> None:
        paths = list(self.rows)
        with atomic_path(self.path, suffix=".npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, paths=np.array(paths), x=np.stack([self.rows[p] for p in paths]))
