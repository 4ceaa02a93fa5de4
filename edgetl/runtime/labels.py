"""Class names kept beside a model file: labels.txt, one class per line."""

from __future__ import annotations

import os
from pathlib import Path

from edgetl.core.errors import ModelError
from edgetl.rundir import LABELS_FILE


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """One class name per line; blank lines ignored.

    Raises:
        ModelError: the file cannot be read or is empty.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read labels file '{path}' ({exc.__class__.__name__}). "
                         "Write it as UTF-8 text, one class per line.") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelError(f"labels file '{path}' is empty. Write one class name per line.")
    return names


def read_labels_beside(path: Path) -> list[str] | None:
    """Class names from labels.txt beside a file (or inside a SavedModel folder), None when there is none."""
    candidates = []
    if path.is_dir():
        candidates += [path / LABELS_FILE, path / "assets" / LABELS_FILE]
    candidates += [path.parent / f"{path.stem}.{LABELS_FILE}", path.parent / LABELS_FILE]
    for c in candidates:
        if c.is_file():
            return read_labels(c)
    return None
