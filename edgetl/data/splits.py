"""The splits of a data folder: Item, DataSplits, and the seeded stratified split of class-folders data."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from edgetl.core.errors import DataError, UsageError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Item:
    """One image: its path relative to the data root (POSIX separators) and its class index."""

    # slots: no per-instance __dict__, about 100 bytes less per image (a folder holds hundreds of thousands)

    path: str
    label: int


@dataclass
class DataSplits:
    """The images of a data folder, split into train/val/test, with the class names."""

    root: str
    class_names: list[str]
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "class-folders"

    def split(self, name: str) -> list[Item]:
        """Return the items of split `name` ('train', 'val' or 'test')."""
        if name not in SPLITS:
            raise UsageError(f"unknown split '{name}'. Allowed: {', '.join(SPLITS)}.")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """Return a sha256 hex digest over the class names and each (split, path, label, size, mtime_ns).

        Any added, removed, moved, relabelled or rewritten image changes it, so a resumed run can tell
        whether its data is still the data it started with. The root itself is left out: moving the
        whole folder does not change the data.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.layout, list(self.class_names)]).encode("utf-8"))
        for split in SPLITS:
            for item in self.split(split):
                try:
                    st = os.stat(os.path.join(self.root, item.path))
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size, mtime = -1, -1  # a missing file must change the digest, not crash
                h.update(f"{split}\0{item.path}\0{item.label}\0{size}\0{mtime}\n".encode())
        return h.hexdigest()

    def to_manifest(self, streamed: bool = False) -> dict[str, Any]:
        """Return a JSON-ready dict that `from_manifest` turns back into equal DataSplits.

        streamed: each split's [path, label] rows as a view of the items (core.fileio.Streamed, which write_json
        writes row by row), not as lists: about 150 bytes an image less (30 MB at 200,000 images).
        """
        from edgetl.core.fileio import Streamed

        out: dict[str, Any] = {"root": self.root, "layout": self.layout, "class_names": list(self.class_names)}
        for split in SPLITS:
            items = self.split(split)
            out[split] = Streamed(len(items), partial(_rows, items)) if streamed else list(_rows(items))
        out["skipped"] = [[p, r] for p, r in self.skipped]
        out["fingerprint"] = self.fingerprint()
        return out

    @classmethod
    def from_manifest(cls, d: dict[str, Any]) -> DataSplits:
        """Rebuild DataSplits from `to_manifest` output.

        Raises:
            DataError: a key is missing or a value has the wrong shape.
        """
        try:
            class_names = [str(c) for c in d["class_names"]]
            splits = {}
            for split in SPLITS:
                items = [Item(str(p), int(lab)) for p, lab in d.get(split, [])]
                bad = [it for it in items if not 0 <= it.label < len(class_names)]
                if bad:
                    raise ValueError(f"label {bad[0].label} of '{bad[0].path}' is outside 0..{len(class_names) - 1}")
                splits[split] = items
            skipped = [(str(p), str(r)) for p, r in d.get("skipped", [])]
            return cls(root=str(d["root"]), class_names=class_names, skipped=skipped,
                       layout=str(d.get("layout", "class-folders")), **splits)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise DataError(f"the data section of the manifest is invalid ({exc}). "
                            "Re-run train to write a new run folder.") from None

    def counts(self) -> dict[str, list[int]]:
        """Return, per split, the number of images of each class (indexed like class_names)."""
        out = {}
        for split in SPLITS:
            c = [0] * len(self.class_names)
            for it in self.split(split):
                c[it.label] += 1
            out[split] = c
        return out


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)  # round() rounds halves to even: 2.5 -> 2 would surprise


def _split_class(paths: list[str], val_split: float, test_split: float, seed: int, key: str
                 ) -> tuple[list[str], list[str], list[str]]:
    """Shuffle one class's paths (seeded by seed and class) and cut val, test and train from it.

    Each class keeps at least one training image; val and test get round(n * fraction) images,
    reduced (the larger one first) when that would leave no training image.
    """
    n = len(paths)
    n_val = _round_half_up(n * val_split)
    n_test = _round_half_up(n * test_split)
    while n_val + n_test > n - 1 and n_val + n_test > 0:
        if n_test > n_val:
            n_test -= 1
        else:
            n_val -= 1
    # A generator per class: adding a class does not reshuffle the others. str seeds are stable across runs.
    shuffled = sorted(paths)
    random.Random(f"{seed}/{key}").shuffle(shuffled)
    return shuffled[n_val + n_test:], shuffled[:n_val], shuffled[n_val:n_val + n_test]


def stratified_split(per_class: list[list[str]], val_split: float, test_split: float, seed: int,
                     class_names: list[str]) -> tuple[list[Item], list[Item], list[Item]]:
    """Split each class's paths (seeded per class) into (train, val, test) items labelled by class position.

    Each class keeps at least one training image. The result depends only on the paths, fractions,
    seed and class names, never on the order of the paths.
    """
    parts = [list(_split_class(p, val_split, test_split, seed, name))
             for p, name in zip(per_class, class_names, strict=True)]
    # Rounding per class can leave a whole split empty on small data (2 classes x 2 images at val 0.2).
    # When the fraction asks for images and some class can spare a second training image, move one.
    for which, frac in ((1, val_split), (2, test_split)):
        if frac > 0 and not any(p[which] for p in parts):
            donors = [i for i, p in enumerate(parts) if len(p[0]) >= 2]
            if donors:
                i = max(donors, key=lambda j: (len(parts[j][0]), -j))
                parts[i][which].append(parts[i][0].pop())
    out: tuple[list[Item], list[Item], list[Item]] = ([], [], [])
    for label, p in enumerate(parts):
        for k in range(3):
            out[k].extend(Item(path, label) for path in p[k])
    for lst in out:
        lst.sort(key=lambda it: it.path)
    return out


def _rows(items: list[Item]) -> Iterator[list[str | int]]:
    return ([it.path, it.label] for it in items)
