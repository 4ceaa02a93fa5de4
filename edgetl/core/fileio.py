"""Atomic file writes: an interrupted write leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.core.errors import EdgetlError


def _oserror(path: Path, exc: OSError) -> EdgetlError:
    return EdgetlError(f"cannot write '{path}': {oserror_reason(exc)}")


def oserror_reason(exc: OSError) -> str:
    """Why an OS call failed, and what to do, as the end of a one-line message."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"{reason}. Free some space or choose another folder."
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"{reason} (a folder on the way cannot be created there). Choose a folder you can write to."
    return f"{reason}. Choose a folder you can write to."


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool) -> None:
    """Fail before any work when an output cannot be written: `path` (a folder when `folder`, else a file)
    must be creatable and writable. Folders created for the probe are removed again, so a refused
    command leaves nothing behind.

    Raises:
        EdgetlError: one line naming `what` (the option), the path and the reason.
    """
    target = Path(path)
    probe_dir = target if folder else target.parent
    if target.exists() and (target.is_dir() != folder):
        kind = "a folder" if folder else "a file"
        raise EdgetlError(f"{what} '{target}' is not {kind} (it exists as {'a folder' if not folder else 'a file'}). "
                          f"Choose another path.")
    created: list[Path] = []
    try:
        missing = [d for d in (probe_dir, *probe_dir.parents) if not d.exists()]
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
        fd, tmp = tempfile.mkstemp(prefix=".edgetl-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise EdgetlError(f"{what} '{target}' cannot be written: {oserror_reason(exc)}") from None
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    Works for files and folders (a writer may create either at the yielded path).
    On failure the temporary is removed and `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)  # writers create the file or folder themselves
    except OSError as exc:
        raise _oserror(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    except OSError as exc:
        _remove(tmp_path)
        raise _oserror(path, exc) from None
    except BaseException:
        _remove(tmp_path)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON (indented, keys kept in order) atomically."""
    # Streamed to the file: json.dumps(indent=...) builds the text from a list of every chunk first, which for a
    # run's manifest (a few lines per image) held about 0.7 KB per image at once (146 MB at 200,000 images).
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual things metrics contain
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
