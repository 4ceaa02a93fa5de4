"""Loading TensorFlow quietly: its start-up chatter is not for users of edgetl."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from edgetl.core.native import quiet_native_stderr


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ and Python logging off the user's terminal unless asked for."""
    if os.environ.get("EDGETL_DEBUG"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Library warnings (deprecations, Keras hints) are for us, not for users of the CLI.
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)


def load_tensorflow() -> None:
    """Import TensorFlow with its start-up chatter (absl, CUDA probing) kept off stderr.

    The C++ side writes straight to file descriptor 2 before any Python setting applies, so the
    descriptor itself is pointed at /dev/null while TensorFlow loads and looks for GPUs.
    """
    if "tensorflow" in sys.modules or os.environ.get("EDGETL_DEBUG"):
        return
    quiet_tensorflow()
    with quiet_native_stderr(), without_module(*UNUSED_AT_IMPORT), no_collection():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")


# Imported by `import tensorflow` (through Keras) for a feature edgetl does not use: Keras 3's scikit-learn
# wrappers import scikit-learn when it is installed (here it comes with nncf), which took 1.0 of the 5.3 s of
# `import tensorflow` (python -X importtime, 2 loaded cores). Keras then leaves its wrappers without it.
UNUSED_AT_IMPORT = ("sklearn",)


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """The block without Python's cyclic garbage collector; what it created is then frozen (never scanned again).

    Importing TensorFlow and Keras creates about 400,000 long-lived objects and, on the way, triggers full
    collections that scan them all: 4 of them, 0.7 s of a 4.2 s start on 2 loaded cores (gc.callbacks), and every
    later full collection of the run scanned them again (0.1-0.4 s each). Modules live as long as the process,
    so freezing what the import made frees nothing that could have been freed.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def without_module(*names: str) -> Iterator[None]:
    """Make `import NAME` fail with ImportError inside the block, for modules not yet imported; after it, they
    import normally again (nncf, for OpenVINO export, imports scikit-learn itself later)."""
    blocked = [name for name in names if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment] - Python's documented way to make an import fail
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
