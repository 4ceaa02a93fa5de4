"""The `edgetl` command line: one module per command group, the shared kit, nothing below imports it."""

from edgetl.cli.main import main, run  # noqa: F401
