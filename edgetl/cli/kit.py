"""What every CLI command shares: error translation, consoles, tables, JSON output, opening models.

No TensorFlow here, and nothing heavier than click at import: rich and the runtimes load when used.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgetl.core.errors import EdgetlError, first_line
from edgetl.core.progress import Reporter
from edgetl.core.tf import load_tensorflow, quiet_tensorflow

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from edgetl.runtime import Runner

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


# ----------------------------------------------------------------------------------------------
# Errors and logging


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn library errors into one line and an exit code; never a traceback (EDGETL_DEBUG=1 shows it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        quiet_tensorflow()
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except EdgetlError as exc:
            if os.environ.get("EDGETL_DEBUG"):
                traceback.print_exc()
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; files being written were left as they were before.", EXIT_INTERRUPTED)
        except MemoryError:
            fail("out of memory. Use a smaller --batch-size or --image-size.", EXIT_INTERNAL)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # a bug of ours: still one line, the details on request
            if os.environ.get("EDGETL_DEBUG"):
                traceback.print_exc()
            if isinstance(exc, OSError) and exc.filename:
                # A path the system refused (permissions, a read-only or full disk, a file where a folder
                # should be) that no check of ours caught: the user's to fix, so exit 2 with the path.
                fail(f"cannot use '{exc.filename}': {exc.strerror or type(exc).__name__}. Check that path and its "
                     "permissions, or choose another.", 2)
            first = first_line(exc) if str(exc).strip() else ""
            fail(f"internal error ({type(exc).__name__}: {first}). Re-run with EDGETL_DEBUG=1 for the traceback "
                 "and report it.", EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


class _OneLine(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "info"
        click.echo(f"{level}: {record.getMessage()}", err=True)


def _setup_logging() -> None:
    logger = logging.getLogger("edgetl")
    if not any(isinstance(h, _OneLine) for h in logger.handlers):
        logger.addHandler(_OneLine())
        logger.setLevel(logging.DEBUG if os.environ.get("EDGETL_DEBUG") else logging.WARNING)
        logger.propagate = False


# ----------------------------------------------------------------------------------------------
# Consoles and progress


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=_width(2))


def out_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, width=_width(1))


def _width(fd: int) -> int | None:
    # In CI logs and pipes rich would squeeze tables to 80 columns and cut paths.
    return None if os.isatty(fd) else 160


def warn(message: str) -> None:
    """One 'warning: ...' line on stderr (the message is data: never read as rich markup)."""
    err_console().print(esc(f"warning: {message}"), soft_wrap=True)


class RichReporter(Reporter):
    """Progress bars and epoch lines on stderr, so stdout stays clean for --json."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = err_console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.task: TaskID | None = None
        # Bars only on a terminal: in CI logs they would print a line per refresh.
        self.bars = self.console.is_terminal

    def start(self, task: str, total: int | None) -> None:
        if not self.bars:
            return
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(task, total=total)

    def advance(self, units: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, units)

    def finish(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.progress.stop()
            self.task = None

    def epoch(self, stage: str, epoch: int, epochs: int, logs: dict[str, Any]) -> None:
        parts = [f"{k} {v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")]
        self.console.print(f"{stage} epoch {epoch}/{epochs}: " + ", ".join(parts), soft_wrap=True)

    def info(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def close(self) -> None:
        self.finish()


# ----------------------------------------------------------------------------------------------
# Tables, figures and JSON


def esc(text: object) -> str:
    """Text as rich shows it literally: class names and paths may hold [brackets] rich reads as markup."""
    from rich.markup import escape

    return escape(str(text))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], stderr: bool = False,
                wide: bool = False) -> None:
    """A table for people (rich); scripts should use --json.

    wide: cells fold instead of being cut, and off a terminal the table may take 200 columns (model
    names and paths in CI logs stay whole).
    """
    from rich.table import Table

    con = err_console() if stderr else out_console()
    if wide and not con.is_terminal:
        con.width = max(con.width, 200)
    table = Table(title=esc(title), title_justify="left")
    for c in columns:
        if wide:
            table.add_column(esc(c), overflow="fold")
        else:
            table.add_column(esc(c))
    for r in rows:
        table.add_row(*["" if v is None else esc(v) for v in r])
    con.print(table)


def fmt(x: object, digits: int = 3) -> str:
    """Numbers for tables: floats rounded, None as '-'."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def mb(n: int | None) -> str:
    """Bytes as megabytes for tables."""
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def pct(x: float | None) -> str:
    """A fraction as a percentage for tables."""
    return "-" if x is None else f"{100 * x:.2f}%"


def signed(x: float | None) -> str:
    """A difference with its sign, for drop columns."""
    return "-" if x is None else f"{x:+.3f}"


def print_json(obj: object) -> None:
    """One JSON object on one line of stdout (numpy values and paths converted)."""
    click.echo(json.dumps(obj, default=_jsonable))


def _jsonable(obj: object) -> object:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ----------------------------------------------------------------------------------------------
# Opening models


def needs_tensorflow(paths: Sequence[str]) -> None:
    """Load TensorFlow (quietly) only when a Keras or SavedModel model is among `paths`."""
    from edgetl.runtime import detect_kind, get_kind

    # Only kinds whose Runner needs it (a run, .keras, SavedModel); .tflite, .onnx and .ort files never import it.
    if any(get_kind(detect_kind(p)).needs_tensorflow for p in paths):
        load_tensorflow()


def read_labels_option(labels: str | None) -> list[str] | None:
    """The class names of a --labels file, or None when not given."""
    if labels is None:
        return None
    from edgetl.runtime import read_labels

    return read_labels(labels)


def open_runner(path: str, threads: int | None, unsafe: bool, labels: str | None, image_size: int | None,
                runtime: str | None = None) -> Runner:
    """Open MODEL as the runtime options (--threads, --unsafe, --labels, --image-size, --runtime) ask."""
    from edgetl.runtime import open_model, runtime_kind

    return open_model(path, threads=threads, safe_mode=not unsafe, class_names=read_labels_option(labels),
                      image_size=image_size, kind=runtime_kind(path, runtime))


__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "RichReporter", "err_console", "esc", "fail", "fmt",
           "handle_errors", "load_tensorflow", "mb", "needs_tensorflow", "open_runner", "out_console", "pct",
           "print_json", "print_table", "quiet_tensorflow", "read_labels_option", "signed", "warn"]
