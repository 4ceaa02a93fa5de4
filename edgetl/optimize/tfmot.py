"""Importing tensorflow-model-optimization (tfmot) and tf_keras without switching Keras 2 on for the process.

Importing tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process; `load_tfmot()` puts the variable
back at once, so Keras 3 code (train, export) keeps working in the same process.

tfmot is not a dependency of edgetl: its absl-py ~= 1.2 pin cannot be resolved beside mediapipe's
absl-py ~= 2.3, and mediapipe (phone-ready .tflite files) is what every user needs. tfmot runs with
absl-py 2 (it imports absl in its test helpers only), so it is installed with --no-deps:
INSTALL_COMMAND, the same list as requirements-app.txt, which `make install` installs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any

from edgetl.core.errors import UsageError

INSTALL_COMMAND = ('pip install --no-deps tensorflow-model-optimization==0.8.1 "dm-tree~=0.1.1" "attrs>=18.2" '
                   '"mock>=4" "scipy>=1.10"')
_MODULES = ("tensorflow_model_optimization", "tree", "mock", "scipy", "tf_keras")


def missing_message(what: str) -> str:
    """The one line that says `what` needs tfmot and how to install it."""
    return (f"{what} needs tensorflow-model-optimization, which is not installed (pip cannot resolve it beside "
            f"mediapipe, so it is not a dependency of edgetl). Install it with: {INSTALL_COMMAND}")


def require_tfmot(what: str = "edgetl optimize") -> None:
    """Fail early, before TensorFlow loads, when tfmot or one of its dependencies is missing.

    Raises:
        UsageError: a module is missing; the message names the install command.
    """
    for name in _MODULES:
        if importlib.util.find_spec(name) is None:
            raise UsageError(missing_message(what))


def load_tfmot() -> tuple[Any, Any]:
    """(tf_keras, tfmot), imported without leaving TF_USE_LEGACY_KERAS=1 behind for Keras 3 code.

    Raises:
        UsageError: tensorflow-model-optimization, a dependency of it or tf-keras is not installed.
    """
    require_tfmot()
    import tensorflow as tf

    saved = os.environ.get("TF_USE_LEGACY_KERAS")
    # Resolve tf.keras to Keras 3 first: tfmot reads it after setting the variable, and the lazy
    # loader must not pick tf_keras for the rest of the process.
    with contextlib.suppress(Exception):
        _ = tf.keras.version
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    except ImportError:
        raise UsageError(missing_message("edgetl optimize")) from None
    finally:
        if saved is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = saved
    return tf_keras, tfmot
