"""Typed errors. The CLI turns each into one clear line and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgetlError(Exception):
    """Base class: a problem the user can fix; its message is one clear line."""

    exit_code = 2

    def __init__(self, message: object = "", *args: object, report: object | None = None) -> None:
        # Messages quote what the user gave (keys, paths, values), which may hold line breaks: shown
        # escaped, the message stays one line whatever it quotes.
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"), *args)
        # What was done before the failure (an export's or a gate's report): the CLI still shows it.
        self.report = report


class UsageError(EdgetlError):
    """An option value or combination that is not allowed."""


class DataError(EdgetlError):
    """The image folder or its files cannot be used."""


class ModelError(EdgetlError):
    """A model file, run directory or backbone cannot be used."""


class RunExistsError(EdgetlError):
    """An output would overwrite existing results without --force."""


class ExportError(EdgetlError):
    """An export failed, or its verification did."""


class GateFailure(EdgetlError):
    """An accuracy gate failed: a regression, not a usage error."""

    exit_code = 1


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest allowed value, or ''."""
    match = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def unknown_choice(
    what: str, value: object, allowed: Iterable[str], cls: type[EdgetlError] = UsageError
) -> EdgetlError:
    """Build the error for a value outside a fixed set, naming the allowed ones."""
    allowed = sorted(allowed)
    return cls(f"unknown {what} '{value}'.{did_you_mean(str(value), allowed)} Allowed: {', '.join(allowed)}.")


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first meaningful line of an exception (or of a tool's error text), for a one-line message.

    Converter and runtime errors often start with MLIR location noise ("<unknown>:0: error: loc(...)"),
    which says nothing to a user: such lines are skipped when a better one follows.
    """
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        if not line.startswith("<unknown>") and "loc(" not in line:
            return line[:limit].rstrip(".")
    if lines:
        return lines[0][:limit].rstrip(".")
    return type(exc).__name__ if isinstance(exc, BaseException) else "unknown error"
