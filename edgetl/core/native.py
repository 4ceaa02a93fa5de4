"""Native libraries' chatter: keep C++ notices off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block (EDGETL_DEBUG=1 keeps it).

    TensorFlow, the TFLite converter, tf2onnx and LiteRT print absl logs, MLIR diagnostics and
    delegate notices from C++ straight to the descriptor, where no Python setting reaches them.
    Their errors still arrive as Python exceptions, which callers turn into one line.
    """
    if os.environ.get("EDGETL_DEBUG"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (some test runners, embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
