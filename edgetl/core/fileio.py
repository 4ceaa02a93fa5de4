"""Atomic file writes: an interrupted write leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
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


class Streamed:
    """A JSON array (or, with `pairs`, an object) that write_json writes item by item from `items()`, never held
    whole: a run manifest's per-image lists are rebuilt from the splits as they are written (about 250 bytes an
    image as Python lists: 50 MB at 200,000 images). Iterating it gives the items (the pairs for an object)."""

    def __init__(self, length: int, items: Callable[[], Iterable[Any]], pairs: bool = False) -> None:
        self.length, self.items, self.pairs = length, items, pairs

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON (indented by 2, keys kept in order: what json.dump(indent=2) writes) atomically.

    `obj` may hold Streamed arrays and objects; any other value json does not know goes through _json_default.
    """
    # Streamed to the file: json.dumps(indent=...) builds the text from a list of every chunk first, which for a
    # run's manifest (a few lines per image) held about 0.7 KB per image at once (146 MB at 200,000 images).
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for chunk in _encode(obj, 0):
            f.write(chunk)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


_SCALARS = (str, int, float, bool, type(None))


def _encode(obj: Any, level: int) -> Iterator[str]:
    """json.dump(obj, indent=2)'s text in pieces, with Streamed values written as they are generated."""
    if isinstance(obj, _SCALARS):
        yield json.dumps(obj)
        return
    if isinstance(obj, Streamed):
        pairs: Iterable[tuple[Any, Any]] | None = obj if obj.pairs else None
        values = None if obj.pairs else obj
    elif isinstance(obj, dict):
        pairs, values = obj.items(), None
    elif isinstance(obj, (list, tuple)):
        pairs, values = None, obj
    else:
        yield from _encode(_json_default(obj), level)
        return
    inner = "\n" + "  " * (level + 1)
    opened = False
    if pairs is not None:
        for key, value in pairs:
            yield ("{" if not opened else ",") + inner + json.dumps(key if isinstance(key, str) else _key(key)) + ": "
            opened = True
            yield from _encode(value, level + 1)
        yield ("\n" + "  " * level + "}") if opened else "{}"
        return
    for value in values or ():
        yield ("[" if not opened else ",") + inner
        opened = True
        yield from _encode(value, level + 1)
    yield ("\n" + "  " * level + "]") if opened else "[]"


def _key(key: Any) -> str:
    """A dict key as json writes it: the JSON text of a scalar, as a string."""
    if isinstance(key, _SCALARS):
        return json.dumps(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths: the usual things metrics contain
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
