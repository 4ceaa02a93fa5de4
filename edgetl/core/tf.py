"""Loading TensorFlow quietly: its start-up chatter is not for users of edgetl."""

from __future__ import annotations

import logging
import os
import sys
import warnings

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
    with quiet_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
