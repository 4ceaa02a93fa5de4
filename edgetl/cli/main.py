"""The `edgetl` command group and its console entry point. Each command lives in its own module.

Each command: options -> config -> one library call -> output. Nothing here imports TensorFlow at
start-up: `edgetl --help` stays fast.
"""

from __future__ import annotations

import click

from edgetl import __version__
from edgetl.cli import benchmark, evaluate, export, inspect, optimize, predict, search, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgetl")
def main() -> None:
    """edgetl: transfer learning to the edge.

    Train a classifier from a folder of labelled images with a frozen pretrained backbone, export it as
    quantized TFLite and ONNX files verified in their runtimes, and gate accuracy in CI.
    """


# Each command module lists its commands in COMMANDS.
for _module in (train, search, export, optimize, evaluate, benchmark, inspect, predict):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)


def run() -> None:
    """The console entry point: the CLI, then an immediate exit once TensorFlow is loaded.

    Every file has been written and closed by then (atomically), so nothing is lost by skipping the
    interpreter's teardown of TensorFlow, which takes about a second after a training run
    (measured: 0.9 s of a 7.5 s `edgetl train` on 2 cores). Tests call `main` and keep the normal exit.
    """
    import os
    import sys

    try:
        main.main(prog_name="edgetl")
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): printed, status 1, as Python does
            click.echo(str(exc.code), err=True)
            code = 1
    if "tensorflow" not in sys.modules:
        sys.exit(code)
    import atexit

    # The exit handlers still run: autograph deletes its temporary source files in one.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
