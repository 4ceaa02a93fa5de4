"""Baselines: the figures of one evaluation, saved, read back and compared with a later one (--max-drop)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path, PureWindowsPath
from typing import Any

from edgetl import __version__
from edgetl.core.errors import UsageError

BASELINE_SCHEMA = 1


def make_baseline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a later evaluation is compared with (--save-baseline).

    A baseline is kept in a repository and read on other machines (CI): the model and the data folder
    are named by their last part, never by this machine's path; the data fingerprint identifies the images.
    """
    model = dict(result["model"], path=_last_part(result["model"].get("path")))
    data = dict(result["data"], root=_last_part(result["data"].get("root")))
    return {
        "edgetl_baseline": BASELINE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgetl_version": __version__,
        "model": model,
        "data": data,
        "samples": result["samples"],
        "accuracy": result["accuracy"],
        "top_k": result["top_k"],
        "k": result["k"],
        "per_class": {name: {"recall": v["recall"], "precision": v["precision"], "f1": v["f1"],
                             "support": v["support"]} for name, v in result["per_class"].items()},
    }


def save_baseline(result: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the baseline of `result` to `path` atomically; returns what was written."""
    from edgetl.core.fileio import write_json

    base = make_baseline(result)
    write_json(path, base)
    return base


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a baseline written by --save-baseline.

    Raises:
        UsageError: the file is missing, not JSON, or not an edgetl baseline.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"baseline file '{p}' does not exist. Write one with --save-baseline FILE.") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"baseline file '{p}' cannot be read ({exc.__class__.__name__}). "
                         "Write it again with --save-baseline FILE.") from None
    if not isinstance(data, dict) or not isinstance(data.get("accuracy"), (int, float)):
        raise UsageError(f"'{p}' is not an edgetl baseline (no accuracy figure). Write one with --save-baseline FILE.")
    # Schema 1 is every baseline edgetl has written (files without the field included); a newer schema is
    # refused in one line rather than misread, an older one would be converted here.
    schema = data.get("edgetl_baseline", BASELINE_SCHEMA)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise UsageError(f"baseline '{p}' has schema {schema!r}, not a version number. Write it again with "
                         "--save-baseline FILE.")
    if schema > BASELINE_SCHEMA:
        raise UsageError(f"baseline '{p}' has schema {schema} (written by edgetl {data.get('edgetl_version', '?')}); "
                         f"this edgetl {__version__} reads schema {BASELINE_SCHEMA} and older. Upgrade edgetl, or "
                         "write the baseline again with --save-baseline FILE.")
    return data


def _last_part(path: object) -> object:
    if not isinstance(path, str):
        return path
    return PureWindowsPath(path).name or path


def baseline_warnings(result: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Why a comparison with this baseline may mislead (other images, other classes)."""
    out = []
    bdata = baseline.get("data") or {}
    if bdata.get("fingerprint") and bdata.get("fingerprint") != result["data"].get("fingerprint"):
        out.append(f"the baseline was measured on other images ({baseline.get('samples')} images, now "
                   f"{result.get('samples')}); the comparison may mislead")
    return out
