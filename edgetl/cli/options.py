"""Options several commands share, declared once: the same flag has the same name, type and default everywhere.

Where commands word a shared flag for what it does there (--json, --force, --threads), the help text
is an argument; the rest is fixed here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

RUNTIME_THREADS_HELP = "CPU threads for the runtime (default: the runtime's own choice)."


def model_argument() -> Decorator:
    """MODEL: anything edgetl.runtime.open_model accepts."""
    return click.argument("model", type=click.Path())


def json_option(help: str) -> Decorator:
    """--json: machine-readable output on stdout instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def force_option(help: str, default: bool | None = False) -> Decorator:
    """--force: replace what an earlier command wrote (None as default: "not given", for recipes)."""
    return click.option("--force", is_flag=True, default=default, help=help)


def threads_option(help: str = RUNTIME_THREADS_HELP) -> Decorator:
    """--threads: CPU threads for the runtime (None: its own choice)."""
    return click.option("--threads", type=int, default=None, help=help)


def batch_size_option(default: int) -> Decorator:
    """--batch-size for inference: images per runtime call (the default is the library's)."""
    return click.option("--batch-size", type=int, default=default, show_default=True, help="Images per runtime call.")


def labels_option() -> Decorator:
    """--labels: class names for a model file that carries none."""
    return click.option("--labels", type=click.Path(dir_okay=False), default=None, help="Class names, one a line, "
                        "for a model file that carries none (default: its metadata, else labels.txt beside it).")


def image_size_option() -> Decorator:
    """--image-size: input size for a model whose input shape does not fix it."""
    return click.option("--image-size", type=int, default=None, help="Input size for a model whose input shape "
                        "does not fix it (default: read from the model).")


def unsafe_option() -> Decorator:
    """--unsafe: Keras safe mode off."""
    return click.option("--unsafe", is_flag=True, help="Load .keras files that need custom code (Keras safe mode "
                        "off). Only for files you trust.")


def runtime_option() -> Decorator:
    """--runtime: open MODEL in another runtime than its kind's own (edgetl.runtime.kinds: a kind with runs_kind)."""
    return click.option("--runtime", default=None, metavar="NAME", help="Run MODEL in another runtime than its "
                        "own: tflm runs a .tflite file in TensorFlow Lite Micro's interpreter (the reference kernels "
                        "microcontrollers run) in the smallest tensor arena it allocates in.")


def model_options(f: F) -> F:
    """--labels, --image-size and --unsafe: how MODEL is opened (evaluate, predict, inspect)."""
    return labels_option()(image_size_option()(unsafe_option()(f)))
