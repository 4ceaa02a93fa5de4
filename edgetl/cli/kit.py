"""What every CLI command shares: error translation, progress display, tables. No TensorFlow here."""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from edgetl.core.errors import EdgetlError
from edgetl.core.progress import Reporter
from edgetl.core.tf import load_tensorflow, quiet_tensorflow  # noqa: F401  (the commands call them)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


def err_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, width=_width(2))


def out_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, width=_width(1))


def _width(fd: int) -> int | None:
    # In CI logs and pipes rich would squeeze tables to 80 columns and cut paths.
    return None if os.isatty(fd) else 160


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
            text = str(exc).strip().splitlines()
            first = text[0][:300] if text else ""
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


class RichReporter(Reporter):
    """Progress bars and epoch lines on stderr, so stdout stays clean for --json."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = err_console()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.task: Any = None
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


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], stderr: bool = False) -> None:
    """A table for people (rich); scripts should use --json."""
    from rich.markup import escape
    from rich.table import Table

    # Class names and paths are data: '[cat]' must print as is, not as rich markup.
    table = Table(title=escape(title), title_justify="left")
    for c in columns:
        table.add_column(escape(c))
    for r in rows:
        table.add_row(*["" if v is None else escape(str(v)) for v in r])
    (err_console() if stderr else out_console()).print(table)


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers for tables: floats rounded, None as '-'."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)
